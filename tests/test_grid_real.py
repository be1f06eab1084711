"""A tiny real grid on synthetic data: star_only + cotrain, circle loss, 1 epoch, tiny backbone and images.

Three invocations of the real command share the training work (two trainings in all):
1. cotrain is forced to fail (its run folder is blocked by a file) while star_only trains and finishes;
2. after unblocking, the same command skips star_only and trains cotrain;
3. once more, it skips both and trains nothing. Each leaves the three result files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

TRAIN_ARGS = [
    "--backbone",
    "test_resnet",
    "--no-pretrained",
    "--embedding-dim",
    "32",
    "--image-size",
    "64",
    "--batch-size",
    "8",
    "--num-instances",
    "2",
    "--workers",
    "0",
]


def grid(out: Path, stars: Path, wildlife: Path, env: dict[str, str]) -> tuple[int, str, float]:
    command = [
        sys.executable,
        "-m",
        "megastarid.experiments.grid_search",
        "--strategies",
        "cotrain,star_only",
        "--losses",
        "circle",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--output-dir",
        str(out),
        "--star-root",
        str(stars),
        "--wildlife-root",
        str(wildlife),
        "--",
        *TRAIN_ARGS,
    ]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=540)
    return done.returncode, done.stderr + done.stdout, time.perf_counter() - start


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, synthetic_stars: Path, synthetic_wildlife: Path) -> dict:
    base = tmp_path_factory.mktemp("grid")
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MEGASTARID_CACHE": str(base / "cache")}
    out = base / "out"
    blocked = out / "cotrain-circle-seed0" / "cotrain"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a run folder")

    steps = {}
    for step in ("fail", "retry", "rerun"):
        if step == "retry":
            blocked.unlink()
        code, output, seconds = grid(out, synthetic_stars, synthetic_wildlife, env)
        steps[step] = {
            "code": code,
            "output": output,
            "seconds": seconds,
            "csv": pd.read_csv(out / "grid_results.csv"),
            "summary": (out / "grid_summary.md").read_text(),
            "png": (out / "grid_results.png").stat().st_mtime_ns,
            "star_only_mtime": (out / "star_only-circle-seed0/finetune/run_summary.json").stat().st_mtime_ns,
        }
    return {"out": out, **steps}


def by_strategy(table: pd.DataFrame) -> dict[str, pd.Series]:
    return {row["strategy"]: row for _, row in table.iterrows()}


def test_one_experiment_failing_leaves_the_others_finished(runs):
    step = runs["fail"]
    assert step["code"] == 1, step["output"]
    rows = by_strategy(step["csv"])
    assert rows["star_only"]["status"] == "finished" and 0 < rows["star_only"]["mAP"] <= 1
    failed = rows["cotrain"]
    assert failed["status"] == "failed"
    assert "cotrain-circle-seed0/cotrain is a file, not a folder" in failed["error"]
    assert (runs["out"] / "cotrain-circle-seed0" / "logs" / "cotrain.log").is_file()
    assert "[1/2] FAILED cotrain-circle-seed0" in step["output"]
    assert "[2/2] finished star_only-circle-seed0" in step["output"]  # after the failure, in order
    assert "`cotrain-circle-seed0` failed: cotrain:" in step["summary"]


def test_tiny_grid_writes_all_three_result_files(runs):
    step, out = runs["retry"], runs["out"]
    assert step["code"] == 0, step["output"]
    table = step["csv"]
    assert list(table["status"]) == ["finished", "finished"]
    for metric in ("mAP", "CMC@1", "CMC@5", "CMC@10", "CMC@20"):
        assert table[metric].between(0, 1).all()
    assert (table["best_epoch"] >= 0).all() and (table["wall_time_s"] > 0).all()
    assert all((Path(folder) / "best.pth").is_file() for folder in table["run_folder"])
    assert "| strategy | circle |" in step["summary"] and "| cotrain | " in step["summary"]
    m_ap = step["summary"].split("## Star Test mAP")[1].split("## Star Test CMC@1")[0]
    best = table.loc[table["val_mAP"].idxmax(), "strategy"]  # chosen by validation, shown on test
    assert next(line for line in m_ap.splitlines() if line.startswith(f"| {best} |")).count("**") == 2
    with Image.open(out / "grid_results.png") as image:
        assert image.format == "PNG" and image.size[0] > 300
    print(f"tiny grid (cotrain run after star_only was done): {step['seconds']:.1f} s")


def test_rerun_skips_finished_experiments_and_still_reports_them(runs):
    retry, rerun = runs["retry"], runs["rerun"]
    assert "[2/2] skip star_only-circle-seed0 (finished)" in retry["output"]
    assert retry["star_only_mtime"] == runs["fail"]["star_only_mtime"]  # not trained again
    assert rerun["code"] == 0
    assert "[1/2] skip cotrain-circle-seed0 (finished)" in rerun["output"]
    assert " start " not in rerun["output"]
    pd.testing.assert_frame_equal(rerun["csv"], retry["csv"])  # the full table, rebuilt from the folders
    assert rerun["seconds"] < retry["seconds"] / 2
