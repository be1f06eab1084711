"""Interrupt a run with a signal mid-epoch, resume it, and get exactly the uninterrupted run's history."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.utils.data import Dataset

from megastarid.data.synth import generate_stars
from megastarid.models.checkpoints import load_checkpoint
from megastarid.training.config import FinetuneConfig
from megastarid.training.loop import INTERRUPTED, fit
from megastarid.training.strategies import finetune_task

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TIMING = ["images_per_s"]


class Tripwire(Dataset):
    """The real dataset, sending this process ``signum`` when the ``after``-th image is read."""

    def __init__(self, dataset: Dataset, after: int, signum: int) -> None:
        self.dataset, self.after, self.signum, self.reads = dataset, after, signum, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        self.reads += 1
        if self.reads == self.after:
            os.kill(os.getpid(), self.signum)
        return self.dataset[index]


@pytest.fixture(scope="module")
def stars(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_stars(tmp_path_factory.mktemp("data") / "stars", identities=6, image_size=48)


def config(run: Path, stars: Path) -> FinetuneConfig:
    return FinetuneConfig(
        output_dir=run,
        star_root=stars,
        backbone="test_resnet",
        image_size=32,
        epochs=3,
        batch_size=8,
        num_instances=2,
        workers=0,
        warmup_epochs=1,
        lr=1e-3,
    )


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_then_resumed_run_matches_an_uninterrupted_one(
    tmp_path: Path, stars: Path, signum, capsys
):
    whole = config(tmp_path / "whole", stars)
    assert fit(whole, lambda: finetune_task(whole)) == 0
    expected = pd.read_csv(whole.output_dir / "history.csv").drop(columns=TIMING)

    cut = config(tmp_path / "cut", stars)
    per_epoch = len(finetune_task(cut).make_sampler(0, 1)) * cut.batch_size

    def tripped():
        task = finetune_task(cut)
        task.dataset = Tripwire(task.dataset, after=per_epoch + 3 * cut.batch_size, signum=signum)
        return task

    assert fit(cut, tripped) == INTERRUPTED
    out = capsys.readouterr().out
    assert f"--output-dir {cut.output_dir} --resume" in out
    saved = load_checkpoint(cut.output_dir / "last.pth")
    assert (saved["run"]["epoch"], saved["run"]["step"]) == (1, 3)  # stopped after the batch in flight
    assert not (cut.output_dir / "run_summary.json").exists()

    cut.resume = True
    assert fit(cut, lambda: finetune_task(cut)) == 0
    resumed = pd.read_csv(cut.output_dir / "history.csv").drop(columns=TIMING)
    pd.testing.assert_frame_equal(resumed, expected, rtol=1e-5)
    summary = json.loads((cut.output_dir / "run_summary.json").read_text())
    assert summary["epochs_completed"] == 3 and summary["status"] == "finished"


@pytest.mark.slow
def test_resume_restores_the_arcface_centres_and_the_ema_exactly(tmp_path: Path, stars: Path) -> None:
    def run(name: str) -> FinetuneConfig:
        return dataclasses.replace(config(tmp_path / name, stars), arcface_weight=0.5, ema=0.9)

    whole = run("whole")
    assert fit(whole, lambda: finetune_task(whole)) == 0
    cut = run("cut")
    per_epoch = len(finetune_task(cut).make_sampler(0, 1)) * cut.batch_size

    def tripped():
        task = finetune_task(cut)
        task.dataset = Tripwire(task.dataset, after=per_epoch + 3 * cut.batch_size, signum=signal.SIGTERM)
        return task

    assert fit(cut, tripped) == INTERRUPTED
    cut.resume = True
    assert fit(cut, lambda: finetune_task(cut)) == 0
    expected = pd.read_csv(whole.output_dir / "history.csv").drop(columns=TIMING)
    resumed = pd.read_csv(cut.output_dir / "history.csv").drop(columns=TIMING)
    assert resumed["arcface_loss"].iloc[1:].notna().all()
    pd.testing.assert_frame_equal(resumed, expected, rtol=1e-5)
    ends = [load_checkpoint(c.output_dir / "last.pth") for c in (whole, cut)]
    for part in ("model", "ema", "arcface"):
        for key, value in ends[0][part].items():
            torch.testing.assert_close(ends[1][part][key], value, rtol=1e-5, atol=1e-6, msg=f"{part}.{key}")


@pytest.mark.slow
def test_resuming_a_finished_run_trains_nothing_more(tmp_path: Path, stars: Path) -> None:
    done = config(tmp_path / "done", stars)
    done.epochs = 1
    fit(done, lambda: finetune_task(done))
    before = pd.read_csv(done.output_dir / "history.csv")
    done.resume = True
    assert fit(done, lambda: finetune_task(done)) == 0
    pd.testing.assert_frame_equal(pd.read_csv(done.output_dir / "history.csv"), before)


@pytest.fixture
def python_sigint_handler():
    """Python's own Ctrl-C handler, even when pytest was started in the background of a script (which
    starts it with SIGINT ignored, so a re-raised SIGINT would vanish)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
@pytest.mark.usefixtures("python_sigint_handler")
def test_a_signal_after_the_last_step_still_stops_the_program(tmp_path: Path, stars: Path) -> None:
    cfg = config(tmp_path / "run", stars)
    cfg.epochs = 1
    last_read = len(finetune_task(cfg).make_sampler(0, 1)) * cfg.batch_size

    def tripped():
        task = finetune_task(cfg)
        task.dataset = Tripwire(task.dataset, after=last_read, signum=signal.SIGINT)
        return task

    with pytest.raises(KeyboardInterrupt):  # run_main turns this into "interrupted", exit code 130
        fit(cfg, tripped)
    assert load_checkpoint(cfg.output_dir / "last.pth")["run"]["epoch"] == 1  # the epoch was kept
    cfg.resume = True
    assert fit(cfg, lambda: finetune_task(cfg)) == 0
    assert json.loads((cfg.output_dir / "run_summary.json").read_text())["epochs_completed"] == 1


@pytest.mark.slow
def test_sigterm_to_the_whole_process_group_saves_and_exits_cleanly(tmp_path: Path, stars: Path) -> None:
    """A scheduler (SLURM, `timeout`) signals every process of the job, DataLoader workers included."""
    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "megastarid.finetune", "--star-root", str(stars), "--output-dir", str(run),
        "--backbone", "test_resnet", "--image-size", "32", "--epochs", "200", "--batch-size", "8",
        "--num-instances", "2", "--workers", "1", "--eval-every", "100",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (run / "tensorboard").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # well inside the training epochs
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == INTERRUPTED, err
    assert "Traceback" not in err
    assert f"--output-dir {run} --resume" in out
    assert load_checkpoint(run / "last.pth")["run"]["epoch"] < 200
