"""Training options as dataclasses: one field per flag, its help in the docstring under it.

``parse_train_config`` reads them with ``megastarid.core.parsing.parse_options`` (tyro; precedence:
dataclass default < ``--config FILE.yaml`` < flag); ``__post_init__`` refuses values that cannot work
with one line naming the option, before any work starts; ``save_config`` writes the ``config.yaml`` that
``--config`` and ``--resume`` read back.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import tyro
import yaml

from megastarid.core.errors import UserError, quoted
from megastarid.core.files import atomic_write_text
from megastarid.core.options import (
    GpuIdsOrNone,
    Options,
    Seed,
    flag,
    recorded,
    run_control,
)
from megastarid.core.parsing import option_value, parse_options, switch_value
from megastarid.data.options import SplitOptions, StarDataOptions, ValidationOptions, WildlifeOptions
from megastarid.evaluation.options import CalibrationOptions, TTAOptions
from megastarid.models.network import DEFAULT_BACKBONE, DEFAULT_POOLING, POOLINGS, Pooling

__all__ = [
    "CotrainConfig",
    "FinetuneConfig",
    "PretrainConfig",
    "StarDataOptions",
    "TrainConfig",
    "WildlifeOptions",
    "parse_train_config",
    "save_config",
]

C = TypeVar("C", bound="TrainConfig")

#: fields naming input files or folders, checked to exist in this order (where the config has them)
INPUT_PATHS = ("backbone_weights", "checkpoint", "star_root", "star_csv", "wildlife_root")


@dataclass
class TrainConfig(Options):
    """Options shared by every training strategy; the subclasses set the strategy's defaults."""

    output_dir: Path = Path("checkpoints/megastarid/run")
    """run folder (checkpoints, history, reports)"""
    backbone: str | None = DEFAULT_BACKBONE
    """timm model name, e.g. convnext_tiny, resnet50, hf-hub:BVRA/MegaDescriptor-T-224"""
    pretrained: bool = False
    """start from the backbone's published weights (downloads them once)"""
    backbone_weights: Path | None = None
    """local weights file for the backbone (works offline)"""
    embedding_dim: int = 512
    """size of the L2-normalised embedding"""
    pooling: Pooling = DEFAULT_POOLING
    """head pooling: gem (generalized mean with a learnable exponent, over the last stage's feature map) or
    avg (the backbone's own, the head of earlier versions)"""
    multiscale: bool = False
    """fuse the last three backbone stages (each pooled and projected to the embedding size, summed) before
    the BNNeck"""
    image_size: int = 384
    """square training and evaluation image size in pixels"""
    epochs: int = 50
    """number of training epochs"""
    batch_size: int = 32
    """images per batch on each device (P identities x K images)"""
    num_instances: int = 4
    """K: images per identity in a batch"""
    lr: float = 1e-4
    """peak learning rate of the embedding head (AdamW)"""
    backbone_lr_mult: float = 1.0
    """backbone learning rate = lr x this"""
    weight_decay: float = 1e-4
    """AdamW weight decay"""
    warmup_epochs: int = 3
    """epochs of linear learning-rate warm-up before the cosine decay"""
    circle_weight: float = 0.7
    """weight of the circle loss (0 = off)"""
    triplet_weight: float = 0.3
    """weight of the batch-hard cosine triplet loss (0 = off)"""
    circle_m: float = 0.25
    """circle loss relaxation margin m"""
    circle_gamma: float = 64.0
    """circle loss scale gamma"""
    triplet_margin: float = 0.3
    """triplet loss margin on cosine similarity"""
    arcface_weight: float = 0.0
    """weight of the sub-center ArcFace loss (0 = off): learned centres for each training identity"""
    arcface_lr: float = 1e-2
    """peak learning rate of the ArcFace class centres (random at the start, they must turn far and fast)"""
    arcface_subcenters: int = 3
    """ArcFace centres per identity (sub-centers absorb odd photos of an animal)"""
    arcface_margin: float = 28.6
    """ArcFace additive angular margin in degrees"""
    arcface_scale: float = 64.0
    """ArcFace logit scale"""
    ema: float = 0.0
    """keep an exponential moving average of the weights with this decay, e.g. 0.999 (0 = off); validation,
    best.pth and the final report use the averaged weights"""
    eval_every: int = 1
    """evaluate every N epochs (and always before the first and after the last)"""
    patience: int = 0
    """stop when the best metric has not improved for N epochs (0 = never)"""
    seed: Seed = 0
    """random seed (sampling, augmentation, initialisation), 0 to 2**32-1"""
    precision: Literal["auto", "32", "bf16", "fp16"] = "auto"
    """autocast on GPU: auto = bf16 where supported, else fp32"""
    gpus: GpuIdsOrNone = None
    """comma-separated CUDA device ids, e.g. 0,1 (several = DDP)"""
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto"
    """device type when --gpus is not given"""
    devices: int = 1
    """processes on that accelerator (e.g. --accelerator cpu --devices 2)"""
    num_nodes: int = 1
    """machines of a multi-node run, each running --devices processes (one srun task per process)"""
    workers: int = 4
    """data-loading worker processes per device"""
    eval_batch_size: int = 64
    """batch size when embedding images for evaluation"""
    max_bad_steps: int = 20
    """stop after this many steps in a row with a NaN/inf loss"""
    monitor_test: bool = False
    """also score the test side at every evaluation, as test_* curves in history.csv and the plots; they
    are never used for any choice (best.pth, early stopping and the calibration come from validation)"""
    resume: bool = run_control()
    """continue the run in --output-dir from its last.pth (alone, with the options it was started with);
    command line only, never saved in config.yaml"""
    overwrite: bool = run_control()
    """replace the run already in --output-dir; command line only, never saved in config.yaml"""

    def __post_init__(self) -> None:
        """Raise a one-line ``UserError`` for a value that cannot work, before any work starts."""
        super().__post_init__()
        positive = (
            "epochs",
            "batch_size",
            "embedding_dim",
            "image_size",
            "eval_every",
            "devices",
            "num_nodes",
            "eval_batch_size",
            "max_bad_steps",
            "arcface_subcenters",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"{flag(name)} must be at least 1, got {getattr(self, name)}")
        for name in (
            "warmup_epochs",
            "patience",
            "workers",
            "weight_decay",
            "circle_m",
            "triplet_margin",
            "arcface_margin",
        ):
            if getattr(self, name) < 0:
                raise UserError(f"{flag(name)} must not be negative, got {getattr(self, name)}")
        for name in ("lr", "backbone_lr_mult", "circle_gamma", "arcface_lr", "arcface_scale"):
            if not getattr(self, name) > 0:
                raise UserError(f"{flag(name)} must be positive, got {getattr(self, name)}")
        if min(self.circle_weight, self.triplet_weight, self.arcface_weight) < 0:
            raise UserError("--circle-weight, --triplet-weight and --arcface-weight must not be negative")
        if self.circle_weight == self.triplet_weight == self.arcface_weight == 0:
            raise UserError(
                "--circle-weight and --triplet-weight are both 0, and so is --arcface-weight: "
                "at least one loss must be on"
            )
        if not 0 <= self.ema < 1:
            raise UserError(f"--ema must be a decay in [0, 1) (0 = off), got {self.ema}")
        if self.num_instances < 2:
            raise UserError(
                f"--num-instances must be at least 2 (positives are needed), got {self.num_instances}"
            )
        if self.batch_size % self.num_instances or self.batch_size < 2 * self.num_instances:
            raise UserError(
                f"--batch-size {self.batch_size} must be a multiple of --num-instances {self.num_instances} "
                "holding at least 2 identities"
            )
        if self.image_size < 32:
            raise UserError(f"--image-size must be at least 32, got {self.image_size}")
        pooling_ok = self.pooling in POOLINGS or (self.pooling is None and self.pooling_from_checkpoint())
        if not pooling_ok or not isinstance(self.multiscale, bool):
            raise UserError(
                f"--pooling must be {' or '.join(POOLINGS)} and --multiscale a switch, got "
                f"{quoted(str(self.pooling))} and {quoted(str(self.multiscale))}"
            )
        if self.resume and self.overwrite:
            raise UserError("--resume and --overwrite contradict each other: pick one")
        gpus = self.gpus
        if gpus is not None and (not gpus or min(gpus) < 0 or len(set(gpus)) < len(gpus)):
            listed = ",".join(map(str, gpus))
            raise UserError(
                f"--gpus must be distinct non-negative device ids such as 0,1, got {quoted(listed)}"
            )
        for name in INPUT_PATHS:
            path = getattr(self, name, None)
            if path is not None and not Path(path).exists():
                raise UserError(f"{flag(name)}: {path} does not exist")

    def pooling_from_checkpoint(self) -> bool:
        """Whether ``pooling`` may be None: the --checkpoint's, resolved before training starts."""
        return False

    def to_dict(self) -> dict[str, Any]:
        """The run's recorded options (config.yaml, the checkpoint's config, the report summaries) as plain
        YAML/JSON/checkpoint-safe types: paths as strings, comma lists as the flag spells them (``0,1``).
        The run-control switches (--resume, --overwrite) steer one invocation and are left out, so reading
        config.yaml back never replays them."""
        return {key: _plain(value) for key, value in recorded(self).items()}


@dataclass
class PretrainConfig(WildlifeOptions, ValidationOptions, TrainConfig):
    """Pre-training on WildlifeReID-10k; the best checkpoint is chosen by its validation mAP."""

    output_dir: Path = Path("checkpoints/megastarid/pretrain")


@dataclass
class FinetuneConfig(StarDataOptions, SplitOptions, CalibrationOptions, TTAOptions, TrainConfig):
    """Fine-tuning on star_dataset from a checkpoint, or the star-only baseline without one. ``--tta`` is
    the final report's and its calibration's (per-epoch validation embeds each photo once)."""

    output_dir: Path = Path("checkpoints/megastarid/finetune")
    backbone: Annotated[
        str | None, tyro.conf.arg(help=f"timm model name; None: the --checkpoint's, else {DEFAULT_BACKBONE}")
    ] = None
    # widens TrainConfig's Pooling: None until resolve_architecture takes the --checkpoint's pooling
    pooling: Annotated[
        Pooling | None,
        tyro.conf.arg(help=f"head pooling, avg or gem; None: the --checkpoint's, else {DEFAULT_POOLING}"),
    ] = None  # type: ignore[assignment]
    epochs: int = 100
    lr: float = 5e-5
    backbone_lr_mult: float = 0.1
    checkpoint: Path | None = None
    """start from this checkpoint's weights (e.g. pretrain/best.pth)"""

    def pooling_from_checkpoint(self) -> bool:
        return True

    def __post_init__(self) -> None:
        if self.pooling is None and self.checkpoint is None:
            self.pooling = DEFAULT_POOLING  # with a --checkpoint, run_finetune/run_cotrain take its pooling
        super().__post_init__()


@dataclass
class CotrainConfig(WildlifeOptions, FinetuneConfig):
    """Co-training on stars and wildlife with mixed batches."""

    output_dir: Path = Path("checkpoints/megastarid/cotrain")
    lr: float = 1e-4
    backbone_lr_mult: float = 1.0
    star_batch_ratio: float = 0.3
    """fraction of each batch drawn from star_dataset"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.star_batch_ratio < 1:
            raise UserError(
                f"--star-batch-ratio must be between 0 and 1 (exclusive), got {self.star_batch_ratio}"
            )


def parse_train_config(cls: type[C], argv: Sequence[str] | None, prog: str, description: str) -> C:
    """A training command's options; ``--output-dir DIR --resume`` without ``--config`` continues the run
    with the options it was started with (its saved ``config.yaml`` is the base the flags override)."""
    args = list(sys.argv[1:] if argv is None else argv)
    base = None
    if option_value(args, "--config") is None and switch_value(args, "--resume"):
        output_dir = option_value(args, "--output-dir") or _default(cls, "output_dir")
        saved = Path(output_dir) / "config.yaml"
        base = saved if saved.is_file() else None
    return parse_options(cls, args, prog, description, config=base)


def save_config(cfg: TrainConfig, path: Path) -> None:
    """Write the resolved config as YAML that ``--config`` reads back (atomically: a crash never leaves
    half a config.yaml for ``--resume`` to read)."""
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return value


def _default(cls: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)
