"""``megastarid demo``: pre-train, fine-tune from that checkpoint, then say where the results are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megastarid import demo
from megastarid.training.models import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow
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
    ):
        assert str(path) in printed and path.is_file()
    assert "before fine-tuning (epoch 0)" in printed
    summary = json.loads((out / "demo_summary.json").read_text())
    assert set(summary) >= {"wall_time_s", "epoch0_mAP", "final_mAP", "final_CMC@1"}
    start = load_checkpoint(fine / "last.pth")["config"]["checkpoint"]
    assert start == str(out / "pretrain" / "best.pth")  # fine-tuned from the pre-trained model
    assert demo.main(argv) == 0  # a second demo replaces the first
