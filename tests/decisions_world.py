"""The world of the decisions tests: a tiny star tree inside a root, its catalogue built with a tiny untrained
model, a dive folder of four encounters inside the root, and decisions files written as the lineup writes
them."""

from __future__ import annotations

import csv
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import torch

from conftest import make_star_tree, write_image
from megastarid import cli
from megastarid.data.readers import read_star_tree
from megastarid.identification.build import build_catalogue
from megastarid.identification.lineup import DECISION_COLUMNS
from megastarid.identification.store_open import open_catalogue
from megastarid.models.checkpoints import save_checkpoint
from megastarid.models.embedder import checkpoint_embedder
from megastarid.models.network import build_model

LAYOUT = {
    "SiteA": {
        "star1": {"2024-03-01": 2, "2024-04-01": 2},
        "star2": {"2024-03-01": 2, "2024-04-02": 1},
    },
    "SiteB": {"star3": {"2024-01-01": 2}},
}
TIME = "2024-06-02T10:00:00.000Z"


def run(*argv: object) -> int:
    return cli.main([str(arg) for arg in argv])


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.root = make_star_tree(tmp_path / "stars", LAYOUT, size=(40, 32))
        torch.manual_seed(0)
        self.checkpoint = tmp_path / "run" / "best.pth"
        config = {"backbone": "test_resnet", "embedding_dim": 16, "image_size": 32}
        save_checkpoint(self.checkpoint, build_model("test_resnet", embedding_dim=16), config)
        self.catalogue = tmp_path / "archive.sqlite"
        self.build()
        self.dive = self.root / "dives" / "2024-06-01"
        self.photos = {
            name: [
                write_image(self.dive / name / f"IMG_{i}.jpg", (40, 32), seed=100 + 10 * n + i)
                for i in range(2)
            ]
            for n, name in enumerate(["encA", "encB", "encC", "encD"])
        }
        self.decisions = tmp_path / "decisions.csv"

    def embedder(self):
        return checkpoint_embedder(self.checkpoint, torch.device("cpu"))

    def build(self) -> None:
        with open_catalogue(self.catalogue, create=True) as store:
            build_catalogue(store, read_star_tree(self.root), self.root, self.embedder(), progress=False)

    def rows(self, sql: str) -> list[tuple]:
        with sqlite3.connect(self.catalogue) as con:
            return con.execute(sql).fetchall()

    def state(self) -> tuple:
        return (
            self.rows("SELECT path, individual_id, origin, sha256 FROM photos ORDER BY path"),
            self.rows("SELECT name, first_seen, last_seen, num_photos FROM individuals ORDER BY name"),
            self.rows("SELECT photo_id, vector FROM embeddings ORDER BY photo_id"),
            self.rows("SELECT * FROM decisions ORDER BY id"),
        )

    def owner(self, photo: Path | str) -> str | None:
        """The individual of a catalogue photo (a path, or one relative to the root), else None."""
        rel = Path(photo).relative_to(self.root).as_posix() if Path(photo).is_absolute() else str(photo)
        with sqlite3.connect(self.catalogue) as con:
            found = con.execute(
                "SELECT i.name FROM photos p JOIN individuals i ON i.id = p.individual_id WHERE p.path = ?",
                (rel,),
            ).fetchall()
        return found[0][0] if found else None


def write_decisions(path: Path, rows: Sequence[Sequence[Path | str]], time: str = TIME) -> Path:
    """rows: (photo, encounter, decision, identity, note[, time[, query_id]]); ``time`` where a row gives
    none."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(DECISION_COLUMNS)
        for photo, encounter, decision, identity, note, *rest in rows:
            when = rest[0] if rest else time
            query_id = rest[1] if len(rest) > 1 else ""
            writer.writerow([str(photo), encounter, decision, identity, note, when, query_id])
    return path


def confirm_rows(world: World) -> list[tuple[Path | str, str, str, str, str]]:
    a, b, c, d = (world.photos[n] for n in ("encA", "encB", "encC", "encD"))
    return [
        (a[0], "encA", "confirm", "SiteA/star1", ""),
        (a[1], "encA", "confirm", "SiteA/star1", "left arm regrowing"),
        (b[0], "encB", "new", "Stella", ""),
        (b[1], "encB", "new", "Stella", ""),
        (c[0], "encC", "new", "", ""),
        (c[1], "encC", "new", "", ""),
        (d[0], "encD", "unsure", "", "too blurry"),
    ]
