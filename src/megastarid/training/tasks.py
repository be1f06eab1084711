"""The pieces the three training commands share: their data, their model and how each is judged.

Each command (pretrain, finetune, cotrain) assembles a ``TrainTask`` from these; the trainer never
knows which data set it is looking at.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from megastarid.core.errors import UserError
from megastarid.core.runfiles import BEST_CHECKPOINT
from megastarid.data.catalogue import identity_codes
from megastarid.data.datasets import ImageDataset
from megastarid.data.samplers import PKBatchSampler
from megastarid.data.sources import load_star_catalogue, load_wildlife_catalogue
from megastarid.data.synth import ensure_synthetic
from megastarid.data.transforms import build_star_train_transform, build_wildlife_train_transform
from megastarid.evaluation.star import evaluate_star
from megastarid.evaluation.wildlife import evaluate_wildlife
from megastarid.training.config import FinetuneConfig, TrainConfig, WildlifeOptions
from megastarid.training.models import (
    DEFAULT_BACKBONE,
    EmbeddingModel,
    build_model,
    load_checkpoint,
    model_from_checkpoint,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainSet:
    """Training images with integer labels, ready for a dataset and a P x K sampler."""

    paths: list[str]
    labels: np.ndarray
    dataset: ImageDataset


def star_catalogue(cfg: FinetuneConfig) -> pd.DataFrame:
    """The split catalogue of ``--star-root`` (and ``--star-csv``), else of the built-in synthetic stars."""
    root = Path(cfg.star_root) if cfg.star_root is not None else ensure_synthetic("stars")
    if cfg.star_root is None and cfg.star_csv is not None:
        raise UserError("--star-csv needs --star-root (the folder its paths are relative to)")
    return load_star_catalogue(root, cfg.star_csv)


def wildlife_catalogue(cfg: WildlifeOptions) -> pd.DataFrame:
    """WildlifeReID-10k at ``--wildlife-root`` (filtered), else the built-in synthetic wildlife set."""
    root = Path(cfg.wildlife_root) if cfg.wildlife_root is not None else ensure_synthetic("wildlife")
    return load_wildlife_catalogue(
        root, datasets=cfg.wildlife_datasets or None, species=cfg.wildlife_species or None
    )


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


def resolve_architecture(cfg: FinetuneConfig) -> FinetuneConfig:
    """With ``--checkpoint``, the backbone and embedding size are the checkpoint's (a clash is an error)."""
    if cfg.checkpoint is None:
        return dataclasses.replace(cfg, backbone=cfg.backbone or DEFAULT_BACKBONE)
    saved = load_checkpoint(cfg.checkpoint)["config"]
    if cfg.backbone is not None and cfg.backbone != saved["backbone"]:
        raise UserError(
            f"--backbone {cfg.backbone} differs from the --checkpoint's {saved['backbone']}: "
            "leave out --backbone"
        )
    return dataclasses.replace(cfg, backbone=saved["backbone"], embedding_dim=int(saved["embedding_dim"]))


def model_factory(cfg: TrainConfig) -> Callable[[], EmbeddingModel]:
    """How to make the initial model: from ``--checkpoint``, else the timm backbone (pretrained if asked).

    On ``--resume`` the weights come from last.pth, so nothing is loaded or downloaded here.
    """
    checkpoint = getattr(cfg, "checkpoint", None)
    assert cfg.backbone is not None

    def make() -> EmbeddingModel:
        if cfg.resume:
            return build_model(cfg.backbone, cfg.embedding_dim)
        if checkpoint is not None:
            log.info("starting from %s", checkpoint)
            return model_from_checkpoint(load_checkpoint(checkpoint), checkpoint)
        return build_model(cfg.backbone, cfg.embedding_dim, cfg.pretrained, cfg.backbone_weights)

    return make


def _metrics(summary: dict[str, Any], prefix: str) -> dict[str, float]:
    """mAP and CMC@K of an evaluation summary, keys prefixed (``star_mAP``) for the history."""
    return {
        f"{prefix}{key}": float(value)
        for key, value in summary.items()
        if (key == "mAP" or key.startswith("CMC@")) and value is not None
    }


def star_evaluator(catalogue: pd.DataFrame, cfg: TrainConfig) -> Callable[[nn.Module, torch.device], dict]:
    """Star retrieval on the temporal split (queries vs gallery), nothing written."""

    def evaluate(model: nn.Module, device: torch.device) -> dict[str, float]:
        summary = evaluate_star(
            model,
            catalogue,
            None,
            cfg.image_size,
            device,
            batch_size=cfg.eval_batch_size,
            num_workers=cfg.workers,
        )
        return _metrics(summary, "star_")

    return evaluate


def wildlife_evaluator(
    catalogue: pd.DataFrame, cfg: TrainConfig
) -> Callable[[nn.Module, torch.device], dict]:
    """WildlifeReID-10k validation (official test split vs train split), nothing written."""

    def evaluate(model: nn.Module, device: torch.device) -> dict[str, float]:
        summary = evaluate_wildlife(
            model, catalogue, cfg.image_size, device, batch_size=cfg.eval_batch_size, num_workers=cfg.workers
        )
        return _metrics(summary, "wildlife_")

    return evaluate


def wildlife_report(
    catalogue: pd.DataFrame, cfg: TrainConfig
) -> Callable[[nn.Module, torch.device, Path], dict]:
    """The wildlife validation reports (overall and per source dataset) of the best checkpoint."""

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


def star_report(catalogue: pd.DataFrame, cfg: TrainConfig) -> Callable[[nn.Module, torch.device, Path], dict]:
    """The star_* report files of DESIGN §2, written into the run folder from the best checkpoint."""

    def report(model: nn.Module, device: torch.device, out_dir: Path) -> dict:
        return evaluate_star(
            model,
            catalogue,
            out_dir,
            cfg.image_size,
            device,
            checkpoint=out_dir / BEST_CHECKPOINT,
            options=cfg.to_dict(),
            batch_size=cfg.eval_batch_size,
            num_workers=cfg.workers,
        )

    return report
