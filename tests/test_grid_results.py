"""Grid results rebuilt from run folders written here the way the trainer and runner leave them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from PIL import Image

from megastarid.experiments.plan import GridConfig, build_plan
from megastarid.experiments.results import RESULT_COLUMNS, write_results

#: (strategy, loss, seed) -> star mAP, CMC@1 of a finished experiment
FINISHED = {
    ("star_only", "circle", 0): (0.30, 0.40),
    ("star_only", "circle", 1): (0.50, 0.60),
    ("star_only", "triplet", 0): (0.20, 0.30),
    ("star_only", "triplet", 1): (0.24, 0.35),
    ("pretrain_finetune", "circle", 0): (0.70, 0.80),
    ("pretrain_finetune", "circle", 1): (0.60, 0.90),
    ("pretrain_finetune", "triplet", 0): (0.55, 0.65),
}


def finish(run_dir: Path, m_ap: float | None, cmc1: float | None, wall: float, best_epoch: int = 3) -> None:
    run_dir.mkdir(parents=True)
    summary = {
        "status": "finished",
        "best_epoch": best_epoch,
        "best_metric": m_ap or 0.1,
        "epochs_completed": 4,
        "wall_time_s": wall,
    }
    (run_dir / "run_summary.json").write_text(json.dumps(summary))
    (run_dir / "last.pth").write_bytes(b"x")
    if m_ap is not None:
        star = {"mAP": m_ap, "CMC@1": cmc1, "CMC@5": 0.9, "CMC@10": 0.95, "CMC@20": 1.0, "num_queries": 20}
        (run_dir / "star_evaluation_summary.json").write_text(json.dumps(star))


def make_grid(out: Path) -> GridConfig:
    """Seven finished experiments, one failed, one interrupted, over 2 strategies × 2 losses × 2 seeds."""
    for (strategy, loss, seed), (m_ap, cmc1) in FINISHED.items():
        folder = out / f"{strategy}-{loss}-seed{seed}"
        if strategy == "pretrain_finetune":
            finish(folder / "pretrain", None, None, wall=100.0, best_epoch=7)
        finish(folder / "finetune", m_ap, cmc1, wall=10.0)
    failed = out / "pretrain_finetune-triplet-seed1"
    finish(failed / "pretrain", None, None, wall=100.0)
    status = {
        "status": "failed",
        "phase": "finetune",
        "returncode": 2,
        "error": "loading...\nmegastarid: error: --checkpoint x.pth does not exist",
    }
    (failed / "grid_status.json").write_text(json.dumps(status))
    return GridConfig(
        strategies=("pretrain_finetune", "star_only"),
        losses=("circle", "triplet"),
        seeds=(0, 1),
        output_dir=out,
    )


def test_results_table_rows_come_from_the_run_folders(tmp_path):
    config = make_grid(tmp_path)
    (tmp_path / "star_only-circle-seed2" / "finetune").mkdir(parents=True)
    (tmp_path / "star_only-circle-seed2" / "finetune" / "last.pth").write_bytes(b"x")
    experiments = [
        *build_plan(config),
        *build_plan(
            GridConfig(strategies=("star_only",), losses=("circle",), seeds=(2,), output_dir=tmp_path)
        ),
    ]
    write_results(experiments, tmp_path)

    table = pd.read_csv(tmp_path / "grid_results.csv")
    assert tuple(table.columns) == RESULT_COLUMNS
    assert len(table) == 9
    rows = {(r.strategy, r.loss, r.seed): r for r in table.itertuples()}
    row = rows[("pretrain_finetune", "circle", 0)]
    assert row.status == "finished" and row.mAP == 0.70 and row._7 == 0.80  # CMC@1
    assert row.val_mAP == 0.70  # the final phase's run_summary.json: the validation figure that chose
    assert row.best_epoch == 3  # from the final (finetune) phase
    assert row.wall_time_s == 110.0  # both phases
    assert row.run_folder == str(tmp_path / "pretrain_finetune-circle-seed0" / "finetune")
    assert isinstance(row.error, float) and math.isnan(row.error)  # empty cell
    failed = rows[("pretrain_finetune", "triplet", 1)]
    assert failed.status == "failed" and math.isnan(failed.mAP)
    assert failed.error == "finetune: loading... | megastarid: error: --checkpoint x.pth does not exist"
    assert rows[("star_only", "circle", 2)].status == "interrupted"


def test_summary_gives_mean_and_std_over_seeds_and_marks_the_best(tmp_path):
    config = make_grid(tmp_path)
    write_results(build_plan(config), tmp_path)
    text = (tmp_path / "grid_summary.md").read_text()

    assert "8 experiments (7 finished, 1 failed)" in text
    m_ap = text.split("## Star Test mAP")[1].split("## Star Test CMC@1")[0]
    assert "| strategy | circle | triplet |" in m_ap
    # pretrain_finetune × circle: mean 0.65, sample std of (0.7, 0.6) = 0.0707; the best mAP is bold
    assert "| pretrain_finetune | **0.650 ± 0.071** (n=2) | 0.550 (n=1) |" in m_ap
    assert "| star_only | 0.400 ± 0.141 (n=2) | 0.220 ± 0.028 (n=2) |" in m_ap
    cmc = text.split("## Star Test CMC@1")[1]
    assert "**0.850 ± 0.071** (n=2)" in cmc
    assert "Best by validation mAP: pretrain_finetune × circle (validation mAP 0.650; test mAP 0.650)" in text
    assert "`pretrain_finetune-triplet-seed1` failed: finetune: loading... | megastarid: error:" in text


def test_ties_for_best_are_all_marked(tmp_path):
    for strategy in ("star_only", "cotrain"):
        folder = tmp_path / f"{strategy}-circle-seed0"
        finish(folder / ("finetune" if strategy == "star_only" else "cotrain"), 0.4, 0.5, wall=1.0)
    config = GridConfig(strategies=("star_only", "cotrain"), losses=("circle",), output_dir=tmp_path)
    write_results(build_plan(config), tmp_path)
    text = (tmp_path / "grid_summary.md").read_text()
    # both cells bold in the validation table and in the test mAP table, and in the CMC@1 table
    assert text.count("| **0.400** (n=1) |") == 4 and text.count("| **0.500** (n=1) |") == 2
    assert "Best by validation mAP: star_only × circle, cotrain × circle (validation mAP 0.400; " in text


def test_validation_not_the_test_side_picks_the_best(tmp_path):
    for strategy, val_map, test_map in (("star_only", 0.3, 0.9), ("cotrain", 0.6, 0.5)):
        folder = (
            tmp_path / f"{strategy}-circle-seed0" / ("finetune" if strategy == "star_only" else "cotrain")
        )
        finish(folder, test_map, 0.5, wall=1.0)
        summary = json.loads((folder / "run_summary.json").read_text())
        (folder / "run_summary.json").write_text(json.dumps({**summary, "best_metric": val_map}))
    config = GridConfig(strategies=("star_only", "cotrain"), losses=("circle",), output_dir=tmp_path)
    results = write_results(build_plan(config), tmp_path)
    assert sorted(results["val_mAP"]) == [0.3, 0.6]
    text = (tmp_path / "grid_summary.md").read_text()
    assert "Best by validation mAP: cotrain × circle (validation mAP 0.600; test mAP 0.500)." in text
    test_table = text.split("## Star Test mAP")[1].split("## Star Test CMC@1")[0]
    assert "| star_only | 0.900 (n=1) |" in test_table and "| cotrain | **0.500** (n=1) |" in test_table


def test_plot_is_written_even_before_anything_finished(tmp_path):
    config = make_grid(tmp_path)
    write_results(build_plan(config), tmp_path)
    with Image.open(tmp_path / "grid_results.png") as image:
        assert image.size[0] >= 600 and image.size[1] >= 600

    empty = tmp_path / "empty"
    results = write_results(build_plan(GridConfig(strategies=("cotrain",), output_dir=empty)), empty)
    assert list(results["status"]) == ["not run", "not run"]
    assert "No experiment has finished yet." in (empty / "grid_summary.md").read_text()
    with Image.open(empty / "grid_results.png") as image:
        assert image.size[0] > 0
