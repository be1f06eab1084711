"""A small world for the lineup, decisions and capture-history tests: a copy of the synthetic stars as the
catalogue root, a catalogue of its gallery side (two identities held out, one identity with a hostile name)
built through the CLI with a tiny untrained model, and a dive folder inside the root with one encounter per
animal, one of them under a hostile file name."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from megastarid import cli
from megastarid.data.sources import load_star_catalogue
from megastarid.models.checkpoints import save_checkpoint
from megastarid.models.network import build_model

BACKBONE = "test_resnet"
SIZE = 32
DIM = 32
DIVE = "2024-06-01"
#: a catalogue identity no page may turn into markup
HOSTILE_IDENTITY = "DockSurveys/ünï \"<i>star<\" & 'co' <img src=x onerror=alert(1)>"
#: an encounter folder and a file name whose path holds quotes, <script>, &, unicode and </script>
HOSTILE_FOLDER = "\"q\" 'ü' & <script>alert('x')<"
HOSTILE_FILE = "script> ☃.jpg"


def run(*argv: object) -> int:
    return cli.main([str(arg) for arg in argv])


@dataclass
class World:
    root: Path
    checkpoint: Path
    catalogue: Path
    dive: Path
    #: encounter folder -> (true identity, its photos)
    encounters: dict[str, tuple[str, list[Path]]] = field(default_factory=dict)
    held_out: list[str] = field(default_factory=list)

    def photos(self, name: str) -> list[Path]:
        return self.encounters[name][1]

    def truth(self, name: str) -> str:
        return self.encounters[name][0]


def make_world(synthetic_stars: Path, work: Path) -> World:
    root = work / "stars"
    shutil.copytree(synthetic_stars, root)
    torch.manual_seed(0)
    checkpoint = work / "run" / "best.pth"
    save_checkpoint(
        checkpoint,
        build_model(BACKBONE, embedding_dim=DIM),
        {"backbone": BACKBONE, "embedding_dim": DIM, "image_size": SIZE},
    )
    table = load_star_catalogue(root)
    identities = sorted(table["identity"].unique())
    held_out = identities[-2:]
    renamed = {identities[2]: HOSTILE_IDENTITY}
    gallery = table[(table["split"] == "train") & ~table["identity"].isin(held_out)]
    csv = work / "gallery.csv"
    pd.DataFrame(
        {
            "identity": gallery["identity"].replace(renamed),
            "path": [str(Path(p).relative_to(root)) for p in gallery["path"]],
            "folder": gallery["folder"],
            "date": gallery["date"].dt.strftime("%Y-%m-%d"),
        }
    ).to_csv(csv, index=False)
    catalogue = work / "archive.sqlite"
    assert run(
        "catalogue", "build", "--checkpoint", checkpoint, "--star-root", root, "--star-csv", csv,
        "--catalogue", catalogue, "--device", "cpu",
    ) == 0  # fmt: skip

    tests = table[table["split"] == "test"]
    dive = root / "dives" / DIVE
    world = World(root, checkpoint, catalogue, dive, held_out=list(held_out))
    plan = [  # encounter folder, identity, number of photos
        ("enc1", identities[0], 2),
        ("enc2", identities[1], 1),
        ("enc3", held_out[0], 2),
        ("enc4", held_out[1], 1),
        (HOSTILE_FOLDER, identities[3], 1),
        ("enc6", identities[4], 1),
    ]
    for folder, identity, count in plan:
        sources = sorted(tests.loc[tests["identity"] == identity, "path"])[:count]
        assert len(sources) == count, identity
        targets = []
        for i, source in enumerate(sources):
            name = HOSTILE_FILE if folder == HOSTILE_FOLDER else f"IMG_{i}.jpg"
            target = dive / folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
            targets.append(target)
        world.encounters[folder] = (renamed.get(identity, identity), targets)
    return world
