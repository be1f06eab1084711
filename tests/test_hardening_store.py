"""The catalogue file under hostile use (issue 20): two writers at once, read-only files and folders,
damaged or hand-edited catalogues, non-finite embeddings. Each is one line naming the catalogue and what is
wrong, and nothing in the file is lost."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_star_tree, write_image
from megastarid import cli
from megastarid.core.errors import UserError
from megastarid.core.locks import take_lock
from megastarid.data.readers import read_star_tree
from megastarid.identification.build import build_catalogue
from megastarid.identification.lineup import DECISION_COLUMNS
from megastarid.identification.store_index import load_index
from megastarid.identification.store_open import open_catalogue
from megastarid.models.checkpoints import save_checkpoint
from megastarid.models.embedder import checkpoint_embedder
from megastarid.models.network import build_model

LAYOUT = {"Site": {f"star{i}": {"2024-03-01": 2, "2024-04-01": 2} for i in range(3)}}
CONFIG = {"backbone": "test_resnet", "embedding_dim": 16, "image_size": 32}
#: a second process that opens the catalogue as its writer, says so, and holds it until stdin closes
HOLDER = (
    "import sys; from megastarid.identification.store_open import open_catalogue; "
    "store = open_catalogue(sys.argv[1], write=True); print('held', flush=True); sys.stdin.read()"
)


@dataclass
class World:
    root: Path
    checkpoint: Path
    catalogue: Path

    def cli(self, command: str, *argv: object) -> list[str]:
        """``megastarid catalogue COMMAND`` (or ``identify``) on this world's catalogue."""
        head = ["identify"] if command == "identify" else ["catalogue", command]
        return [*head, *map(str, argv), "--catalogue", str(self.catalogue)]

    def build_argv(self, *extra: object) -> list[str]:
        return self.cli("build", "--checkpoint", self.checkpoint, "--star-root", self.root, "--tta", "none",
                        "--device", "cpu", *extra)  # fmt: skip

    def state(self) -> list[str]:
        """The catalogue as committed: every table's rows as SQL (a build that records itself while it runs
        and then takes the record back leaves the same rows, though not the same file bytes)."""
        with contextlib.closing(sqlite3.connect(self.catalogue)) as con:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the WAL folded in, as after a clean close
            return list(con.iterdump())

    def sql(self, *statements: str, params: tuple = ()) -> None:
        with contextlib.closing(sqlite3.connect(self.catalogue, isolation_level=None)) as con:
            con.execute("PRAGMA foreign_keys = OFF")
            for statement in statements:
                con.execute(statement, params)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> World:
    """A small star tree, a tiny untrained 16-d model and their catalogue: read only, copied by ``world``."""
    work = tmp_path_factory.mktemp("store")
    root = make_star_tree(work / "stars", LAYOUT, size=(40, 32))
    torch.manual_seed(0)
    checkpoint = work / "run" / "best.pth"
    save_checkpoint(checkpoint, build_model("test_resnet", embedding_dim=16), CONFIG)
    catalogue = work / "archive.sqlite"
    embedder = checkpoint_embedder(checkpoint, torch.device("cpu"))
    with open_catalogue(catalogue, create=True) as store:
        build_catalogue(store, read_star_tree(root), root, embedder, progress=False)
    return World(root, checkpoint, catalogue)


@pytest.fixture
def world(built: World, tmp_path: Path) -> World:
    """This test's own copy of the tree and catalogue (in a folder of its own), the root moved to the copy."""
    root = tmp_path / "stars"
    shutil.copytree(built.root, root)
    catalogue = tmp_path / "cat" / "archive.sqlite"
    catalogue.parent.mkdir()
    shutil.copy(built.catalogue, catalogue)
    copy = World(root, built.checkpoint, catalogue)
    copy.sql("UPDATE meta SET value = json_quote(?) WHERE key = 'root'", params=(str(root),))
    return copy


def run(*argv: object) -> int:
    return cli.main([str(arg) for arg in argv])


def one_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run a command that must fail with one line naming the catalogue; return that line."""
    capsys.readouterr()
    assert run(*argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def decisions_for(world: World, tmp_path: Path) -> Path:
    """A decisions file confirming one new photo (inside the root) as Site/star0."""
    photo = write_image(world.root / "dives" / "2024-06-01" / "encA" / "IMG_0.jpg", (40, 32), seed=77)
    path = tmp_path / "decisions.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, DECISION_COLUMNS, restval="")
        writer.writeheader()
        writer.writerow(
            {"query": photo, "encounter": "encA", "decision": "confirm", "identity": "Site/star0",
             "time": "2024-06-02T10:00:00.000Z"}
        )  # fmt: skip
    return path


# ----------------------------------------------------------------- 4. one writer at a time


def hold(catalogue: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(catalogue)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_writer_is_told_which_process_writes(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    decisions = decisions_for(world, tmp_path)
    before = world.state()
    holder = hold(world.catalogue)
    try:
        for argv in (
            world.build_argv(),
            world.cli("apply", "--decisions", decisions),
            world.cli("calibrate"),
        ):
            line = one_line(capsys, argv)
            assert f"catalogue {world.catalogue} is busy" in line and f"pid {holder.pid}" in line, line
            assert "--wait" in line
        assert run(*world.cli("info")) == 0  # readers are never held up
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait()
    assert world.state() == before
    assert run(*world.cli("apply", "--decisions", decisions)) == 0  # released: the next writer goes ahead


def test_wait_blocks_until_the_holder_is_gone(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    script = HOLDER.replace("sys.stdin.read()", "import time; time.sleep(3)")
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(world.catalogue)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    started = time.monotonic()
    assert run(*world.build_argv("--wait")) == 0
    assert holder.poll() is not None, "the build went ahead while the first writer still held the catalogue"
    assert f"pid {holder.pid}" in caplog.text and "waiting" in caplog.text
    assert time.monotonic() - started > 0.5


def test_a_killed_writer_leaves_no_stale_lock(world: World) -> None:
    holder = hold(world.catalogue)
    holder.kill()
    holder.wait()
    assert run(*world.build_argv()) == 0
    with sqlite3.connect(world.catalogue) as con:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


@pytest.mark.slow
def test_two_builds_started_together(world: World) -> None:
    """While another process writes the catalogue (it holds the writer's lock), a real build is refused in one
    line naming that pid; two real builds started together with --wait both finish, one after the other
    (the second finding nothing left to embed)."""
    world.catalogue.unlink()
    command = [sys.executable, "-m", "megastarid.catalogue", *world.build_argv()[1:], "--commit-every", "2"]
    held = take_lock(world.catalogue.with_name(world.catalogue.name + "-lock"))
    try:
        refused = subprocess.run(command, capture_output=True, text=True, timeout=300)
    finally:
        os.close(held)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2, refused.stderr
    assert len(lines) == 1 and "is busy" in lines[0] and f"pid {os.getpid()}" in lines[0], refused.stderr
    waiting = [subprocess.Popen([*command, "--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]  # fmt: skip
    assert [p.wait(timeout=300) for p in waiting] == [0, 0], [p.communicate()[1] for p in waiting]
    with sqlite3.connect(world.catalogue) as con:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert con.execute("SELECT count(*), count(DISTINCT path) FROM photos").fetchone() == (12, 12)


# ----------------------------------------------------------------- 6. read-only catalogues


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` (a file or folder) read-only as the kernel enforces it: with the immutable flag
    (``chattr +i``, refused even to root) where this file system has one, else with its permission bits
    (which bind anyone but root, who is then skipped: root writes there whatever the bits say)."""
    chattr = shutil.which("chattr")
    if chattr and subprocess.run([chattr, "+i", path], capture_output=True).returncode == 0:
        try:
            yield
        finally:
            subprocess.run([chattr, "-i", path], check=True)
        return
    if os.geteuid() == 0:
        pytest.skip("root ignores permission bits, and this file system has no immutable flag (chattr +i)")
    mode = path.stat().st_mode
    path.chmod(mode & ~0o222)
    try:
        yield
    finally:
        path.chmod(mode)


def reads_work(world: World, tmp_path: Path) -> None:
    """info, log, identify and captures on the catalogue (their outputs elsewhere): all fine."""
    new = write_image(tmp_path / "new" / "a.jpg", (40, 32), seed=4242)
    assert run(*world.cli("info")) == 0
    assert run(*world.cli("log")) == 0
    assert run(*world.cli("identify", new, "--out", tmp_path / "m", "--allow-uncalibrated")) == 0
    assert run(*world.cli("captures", "--out", tmp_path / "captures.csv")) == 0


def writers_refused(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    decisions = decisions_for(world, tmp_path)
    for argv in (world.build_argv(), world.cli("apply", "--decisions", decisions), world.cli("calibrate")):
        line = one_line(capsys, argv)
        assert f"catalogue {world.catalogue} is read-only here" in line, line


@pytest.mark.parametrize("before", ["clean", "lock-file", "after-a-reader", "empty-wal"])
def test_a_read_only_folder_is_read_and_refuses_writers_in_one_line(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], before: str
) -> None:
    """As a closed catalogue is left: alone; with the lock file of a writer that worked there; with the
    -shm and empty -wal files a reader leaves; with an empty -wal file alone."""
    state = world.state()
    assert not world.catalogue.with_name("archive.sqlite-wal").exists()
    if before == "lock-file":
        world.catalogue.with_name("archive.sqlite-lock").write_text("1\n")
    elif before == "after-a-reader":
        assert run(*world.cli("info")) == 0
    elif before == "empty-wal":
        world.catalogue.with_name("archive.sqlite-wal").write_bytes(b"")
    with read_only(world.catalogue.parent):
        reads_work(world, tmp_path)
        writers_refused(world, tmp_path, capsys)
    assert world.state() == state


def test_a_read_only_catalogue_file_is_read_and_refuses_writers_in_one_line(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = world.state()
    with read_only(world.catalogue):
        reads_work(world, tmp_path)
        writers_refused(world, tmp_path, capsys)
    assert world.state() == before


def test_an_older_catalogue_in_a_read_only_folder_says_it_needs_upgrading(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.sql("DROP TABLE decisions", "ALTER TABLE photos DROP COLUMN origin", "PRAGMA user_version = 1")
    before = world.state()
    with read_only(world.catalogue.parent):
        line = one_line(capsys, world.cli("info"))
    assert f"catalogue {world.catalogue} is schema 1" in line and "read-only here" in line, line
    assert world.state() == before
    assert run(*world.cli("info")) == 0  # writable again: upgraded as it opens


# ----------------------------------------------------------------- 9. damaged or hand-edited catalogues

#: damage -> (SQL doing it, what the one line says); every line names the catalogue
DAMAGE = {
    "huge-blob": (
        "UPDATE embeddings SET vector = zeroblob(100000000) WHERE photo_id = 1",
        "the embedding of photo Site/star0/2024-03-01/img0.jpg is 100000000 bytes, not 64",
    ),
    "odd-size-blob": (
        "UPDATE embeddings SET vector = x'01020304050607' WHERE photo_id = 2",
        "is 7 bytes, not 64",
    ),
    "empty-blob": ("UPDATE embeddings SET vector = x'' WHERE photo_id = 2", "is 0 bytes, not 64"),
    "text-embedding": ("UPDATE embeddings SET vector = 'abcd' WHERE photo_id = 2", "is text, not 64 bytes"),
    "other-dimension": (
        "UPDATE embeddings SET vector = zeroblob(128) WHERE photo_id = 3",
        "is 128 bytes, not 64",
    ),
    "all-another-dimension": ("UPDATE embeddings SET vector = zeroblob(128)", "is 128 bytes, not 64"),
    "meta-not-json": (
        "UPDATE meta SET value = '{oops' WHERE key = 'root'",
        "its meta value 'root' is not JSON",
    ),
    "root-a-number": (
        "UPDATE meta SET value = '42' WHERE key = 'root'",
        "its root is 42, not a folder's path",
    ),
    "model-without-checkpoint": (
        "UPDATE meta SET value = json_remove(value, '$.source.checkpoint') WHERE key = 'model'",
        "its model record has no checkpoint path",
    ),
    "model-not-a-record": (
        "UPDATE meta SET value = '[1, 2]' WHERE key = 'model'",
        "its model record is [1, 2]",
    ),
    "model-without-size": (
        "UPDATE meta SET value = json_remove(value, '$.fingerprint.embedding_dim') WHERE key = 'model'",
        "its model record has no embedding_dim",
    ),
    "deleted-individual": (
        "DELETE FROM individuals WHERE name = 'Site/star1'",
        "photo Site/star1/2024-03-01/img0.jpg belongs to individual",
    ),
    "orphan-embedding": (
        "INSERT INTO embeddings VALUES (999, zeroblob(64))",
        "photos and embeddings do not pair up",
    ),
}
#: damage that ``catalogue info`` (which reads the meta values, not the embeddings) must report too
META_DAMAGE = {"meta-not-json", "root-a-number", "model-not-a-record", "model-without-size"}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_catalogue_is_one_line_naming_it_and_what_is_wrong(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    statement, message = DAMAGE[damage]
    world.sql(statement)
    before = world.state()
    new = write_image(tmp_path / "new" / "a.jpg", (40, 32), seed=4242)
    commands = [world.cli("identify", new, "--out", tmp_path / "m", "--allow-uncalibrated")]
    if damage in META_DAMAGE:
        commands.append(world.cli("info"))
    for argv in commands:
        line = one_line(capsys, argv)
        assert f"catalogue {world.catalogue}" in line and message in line, line
    assert world.state() == before


def test_a_huge_embedding_is_refused_before_anything_is_allocated(world: World) -> None:
    world.sql(DAMAGE["huge-blob"][0])
    with open_catalogue(world.catalogue) as store:
        tracemalloc.start()
        try:
            with pytest.raises(UserError, match="is 100000000 bytes"):
                load_index(store)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 10_000_000, f"{peak / 1e6:.0f} MB allocated to read a 12-photo catalogue"


def test_a_damaged_model_record_is_mended_by_a_rebuild(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.sql(DAMAGE["model-without-checkpoint"][0])
    line = one_line(capsys, world.build_argv())
    assert "its model record has no checkpoint path" in line and "--rebuild" in line, line
    assert run(*world.build_argv("--rebuild")) == 0
    assert run(*world.cli("info")) == 0


def test_a_corrupted_page_is_one_line(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world.state()  # the WAL folded into the file
    data = bytearray(world.catalogue.read_bytes())
    page = 65536  # the header page stays: the file still reads as a catalogue until its tables are read
    data[page:] = np.random.default_rng(0).integers(0, 256, len(data) - page, dtype=np.uint8).tobytes()
    world.catalogue.write_bytes(bytes(data))
    new = write_image(tmp_path / "new" / "a.jpg", (40, 32), seed=4242)
    for argv in (
        world.cli("info"),
        world.cli("identify", new, "--out", tmp_path / "m", "--allow-uncalibrated"),
    ):
        line = one_line(capsys, argv)
        assert f"catalogue {world.catalogue} is damaged" in line, line


def test_apply_never_adds_an_embedding_of_another_size(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model record edited to a 32-d model (whose weights are there): apply would embed with it, beside
    the catalogue's 16-d embeddings."""
    torch.manual_seed(1)
    other = tmp_path / "other" / "best.pth"
    save_checkpoint(other, build_model("test_resnet", embedding_dim=32), {**CONFIG, "embedding_dim": 32})
    record = checkpoint_embedder(other, torch.device("cpu")).record()
    world.sql("UPDATE meta SET value = ? WHERE key = 'model'", params=(json.dumps(record),))
    decisions = decisions_for(world, tmp_path)
    before = world.state()
    line = one_line(capsys, world.cli("apply", "--decisions", decisions))
    assert f"catalogue {world.catalogue}" in line and "64 bytes" in line and "128" in line, line
    assert world.state() == before


# ----------------------------------------------------------------- 10. non-finite embeddings


def photo_path(world: World, photo_id: int) -> str:
    with contextlib.closing(sqlite3.connect(world.catalogue)) as con:
        return str(con.execute("SELECT path FROM photos WHERE id = ?", (photo_id,)).fetchone()[0])


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_a_non_finite_embedding_is_refused_naming_its_photo(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: float
) -> None:
    vector = np.full(16, 0.25, np.float32)
    vector[3] = value
    world.sql("UPDATE embeddings SET vector = ? WHERE photo_id = 5", params=(vector.tobytes(),))
    new = write_image(tmp_path / "new" / "a.jpg", (40, 32), seed=4242)
    line = one_line(capsys, world.cli("identify", new, "--out", tmp_path / "m", "--allow-uncalibrated"))
    assert f"catalogue {world.catalogue} is damaged" in line, line
    assert f"the embedding of photo {photo_path(world, 5)} is not finite" in line, line
    assert not (tmp_path / "m").exists()


def test_a_non_finite_embedding_is_never_copied_to_another_photo(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """A build re-uses the stored embedding of a photo's bytes for a copy of them: never a non-finite one."""
    world.sql(
        "UPDATE embeddings SET vector = ? WHERE photo_id = 5",
        params=(np.full(16, np.nan, np.float32).tobytes(),),
    )
    source = world.root / photo_path(world, 5)
    shutil.copy(source, source.with_name("copy.jpg"))
    before = world.state()
    line = one_line(capsys, world.build_argv())
    assert f"catalogue {world.catalogue}" in line and "is not finite" in line, line
    assert world.state() == before


# ----------------------------------------------------------------- cosmetic


def test_info_lists_no_blank_dataset(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.sql("UPDATE photos SET dataset = '' WHERE id = 1")  # e.g. a photo that joined from an inbox
    capsys.readouterr()
    assert run(*world.cli("info")) == 0
    assert "datasets     Site\n" in capsys.readouterr().out
