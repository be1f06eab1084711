"""Training configs as dataclasses, with the YAML file and the command line generated from their fields.

Each field carries its help text (and, where it matters, its choices) in ``dataclasses.field`` metadata, so
adding an option is one line here: the parser, ``--config FILE.yaml`` and the saved ``config.yaml`` follow.
Precedence: dataclass default < YAML file < command-line flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from megastarid.core.errors import UserError

C = TypeVar("C", bound="TrainConfig")

PRECISIONS = ("auto", "32", "bf16", "fp16")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")


def doc(help: str, choices: Sequence[str] | None = None) -> dict[str, Any]:
    """Field metadata: the command-line help (and choices) of an option."""
    return {"help": help, "choices": choices}


@dataclass
class TrainConfig:
    """Options shared by every training strategy; the subclasses set the strategy's defaults."""

    output_dir: Path = field(
        default=Path("checkpoints/megastarid/run"), metadata=doc("run folder (checkpoints, history, reports)")
    )
    backbone: str | None = field(
        default="convnext_tiny",
        metadata=doc("timm model name, e.g. convnext_tiny, resnet50, hf-hub:BVRA/MegaDescriptor-T-224"),
    )
    pretrained: bool = field(
        default=False, metadata=doc("start from the backbone's published weights (downloads them once)")
    )
    backbone_weights: Path | None = field(
        default=None, metadata=doc("local weights file for the backbone (works offline)")
    )
    embedding_dim: int = field(default=512, metadata=doc("size of the L2-normalised embedding"))
    image_size: int = field(default=384, metadata=doc("square training and evaluation image size in pixels"))
    epochs: int = field(default=50, metadata=doc("number of training epochs"))
    batch_size: int = field(
        default=32, metadata=doc("images per batch on each device (P identities x K images)")
    )
    num_instances: int = field(default=4, metadata=doc("K: images per identity in a batch"))
    lr: float = field(default=1e-4, metadata=doc("peak learning rate of the embedding head (AdamW)"))
    backbone_lr_mult: float = field(default=1.0, metadata=doc("backbone learning rate = lr x this"))
    weight_decay: float = field(default=1e-4, metadata=doc("AdamW weight decay"))
    warmup_epochs: int = field(
        default=3, metadata=doc("epochs of linear learning-rate warm-up before the cosine decay")
    )
    circle_weight: float = field(default=0.7, metadata=doc("weight of the circle loss (0 = off)"))
    triplet_weight: float = field(
        default=0.3, metadata=doc("weight of the batch-hard cosine triplet loss (0 = off)")
    )
    circle_m: float = field(default=0.25, metadata=doc("circle loss relaxation margin m"))
    circle_gamma: float = field(default=64.0, metadata=doc("circle loss scale gamma"))
    triplet_margin: float = field(default=0.3, metadata=doc("triplet loss margin on cosine similarity"))
    eval_every: int = field(
        default=1, metadata=doc("evaluate every N epochs (and always before the first and after the last)")
    )
    patience: int = field(
        default=0, metadata=doc("stop when the best metric has not improved for N epochs (0 = never)")
    )
    seed: int = field(default=0, metadata=doc("random seed (sampling, augmentation, initialisation)"))
    precision: str = field(
        default="auto", metadata=doc("autocast on GPU: auto = bf16 where supported, else fp32", PRECISIONS)
    )
    gpus: str | None = field(
        default=None, metadata=doc("comma-separated CUDA device ids, e.g. 0,1 (several = DDP)")
    )
    accelerator: str = field(
        default="auto", metadata=doc("device type when --gpus is not given", ACCELERATORS)
    )
    devices: int = field(
        default=1, metadata=doc("processes on that accelerator (e.g. --accelerator cpu --devices 2)")
    )
    workers: int = field(default=4, metadata=doc("data-loading worker processes per device"))
    eval_batch_size: int = field(default=64, metadata=doc("batch size when embedding images for evaluation"))
    max_bad_steps: int = field(
        default=20, metadata=doc("stop after this many steps in a row with a NaN/inf loss")
    )
    resume: bool = field(default=False, metadata=doc("continue the run in --output-dir from its last.pth"))
    overwrite: bool = field(default=False, metadata=doc("replace the run already in --output-dir"))

    def validate(self) -> None:
        """Raise a one-line ``UserError`` for a value that cannot work, before any work starts."""
        positive = (
            "epochs",
            "batch_size",
            "embedding_dim",
            "image_size",
            "eval_every",
            "devices",
            "eval_batch_size",
            "max_bad_steps",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"{_flag(name)} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_epochs", "patience", "workers", "weight_decay", "circle_m", "triplet_margin"):
            if getattr(self, name) < 0:
                raise UserError(f"{_flag(name)} must not be negative, got {getattr(self, name)}")
        for name in ("lr", "backbone_lr_mult", "circle_gamma"):
            if not getattr(self, name) > 0:
                raise UserError(f"{_flag(name)} must be positive, got {getattr(self, name)}")
        if self.circle_weight < 0 or self.triplet_weight < 0:
            raise UserError("--circle-weight and --triplet-weight must not be negative")
        if self.circle_weight == 0 and self.triplet_weight == 0:
            raise UserError("--circle-weight and --triplet-weight are both 0: at least one loss must be on")
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
        if self.resume and self.overwrite:
            raise UserError("--resume and --overwrite contradict each other: pick one")
        if self.gpus is not None:
            parse_gpus(self.gpus)
        for name in ("backbone_weights", *self.input_paths()):
            path = getattr(self, name)
            if path is not None and not Path(path).exists():
                raise UserError(f"{_flag(name)}: {path} does not exist")

    def input_paths(self) -> tuple[str, ...]:
        """Names of the fields holding input files or folders that must exist."""
        return ()

    def to_dict(self) -> dict[str, Any]:
        """The config as plain YAML/JSON/checkpoint-safe types (paths become strings)."""
        return {
            key: str(value) if isinstance(value, Path) else value
            for key, value in dataclasses.asdict(self).items()
        }


@dataclass
class WildlifeOptions:
    """Where WildlifeReID-10k is and which part of it to use: shared by pre-training and co-training.

    A mixin: list it before the ``TrainConfig`` base so its options follow the common ones.
    """

    wildlife_root: Path | None = field(
        default=None, metadata=doc("WildlifeReID-10k root (metadata.csv); default: built-in synthetic set")
    )
    wildlife_datasets: str | None = field(
        default=None, metadata=doc("comma-separated source datasets to keep (default: all)")
    )
    wildlife_species: str | None = field(
        default=None, metadata=doc("comma-separated species to keep (default: all)")
    )

    def input_paths(self) -> tuple[str, ...]:
        return (*super().input_paths(), "wildlife_root")  # type: ignore[misc]


@dataclass
class PretrainConfig(WildlifeOptions, TrainConfig):
    """Pre-training on WildlifeReID-10k; the best checkpoint is chosen by its validation mAP."""

    output_dir: Path = field(
        default=Path("checkpoints/megastarid/pretrain"),
        metadata=doc("run folder (checkpoints, history, reports)"),
    )


@dataclass
class FinetuneConfig(TrainConfig):
    """Fine-tuning on star_dataset from a checkpoint, or the star-only baseline without one."""

    output_dir: Path = field(
        default=Path("checkpoints/megastarid/finetune"),
        metadata=doc("run folder (checkpoints, history, reports)"),
    )
    backbone: str | None = field(
        default=None, metadata=doc("timm model name; default: the --checkpoint's, else convnext_tiny")
    )
    checkpoint: Path | None = field(
        default=None, metadata=doc("start from this checkpoint's weights (e.g. pretrain/best.pth)")
    )
    star_root: Path | None = field(
        default=None, metadata=doc("star_dataset root; default: built-in synthetic stars")
    )
    star_csv: Path | None = field(
        default=None, metadata=doc("metadata CSV for --star-root (identity, path, ...)")
    )
    epochs: int = field(default=100, metadata=doc("number of training epochs"))
    lr: float = field(default=5e-5, metadata=doc("peak learning rate of the embedding head (AdamW)"))
    backbone_lr_mult: float = field(default=0.1, metadata=doc("backbone learning rate = lr x this"))

    def input_paths(self) -> tuple[str, ...]:
        return ("checkpoint", "star_root", "star_csv")


@dataclass
class CotrainConfig(WildlifeOptions, FinetuneConfig):
    """Co-training on stars and wildlife with mixed batches."""

    output_dir: Path = field(
        default=Path("checkpoints/megastarid/cotrain"),
        metadata=doc("run folder (checkpoints, history, reports)"),
    )
    star_batch_ratio: float = field(
        default=0.3, metadata=doc("fraction of each batch drawn from star_dataset")
    )
    lr: float = field(default=1e-4, metadata=doc("peak learning rate of the embedding head (AdamW)"))
    backbone_lr_mult: float = field(default=1.0, metadata=doc("backbone learning rate = lr x this"))

    def validate(self) -> None:
        super().validate()
        if not 0 < self.star_batch_ratio < 1:
            raise UserError(
                f"--star-batch-ratio must be between 0 and 1 (exclusive), got {self.star_batch_ratio}"
            )


def parse_gpus(text: str) -> list[int]:
    """``"0,1"`` -> ``[0, 1]``, with a one-line error for anything else."""
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--gpus must be comma-separated device ids such as 0,1, got {text!r}") from None
    if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
        raise UserError(f"--gpus must be distinct non-negative device ids such as 0,1, got {text!r}")
    return ids


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as a ``UserError`` (one line) instead of usage + exit."""

    def error(self, message: str) -> typing.NoReturn:
        raise UserError(message)


def _base_type(annotation: Any) -> type:
    """``Path | None`` -> ``Path``; plain types pass through."""
    if isinstance(annotation, types.UnionType):
        return next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    return annotation


def build_parser(cls: type[TrainConfig], prog: str, description: str) -> argparse.ArgumentParser:
    """One flag per dataclass field (``--name-with-dashes``), plus ``--config FILE.yaml``.

    Defaults are suppressed so the parsed namespace holds only what the user typed; that is what lets
    flags override the YAML file.
    """
    parser = _Parser(prog=prog, description=description, argument_default=argparse.SUPPRESS)
    parser.add_argument(
        "--config", type=Path, metavar="FILE.yaml", help="read options from a YAML file first"
    )
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = _base_type(hints[f.name])
        help_ = f"{f.metadata['help']} (default: {f.default})"
        if kind is bool:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, help=help_)
        else:
            parser.add_argument(
                _flag(f.name), type=kind, choices=f.metadata["choices"], help=help_, metavar=f.name.upper()
            )
    return parser


def _from_yaml(cls: type[TrainConfig], path: Path) -> dict[str, Any]:
    """Read a YAML mapping of option names (dashes or underscores), each value converted to its type."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UserError(f"--config {path}: cannot read it ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise UserError(f"--config {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"--config {path}: expected a mapping of option: value")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            raise UserError(f"--config {path}: unknown option {key!r}")
        values[name] = _convert(hints[name], fields[name], value, f"--config {path}: {key}")
    return values


def _convert(annotation: Any, f: dataclasses.Field, value: Any, where: str) -> Any:
    if value is None:
        if type(None) in typing.get_args(annotation):
            return None
        raise UserError(f"{where}: a value is required")
    kind = _base_type(annotation)
    ok = (
        (kind is bool and isinstance(value, bool))
        or (kind is int and isinstance(value, int) and not isinstance(value, bool))
        or (kind is float and isinstance(value, int | float) and not isinstance(value, bool))
        or (kind in (str, Path) and isinstance(value, str | int | float) and not isinstance(value, bool))
    )
    if not ok:
        raise UserError(f"{where}: expected {kind.__name__}, got {value!r}")
    converted = kind(value)
    choices = f.metadata["choices"]
    if choices and converted not in choices:
        raise UserError(f"{where}: must be one of {', '.join(choices)}, got {value!r}")
    return converted


def parse_config(cls: type[C], argv: Sequence[str] | None, prog: str, description: str) -> C:
    """Build and validate a config from ``--config FILE.yaml`` and the command line (flags win)."""
    args = vars(build_parser(cls, prog, description).parse_args(argv))
    config_file = args.pop("config", None)
    if config_file is None and args.get("resume"):
        # `--output-dir DIR --resume` alone continues the run with the options it was started with.
        saved = Path(args.get("output_dir", _default(cls, "output_dir"))) / "config.yaml"
        config_file = saved if saved.is_file() else None
    values = _from_yaml(cls, config_file) if config_file is not None else {}
    values.update(args)
    cfg = cls(**values)
    cfg.validate()
    return cfg


def _default(cls: type[TrainConfig], name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def save_config(cfg: TrainConfig, path: Path) -> None:
    """Write the resolved config as YAML that ``--config`` reads back."""
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
