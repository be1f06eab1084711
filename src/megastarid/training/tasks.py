"""What a training command hands the loop (``TrainTask``), and the pieces the three commands build it from:
their data, their model and how each is judged.

Each command (pretrain, finetune, cotrain) assembles a ``TrainTask`` from these; the loop never
knows which data set it is looking at.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from megastarid.core.errors import UserError
from megastarid.core.runfiles import BEST_CHECKPOINT
from megastarid.data.catalogue import identity_codes
from megastarid.data.datasets import ImageDataset
from megastarid.data.samplers import PKBatchSampler
from megastarid.data.sources import load_star_catalogue, load_wildlife_catalogue
from megastarid.data.splits import carve_wildlife_validation
from megastarid.data.synth import ensure_synthetic
from megastarid.data.transforms import build_star_train_transform, build_wildlife_train_transform
from megastarid.evaluation.embed import resolve_tta
from megastarid.evaluation.star import VALIDATION_SIDES, evaluate_star, split_sides
from megastarid.evaluation.wildlife import evaluate_wildlife
from megastarid.models.checkpoints import checkpoint_head, load_checkpoint, model_from_checkpoint
from megastarid.models.network import DEFAULT_BACKBONE, EmbeddingModel, build_model
from megastarid.training.config import FinetuneConfig, TrainConfig, WildlifeOptions

log = logging.getLogger(__name__)

C = TypeVar("C", bound=FinetuneConfig)


@dataclasses.dataclass
class TrainTask:
    """What one strategy trains on and how it is judged; each command builds one from its config."""

    name: str  # the command, for messages: "finetune"
    dataset: Dataset  # item i -> (image tensor | None for a bad file, label, i)
    paths: Sequence[str]  # dataset index -> file, for bad_images.txt
    make_sampler: Callable[[int, int], Any]  # (rank, world_size) -> batch sampler with set_epoch()
    build_model: Callable[[], EmbeddingModel]
    evaluate: Callable[[nn.Module, torch.device], dict[str, float]]  # metrics of the model as it is now
    metric: str | None  # the validation key of evaluate()'s result that chooses best.pth, e.g.
    # "val_star_mAP"; None when there is no validation side: best.pth is then the last epoch
    final_report: Callable[[nn.Module, torch.device, Path], dict[str, Any]] | None = (
        None  # best model -> files
    )
    num_classes: int = 0  # training identities: labels are 0 .. num_classes - 1 (ArcFace's centres)


@dataclasses.dataclass
class TrainSet:
    """Training images with integer labels, ready for a dataset and a P x K sampler."""

    paths: list[str]
    labels: np.ndarray
    dataset: ImageDataset

    @property
    def num_classes(self) -> int:
        """Labels this set's classification heads must cover: ``0 .. max label`` (an offset set's own
        identities are the top ones)."""
        return int(self.labels.max()) + 1


def star_catalogue(cfg: FinetuneConfig) -> pd.DataFrame:
    """The split catalogue of ``--star-root`` (and ``--star-csv``), else of the built-in synthetic stars."""
    root = Path(cfg.star_root) if cfg.star_root is not None else ensure_synthetic("stars")
    if cfg.star_root is None and cfg.star_csv is not None:
        raise UserError("--star-csv needs --star-root (the folder its paths are relative to)")
    return load_star_catalogue(root, cfg.star_csv, cfg.split_plan())


def wildlife_catalogue(cfg: WildlifeOptions, val_fraction: float = 0.0) -> pd.DataFrame:
    """WildlifeReID-10k at ``--wildlife-root`` (filtered), else the built-in synthetic wildlife set, with a
    validation slice of ``val_fraction`` carved from its official train split (pre-training chooses by
    it; co-training is judged on stars and trains on the whole train split)."""
    root = Path(cfg.wildlife_root) if cfg.wildlife_root is not None else ensure_synthetic("wildlife")
    catalogue = load_wildlife_catalogue(
        root, datasets=cfg.wildlife_datasets or None, species=cfg.wildlife_species or None
    )
    return carve_wildlife_validation(catalogue, val_fraction)


def train_set(
    catalogue: pd.DataFrame, transform: Callable, image_size: int, k: int, what: str, label_offset: int = 0
) -> TrainSet:
    """The ``split == "train"`` rows (star gallery side, wildlife official train) as a dataset.

    Labels are ``label_offset + 0..N-1`` (an offset keeps two sets' identities apart when co-training).
    Checks that ``--num-instances`` K is reachable before any work starts.
    """
    rows = catalogue[catalogue["split"] == "train"]
    if rows.empty:
        raise UserError(f"{what}: no training images (rows with split == 'train')")
    labels, _ = identity_codes(rows["identity"])
    counts = np.bincount(labels)
    if counts.max() < k:
        raise UserError(
            f"--num-instances {k}: no identity in {what} has {k} training images "
            f"(the most is {counts.max()}); lower --num-instances"
        )
    paths, labels = rows["path"].tolist(), labels + label_offset
    return TrainSet(paths, labels, ImageDataset(paths, labels.tolist(), transform, image_size))


def star_train_set(catalogue: pd.DataFrame, cfg: TrainConfig) -> TrainSet:
    transform = build_star_train_transform(cfg.image_size)
    return train_set(catalogue, transform, cfg.image_size, cfg.num_instances, "star_dataset")


def wildlife_train_set(catalogue: pd.DataFrame, cfg: TrainConfig, label_offset: int = 0) -> TrainSet:
    transform = build_wildlife_train_transform(cfg.image_size)
    return train_set(
        catalogue, transform, cfg.image_size, cfg.num_instances, "the wildlife set", label_offset
    )


def pk_sampler_factory(data: TrainSet, cfg: TrainConfig) -> Callable[[int, int], PKBatchSampler]:
    """The trainer's ``make_sampler(rank, world_size)``: P x K batches over one training set."""
    p = cfg.batch_size // cfg.num_instances
    return lambda rank, world: PKBatchSampler(data.labels, p, cfg.num_instances, cfg.seed, rank, world)


def resolve_architecture(cfg: C) -> C:
    """With ``--checkpoint``, the backbone, embedding size and pooling are the checkpoint's (a clash is an
    error), and so must ``--multiscale`` be; without, the defaults."""
    if cfg.checkpoint is None:
        return dataclasses.replace(cfg, backbone=cfg.backbone or DEFAULT_BACKBONE)
    saved = load_checkpoint(cfg.checkpoint)["config"]
    if cfg.backbone is not None and cfg.backbone != saved["backbone"]:
        raise UserError(
            f"--backbone {cfg.backbone} differs from the --checkpoint's {saved['backbone']}: "
            "leave out --backbone"
        )
    saved_head = checkpoint_head(saved)
    asked = (cfg.pooling or saved_head[0], cfg.multiscale)
    if asked != saved_head:
        spell = [
            f"--pooling {pooling}" + (" --multiscale" if multi else "")
            for pooling, multi in (asked, saved_head)
        ]
        raise UserError(f"{spell[0]} differs from the --checkpoint's head: pass {spell[1]}")
    return dataclasses.replace(
        cfg, backbone=saved["backbone"], embedding_dim=int(saved["embedding_dim"]), pooling=saved_head[0]
    )


def model_factory(cfg: TrainConfig) -> Callable[[], EmbeddingModel]:
    """How to make the initial model: from ``--checkpoint``, else the timm backbone (pretrained if asked).

    On ``--resume`` the weights come from last.pth, so nothing is loaded or downloaded here.
    """
    checkpoint = getattr(cfg, "checkpoint", None)
    backbone = cfg.backbone
    assert backbone is not None

    def make() -> EmbeddingModel:
        if cfg.resume:
            return build_model(backbone, cfg.embedding_dim, pooling=cfg.pooling, multiscale=cfg.multiscale)
        if checkpoint is not None:
            log.info("starting from %s", checkpoint)
            return model_from_checkpoint(load_checkpoint(checkpoint), checkpoint)
        return build_model(
            backbone,
            cfg.embedding_dim,
            cfg.pretrained,
            cfg.backbone_weights,
            pooling=cfg.pooling,
            multiscale=cfg.multiscale,
        )

    return make


def _metrics(summary: dict[str, Any], prefix: str) -> dict[str, float]:
    """mAP and CMC@K of an evaluation summary, keys prefixed (``star_mAP``) for the history."""
    return {
        f"{prefix}{key}": float(value)
        for key, value in summary.items()
        if (key == "mAP" or key.startswith("CMC@")) and value is not None
    }


Scorer = Callable[..., dict[str, Any]]


def has_validation(catalogue: pd.DataFrame) -> bool:
    return bool((catalogue["split"] == "val").any())


def validation_metric(catalogue: pd.DataFrame, cfg: TrainConfig, name: str) -> str | None:
    """The history key that chooses best.pth (``val_star_mAP``), or None without a validation side (then
    the last epoch is kept, and early stopping, which needs a choice, is refused)."""
    if has_validation(catalogue):
        return f"val_{name}_mAP"
    if cfg.patience:
        raise UserError(f"--patience needs a validation side, and the {name} set has none (--val-fraction)")
    log.warning("no validation photos in the %s set (--val-fraction): best.pth will be the last epoch", name)
    return None


def side_evaluator(
    score: Scorer, catalogue: pd.DataFrame, cfg: TrainConfig, name: str
) -> Callable[[nn.Module, torch.device], dict]:
    """What the trainer measures at every evaluation, nothing written: validation against the train rows
    (``val_<name>_*``, the figures that choose), and with ``--monitor-test`` the test side against the
    whole gallery (``test_<name>_*``, recorded only)."""
    validate = has_validation(catalogue)

    def evaluate(model: nn.Module, device: torch.device) -> dict[str, float]:
        common = {"batch_size": cfg.eval_batch_size, "num_workers": cfg.workers}
        metrics: dict[str, float] = {}
        if validate:
            metrics |= _metrics(
                score(model, catalogue, cfg.image_size, device, sides=VALIDATION_SIDES, **common),
                f"val_{name}_",
            )
        if cfg.monitor_test:
            metrics |= _metrics(score(model, catalogue, cfg.image_size, device, **common), f"test_{name}_")
        return metrics

    return evaluate


def _score_star(
    model: nn.Module, catalogue: pd.DataFrame, image_size: int, device: torch.device, **kw: Any
) -> dict:
    return evaluate_star(model, catalogue, None, image_size, device, **kw)


def star_evaluator(catalogue: pd.DataFrame, cfg: TrainConfig) -> Callable[[nn.Module, torch.device], dict]:
    """Star retrieval of the temporal or open split's validation side (and test side when monitored)."""
    return side_evaluator(_score_star, catalogue, cfg, "star")


def wildlife_evaluator(
    catalogue: pd.DataFrame, cfg: TrainConfig
) -> Callable[[nn.Module, torch.device], dict]:
    """WildlifeReID-10k retrieval of the validation slice (and the official test split when monitored)."""
    return side_evaluator(evaluate_wildlife, catalogue, cfg, "wildlife")


def wildlife_report(
    catalogue: pd.DataFrame, cfg: TrainConfig
) -> Callable[[nn.Module, torch.device, Path], dict]:
    """The wildlife validation reports (overall and per source dataset) of the best checkpoint."""

    split_sides(catalogue, "the wildlife set")  # a side missing is refused now, not after training

    def report(model: nn.Module, device: torch.device, out_dir: Path) -> dict:
        return evaluate_wildlife(
            model,
            catalogue,
            cfg.image_size,
            device,
            out_dir=out_dir,
            checkpoint=out_dir / BEST_CHECKPOINT,
            options=cfg.to_dict(),
            batch_size=cfg.eval_batch_size,
            num_workers=cfg.workers,
        )

    return report


def star_report(
    catalogue: pd.DataFrame, cfg: FinetuneConfig
) -> Callable[[nn.Module, torch.device, Path], dict]:
    """The star_* report files of DESIGN §2 for the test side, scored once from the chosen checkpoint,
    with calibration.json fitted on validation and the open-set report, all under ``--tta``."""

    split_sides(catalogue, "star_dataset")  # no query (test) side is refused now, not after training

    def report(model: nn.Module, device: torch.device, out_dir: Path) -> dict:
        return evaluate_star(
            model,
            catalogue,
            out_dir,
            cfg.image_size,
            device,
            checkpoint=out_dir / BEST_CHECKPOINT,
            options=cfg.to_dict(),
            tta=resolve_tta(cfg.tta, "star"),
            batch_size=cfg.eval_batch_size,
            num_workers=cfg.workers,
            openset=cfg.openset_settings(),
        )

    return report
