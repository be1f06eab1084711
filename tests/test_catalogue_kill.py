"""A ``catalogue build`` killed with SIGKILL mid-way: the file stays intact, readers see whole batches
while the build runs, and a rerun finishes the job with no photo twice."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import make_star_tree
from megastarid.data.readers import read_star_tree
from megastarid.identification.build import build_catalogue
from megastarid.identification.store_index import load_index
from megastarid.identification.store_open import open_catalogue
from megastarid.models.checkpoints import save_checkpoint
from megastarid.models.embedder import checkpoint_embedder
from megastarid.models.network import build_model

PHOTOS = 6 * 5 * 8
LAYOUT = {"Site": {f"star{i}": {f"2024-0{j + 1}-01": 8 for j in range(5)} for i in range(6)}}


def count(catalogue: Path) -> int:
    try:
        with sqlite3.connect(f"file:{catalogue}?mode=ro", uri=True, timeout=5) as con:
            return int(con.execute("SELECT count(*) FROM photos").fetchone()[0])
    except sqlite3.Error:  # not created yet
        return 0


@pytest.mark.slow
def test_a_killed_build_resumes_and_leaves_no_photo_twice(tmp_path: Path) -> None:
    stars = make_star_tree(tmp_path / "stars", LAYOUT, size=(96, 72))
    torch.manual_seed(0)
    checkpoint = tmp_path / "best.pth"
    save_checkpoint(
        checkpoint,
        build_model("test_resnet", embedding_dim=16),
        {"backbone": "test_resnet", "embedding_dim": 16, "image_size": 64},
    )
    catalogue = tmp_path / "archive.sqlite"
    argv = ["--checkpoint", checkpoint, "--star-root", stars, "--catalogue", catalogue, "--device", "cpu"]
    command = [sys.executable, "-m", "megastarid.catalogue", "build", *map(str, argv)]
    command += ["--commit-every", "4", "--batch-size", "2", "--tta", "none"]  # resumed with the same below
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    build = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while count(catalogue) < 12:
            assert build.poll() is None, build.stderr.read().decode() if build.stderr else ""
            assert time.monotonic() < deadline, "the build never got going"
            time.sleep(0.01)
        with open_catalogue(catalogue) as reader:  # a reader while the build writes (WAL)
            seen = load_index(reader).num_photos
        assert seen % 4 == 0 and seen >= 12  # whole batches only
    finally:
        build.send_signal(signal.SIGKILL)
        build.wait()
    assert build.returncode == -signal.SIGKILL
    done = count(catalogue)
    assert 12 <= done < PHOTOS, "killed mid-way"
    with sqlite3.connect(catalogue) as con:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]

    embedder = checkpoint_embedder(checkpoint, torch.device("cpu"))
    with open_catalogue(catalogue, create=True) as store:
        report = build_catalogue(store, read_star_tree(stars), stars, embedder, progress=False)
    assert report.embedded == PHOTOS - done and report.unchanged == done and report.photos == PHOTOS
    with sqlite3.connect(catalogue) as con:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
        photos, paths, hashes = con.execute(
            "SELECT count(*), count(DISTINCT path), count(DISTINCT sha256) FROM photos"
        ).fetchone()
        assert photos == paths == hashes == PHOTOS
        assert con.execute("SELECT count(*) FROM embeddings").fetchone()[0] == PHOTOS
        assert con.execute("SELECT sum(num_photos) FROM individuals").fetchone()[0] == PHOTOS
