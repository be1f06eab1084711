"""Sub-center ArcFace (--arcface-weight) and the weight EMA (--ema): options, optimizer, files, DDP."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from lightning_fabric import Fabric

from megastarid import cotrain, evaluate, finetune
from megastarid.core.errors import UserError
from megastarid.models.checkpoints import load_checkpoint
from megastarid.models.network import build_model
from megastarid.training.config import CotrainConfig, FinetuneConfig
from megastarid.training.step import Trainer
from megastarid.training.strategies import cotrain_task
from megastarid.training.tasks import star_catalogue, wildlife_catalogue

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = [
    "--backbone", "test_resnet", "--image-size", "32", "--batch-size", "8", "--num-instances", "2",
    "--workers", "0", "--warmup-epochs", "0", "--lr", "1e-3", "--eval-batch-size", "32",
]  # fmt: skip
ON = ["--arcface-weight", "0.5", "--arcface-subcenters", "2", "--ema", "0.9"]


def tiny_config(**changes) -> FinetuneConfig:
    base = FinetuneConfig(
        backbone="test_resnet", embedding_dim=16, image_size=32, batch_size=8, num_instances=2, epochs=2
    )
    return dataclasses.replace(base, **changes)


def batch(seed: int, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randperm(classes, generator=generator)[:4].repeat_interleave(2)
    return torch.rand(8, 3, 32, 32, generator=generator), labels


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ema": 1.0}, "--ema must be a decay in"),
        ({"ema": -0.1}, "--ema must be a decay in"),
        ({"arcface_weight": -1.0}, "--arcface-weight must not be negative"),
        ({"arcface_lr": 0.0}, "--arcface-lr must be positive"),
        ({"arcface_subcenters": 0}, "--arcface-subcenters must be at least 1"),
        ({"circle_weight": 0.0, "triplet_weight": 0.0}, "at least one loss must be on"),
    ],
)
def test_bad_values_are_refused_naming_the_option(changes: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        tiny_config(**changes)


def test_arcface_alone_is_a_loss() -> None:
    assert tiny_config(circle_weight=0.0, triplet_weight=0.0, arcface_weight=1.0).arcface_weight == 1.0


def test_centres_have_their_own_learning_rate_and_move_and_the_ema_lags() -> None:
    cfg = tiny_config(arcface_weight=1.0, arcface_lr=0.05, ema=0.9, weight_decay=0.01)
    torch.manual_seed(0)
    trainer = Trainer(Fabric(accelerator="cpu", devices=1), build_model("test_resnet", 16), cfg, 4, 5)
    assert trainer.arcface is not None and trainer.ema is not None
    groups = {group["name"]: group for group in trainer.optimizer.param_groups}
    assert groups["arcface"]["initial_lr"] == 0.05 and groups["arcface"]["weight_decay"] == 0.0
    assert [p.shape for p in groups["arcface"]["params"]] == [(16, 5 * 3)]  # 5 identities x 3 sub-centres
    assert {group["initial_lr"] for name, group in groups.items() if name != "arcface"} <= {
        cfg.lr,
        cfg.lr * 0.1,
    }
    centres = trainer.arcface.centres.detach().clone()
    for seed in range(3):
        losses = trainer.step(*batch(seed, classes=5))
        assert losses is not None and torch.isfinite(losses[3])  # the arcface_loss slot
    assert not torch.allclose(trainer.arcface.centres, centres)
    live, ema = trainer.module.state_dict(), trainer.ema.module.state_dict()
    weights = [key for key, value in live.items() if value.is_floating_point()]
    assert any(not torch.equal(live[key], ema[key]) for key in weights)
    assert trainer.state_dict()["arcface"]["loss.W"].shape == (16, 15)


@pytest.mark.slow
def test_finetune_with_arcface_and_ema_keeps_the_ema_in_best_and_evaluates(
    tmp_path: Path, tiny_sets: dict[str, Path]
) -> None:
    run = tmp_path / "run"
    argv = ["--output-dir", str(run), "--star-root", str(tiny_sets["stars"]), "--epochs", "2", *TINY, *ON]
    assert finetune.main([*argv, "--val-fraction", "0"]) == 0  # no validation: best.pth is the last epoch
    history = pd.read_csv(run / "history.csv")
    assert history["arcface_loss"].iloc[1:].notna().all() and history["arcface_loss"].iloc[1:].gt(0).all()
    best, last = load_checkpoint(run / "best.pth"), load_checkpoint(run / "last.pth")
    assert best["epoch"] == last["epoch"] == 2
    assert set(last["ema"]) == set(last["model"])
    assert not {"ema", "optimizer", "scheduler", "scaler", "arcface"} & set(best)  # the model alone
    assert (run / "best.pth").stat().st_size < (run / "last.pth").stat().st_size / 2
    floats = [key for key, value in best["model"].items() if value.is_floating_point()]
    assert all(torch.equal(best["model"][key], last["ema"][key]) for key in floats)
    assert any(not torch.equal(best["model"][key], last["model"][key]) for key in floats)
    cfg = FinetuneConfig(star_root=tiny_sets["stars"], val_fraction=0.0)
    identities = star_catalogue(cfg).query("split == 'train'")["identity"].nunique()
    assert last["arcface"]["loss.W"].shape == (512, 2 * identities)  # embedding x (identities x sub-centres)
    groups = {group["name"]: group for group in last["optimizer"]["param_groups"]}
    assert groups["arcface"]["initial_lr"] == 1e-2  # the --arcface-lr default, resumed from last.pth

    report = tmp_path / "report"
    argv = [
        "--checkpoint",
        str(run / "best.pth"),
        "--star-root",
        str(tiny_sets["stars"]),
        "--output-dir",
        str(report),
    ]
    assert evaluate.main([*argv, "--workers", "0"]) == 0
    summary = json.loads((report / "star_evaluation_summary.json").read_text())
    assert 0 < summary["mAP"] <= 1


@pytest.mark.slow
def test_cotrain_gives_each_data_sets_identities_their_own_centres(
    tmp_path: Path, tiny_sets: dict[str, Path]
) -> None:
    run = tmp_path / "co"
    roots = ["--star-root", str(tiny_sets["stars"]), "--wildlife-root", str(tiny_sets["wildlife"])]
    cfg = CotrainConfig(
        output_dir=run,
        star_root=tiny_sets["stars"],
        wildlife_root=tiny_sets["wildlife"],
        backbone="test_resnet",
    )
    stars = star_catalogue(cfg).query("split == 'train'")["identity"].nunique()
    wildlife = wildlife_catalogue(cfg).query("split == 'train'")["identity"].nunique()
    task = cotrain_task(cfg)
    assert task.num_classes == stars + wildlife
    labels = [task.dataset[i][1] for i in range(len(task.dataset))]
    kinds = ["stars" if "wildlife" not in path else "wildlife" for path in task.paths]
    assert {label for label, kind in zip(labels, kinds, strict=True) if kind == "stars"} == set(range(stars))
    assert {label for label, kind in zip(labels, kinds, strict=True) if kind == "wildlife"} == set(
        range(stars, stars + wildlife)
    )

    argv = ["--output-dir", str(run), *roots, "--star-batch-ratio", "0.5", "--epochs", "1", *TINY, *ON]
    assert cotrain.main(argv) == 0
    assert load_checkpoint(run / "last.pth")["arcface"]["loss.W"].shape == (512, 2 * (stars + wildlife))
    history = pd.read_csv(run / "history.csv")
    assert history["arcface_loss"].iloc[1:].notna().all() and history["val_star_mAP"].notna().all()
    assert (run / "star_evaluation_summary.json").is_file()


def _step_on_each_rank(fabric: Fabric) -> dict[str, float]:
    """One ArcFace-only step per rank on the rank's own batch; how far the ranks' centres and weights lie
    apart afterwards, and how far the centres moved (small numbers: a spawned process's large result
    would block its pipe)."""
    cfg = tiny_config(circle_weight=0.0, triplet_weight=0.0, arcface_weight=1.0, accelerator="cpu", devices=2)
    torch.manual_seed(0)
    trainer = Trainer(fabric, build_model("test_resnet", 16), cfg, 4, 6)
    assert trainer.arcface is not None
    before = trainer.arcface.centres.detach().clone()
    assert trainer.step(*batch(seed=fabric.global_rank, classes=6)) is not None
    centres = fabric.all_gather(trainer.arcface.centres.detach())
    weights = fabric.all_gather(torch.cat([p.detach().flatten() for p in trainer.module.parameters()]))
    return {
        "centres_apart": float((centres[0] - centres[1]).abs().max()),
        "weights_apart": float((weights[0] - weights[1]).abs().max()),
        "centres_moved": float((centres[0] - before).abs().max()),
        "centre_columns": float(centres.shape[-1]),
    }


@pytest.mark.slow
def test_arcface_centres_stay_identical_across_two_ddp_processes() -> None:
    result = Fabric(accelerator="cpu", devices=2, strategy="ddp_spawn").launch(_step_on_each_rank)
    assert result["centre_columns"] == 6 * 3
    # each rank had its own labels: the centres agree only when their gradients are averaged (apart by
    # about 2e-3 here without it)
    assert result["centres_apart"] < 1e-7 and result["weights_apart"] < 1e-7
    assert result["centres_moved"] > 0
