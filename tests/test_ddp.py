"""The distributed path: two CPU processes over gloo from a plain ``python -m`` call, as on two GPUs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from megastarid.data.synth import generate_stars
from megastarid.models.checkpoints import load_checkpoint


@pytest.mark.slow
def test_finetune_on_two_cpu_processes(tmp_path: Path) -> None:
    stars = generate_stars(tmp_path / "stars", identities=6, image_size=48)
    run = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "megastarid.finetune",
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--output-dir",
        str(run),
        "--star-root",
        str(stars),
        "--backbone",
        "test_resnet",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--num-instances",
        "2",
        "--workers",
        "0",
        "--epochs",
        "1",
        "--warmup-epochs",
        "0",
        "--lr",
        "1e-3",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_completed"] == 1
    history = pd.read_csv(run / "history.csv")
    assert history["epoch"].tolist() == [0, 1]
    assert history["loss"].iloc[1:].notna().all() and history["val_star_mAP"].notna().all()
    assert (run / "star_evaluation_summary.json").is_file()
    assert result.stderr.count("done: best val_star_mAP") == 1  # only rank 0 reports and writes


@pytest.mark.slow
def test_arcface_and_ema_train_on_two_cpu_processes(tmp_path: Path) -> None:
    stars = generate_stars(tmp_path / "stars", identities=6, image_size=48)
    run = tmp_path / "run"
    argv = [
        sys.executable, "-m", "megastarid.finetune", "--accelerator", "cpu", "--devices", "2",
        "--output-dir", str(run), "--star-root", str(stars), "--backbone", "test_resnet",
        "--image-size", "32", "--batch-size", "4", "--num-instances", "2", "--workers", "0",
        "--epochs", "1", "--warmup-epochs", "0", "--lr", "1e-3", "--arcface-weight", "1", "--ema", "0.9",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    history = pd.read_csv(run / "history.csv")
    assert history["arcface_loss"].iloc[1:].notna().all() and history["val_star_mAP"].notna().all()
    last = load_checkpoint(run / "last.pth")
    assert (
        set(last["ema"]) == set(last["model"]) and last["arcface"]["loss.W"].shape[1] == 6 * 3
    )  # 6 identities
    assert (run / "star_evaluation_summary.json").is_file()
