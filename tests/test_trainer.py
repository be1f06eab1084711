"""The trainer's own behaviour on tiny in-memory tasks: schedule, devices, NaN steps, run folders."""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.utils.data import Dataset

from megastarid.core.errors import UserError
from megastarid.data.samplers import PKBatchSampler
from megastarid.models.checkpoints import load_checkpoint
from megastarid.models.network import build_model
from megastarid.training.config import FinetuneConfig
from megastarid.training.distributed import fabric_options
from megastarid.training.loop import fit
from megastarid.training.schedule import lr_factor
from megastarid.training.state import EpochTally
from megastarid.training.tasks import TrainTask

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Blobs(Dataset):
    """Identity i = a noisy image around its own colour; ``poisoned`` items are all-NaN."""

    def __init__(self, identities: int = 4, per_identity: int = 4, poisoned: frozenset[int] = frozenset()):
        generator = torch.Generator().manual_seed(0)
        self.labels = [i // per_identity for i in range(identities * per_identity)]
        self.base = torch.rand(identities, 3, 1, 1, generator=generator)
        self.noise = 0.1 * torch.randn(len(self.labels), 3, 32, 32, generator=generator)
        self.poisoned = poisoned

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = self.base[self.labels[i]] + self.noise[i]
        return (torch.full_like(image, math.nan) if i in self.poisoned else image), self.labels[i], i


def blob_task(dataset: Blobs, k: int = 2, p: int = 2) -> TrainTask:
    calls = iter(range(1000))
    return TrainTask(
        name="finetune",
        dataset=dataset,
        paths=[f"blob{i}.png" for i in range(len(dataset))],
        make_sampler=lambda rank, world: PKBatchSampler(dataset.labels, p, k, 0, rank, world),
        build_model=lambda: build_model("test_resnet", embedding_dim=16),
        evaluate=lambda model, device: {"blob_mAP": 0.1 * next(calls)},
        metric="blob_mAP",
    )


def config(tmp_path: Path, *extra: str, epochs: int = 2) -> FinetuneConfig:
    return FinetuneConfig(
        output_dir=tmp_path / "run",
        backbone="test_resnet",
        image_size=32,
        epochs=epochs,
        batch_size=4,
        num_instances=2,
        workers=0,
        warmup_epochs=1,
        lr=1e-3,
    )


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    factors = [lr_factor(step, 10, 100) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))
    assert lr_factor(100, 10, 100) == pytest.approx(0.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_device_options_without_cuda(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--gpus 0,1: no CUDA GPU"):
        fabric_options(FinetuneConfig(gpus=(0, 1)))
    with pytest.raises(UserError, match="fp16 needs a GPU"):
        fabric_options(FinetuneConfig(precision="fp16"))
    assert fabric_options(FinetuneConfig()) == {
        "accelerator": "cpu",
        "devices": 1,
        "strategy": "auto",
        "precision": "32-true",
    }
    assert fabric_options(FinetuneConfig(accelerator="cpu", devices=2))["strategy"] == "ddp"


def test_a_run_writes_history_checkpoints_and_summary(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert fit(cfg, lambda: blob_task(Blobs())) == 0
    run = cfg.output_dir
    history = pd.read_csv(run / "history.csv")
    assert history["epoch"].tolist() == [0, 1, 2]
    assert list(history.columns[:7]) == [
        "epoch",
        "loss",
        "circle_loss",
        "triplet_loss",
        "lr",
        "backbone_lr",
        "images_per_s",
    ]
    assert history["blob_mAP"].tolist() == pytest.approx([0.0, 0.1, 0.2])
    assert history["loss"].iloc[1:].notna().all() and (history["images_per_s"].iloc[1:] > 0).all()
    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_completed"] == 2
    assert summary["best_epoch"] == 2 and summary["best_metric"] == pytest.approx(0.2)
    assert load_checkpoint(run / "best.pth")["epoch"] == 2
    assert (run / "training_curves.png").stat().st_size > 0
    assert any((run / "tensorboard").iterdir())


def test_an_existing_run_is_not_overwritten_silently(tmp_path: Path) -> None:
    cfg = config(tmp_path, epochs=1)
    fit(cfg, lambda: blob_task(Blobs()))
    (cfg.output_dir / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"already holds a run: pass --resume .* or --overwrite"):
        fit(cfg, lambda: blob_task(Blobs()))
    cfg.overwrite = True
    assert fit(cfg, lambda: blob_task(Blobs())) == 0
    assert (cfg.output_dir / "notes.txt").read_text() == "mine"  # only the run's own files are replaced
    fresh = FinetuneConfig(output_dir=tmp_path / "empty", resume=True)
    with pytest.raises(UserError, match="nothing to resume"):
        fit(fresh, lambda: blob_task(Blobs()))


def test_nan_loss_steps_are_skipped_and_counted(tmp_path: Path) -> None:
    cfg = config(tmp_path, epochs=1)
    dataset = Blobs(poisoned=frozenset({0}))  # every batch holding item 0 has a NaN loss
    assert fit(cfg, lambda: blob_task(dataset)) == 0
    history = pd.read_csv(cfg.output_dir / "history.csv")
    assert history["skipped_steps"].iloc[1] >= 1
    assert json.loads((cfg.output_dir / "run_summary.json").read_text())["skipped_steps"] >= 1
    assert all(
        torch.isfinite(t).all() for t in load_checkpoint(cfg.output_dir / "last.pth")["model"].values()
    )


def test_many_nan_steps_in_a_row_stop_the_run_clearly(tmp_path: Path) -> None:
    cfg = config(tmp_path, epochs=1)
    cfg.max_bad_steps = 3
    dataset = Blobs(identities=4, per_identity=8, poisoned=frozenset(range(32)))
    with pytest.raises(UserError, match=r"NaN/inf .* for 3 steps in a row"):
        fit(cfg, lambda: blob_task(dataset))


def test_evaluation_cadence_and_early_stopping(tmp_path: Path) -> None:
    cfg = config(tmp_path, epochs=6)
    cfg.eval_every, cfg.patience = 2, 3
    task = blob_task(Blobs())
    task.evaluate = lambda model, device: {"blob_mAP": 0.5}  # never improves on epoch 0
    assert fit(cfg, lambda: task) == 0
    history = pd.read_csv(cfg.output_dir / "history.csv")
    assert history["epoch"].tolist() == [0, 1, 2, 3, 4]  # stopped once 4 epochs passed without a gain
    assert history["blob_mAP"].notna().tolist() == [True, False, True, False, True]
    summary = json.loads((cfg.output_dir / "run_summary.json").read_text())
    assert summary["stopped_early"] and summary["best_epoch"] == 0 and summary["epochs_completed"] == 4


class Unreadable(Blobs):
    """Items 3 and 9 are corrupt photos (the dataset returns no image for them)."""

    def __getitem__(self, i: int):
        image, label, index = super().__getitem__(i)
        return (None if i in (3, 9) else image), label, index


def test_unreadable_photos_are_listed_and_counted_whatever_their_name(tmp_path: Path) -> None:
    cfg = config(tmp_path, epochs=1)
    task = blob_task(Unreadable(identities=4, per_identity=6))
    task.paths = [os.fsdecode(f"blob{i}-caf\xe9.png".encode("latin-1")) for i in range(24)]  # not UTF-8
    assert fit(cfg, lambda: task) == 0
    listed = (cfg.output_dir / "bad_images.txt").read_bytes().splitlines()
    assert sorted(listed) == [b"blob3-caf\xe9.png", b"blob9-caf\xe9.png"]
    assert pd.read_csv(cfg.output_dir / "history.csv")["bad_images"].iloc[1] == 2
    assert json.loads((cfg.output_dir / "run_summary.json").read_text())["bad_images"] == 2


def test_an_epoch_tally_round_trips_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    tally = EpochTally.zero(torch.device("cpu"))
    tally.add_step(torch.tensor([1.1, 2.2, math.nan, math.nan]), images=8)
    tally.add_step(torch.tensor([0.3, 0.4, math.nan, math.nan]), images=6)
    tally.bad_images, tally.skipped_steps, tally.elapsed = 2, 1, 3.25
    torch.save({"partial": tally.to_dict()}, tmp_path / "t.pth")
    back = EpochTally.from_dict(
        torch.load(tmp_path / "t.pth", weights_only=True)["partial"], torch.device("cpu")
    )
    assert torch.equal(back.loss_sums[:2], tally.loss_sums[:2]) and back.loss_sums[2].isnan()
    assert (back.steps, back.images, back.bad_images, back.skipped_steps, back.elapsed) == (2, 14, 2, 1, 3.25)
    assert back.loss_means() == {
        "loss": float(tally.loss_sums[0]) / 2,
        "circle_loss": float(tally.loss_sums[1]) / 2,
    }
