"""``megastarid demo``: pre-train, fine-tune from that checkpoint, then say where the results are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megastarid import demo
from megastarid.models.checkpoints import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow
@pytest.mark.timeout(1500)  # two whole demos, each with its catalogue and identify processes
def test_demo_runs_the_whole_pipeline(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    argv = [
        "--output-dir",
        str(out),
        "--backbone",
        "test_resnet",
        "--image-size",
        "32",
        "--pretrain-epochs",
        "1",
        "--finetune-epochs",
        "1",
        "--workers",
        "0",
    ]
    assert demo.main(argv) == 0
    printed = capsys.readouterr().out
    fine = out / "finetune"
    for path in (
        fine / "star_evaluation_summary.json",
        fine / "training_curves.png",
        out / "demo_summary.json",
        out / "matches" / "matches.csv",
        out / "matches" / "lineup.html",
    ):
        assert str(path) in printed and path.is_file()
    for name in ("star_openset_summary.json", "calibration.json", "openset_curve.png", "reliability.png"):
        assert name in printed and (fine / name).is_file()
    assert "before fine-tuning" in printed and "Star split time-cut" in printed
    summary = json.loads((out / "demo_summary.json").read_text())
    assert set(summary) >= {"wall_time_s", "before_mAP", "final_mAP", "final_CMC@1", "openset"}
    opened = summary["openset"]
    assert opened["new_queries"] > 0 and 0 <= opened["BAUS"] <= 1 and 0 <= opened["AUROC"] <= 1
    assert f"BAKS {opened['BAKS']:.3f}, BAUS {opened['BAUS']:.3f}" in printed
    start = load_checkpoint(fine / "last.pth")["config"]["checkpoint"]
    assert start == str(out / "pretrain" / "best.pth")  # fine-tuned from the pre-trained model
    assert demo.main(argv) == 0  # a second demo replaces the first
