"""Checkpoints of the embedding model: written atomically, read with ``torch.load(weights_only=True)`` so a
checkpoint file can never run code, and checked (config, finite weights) with one-line errors."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from megastarid.core.errors import UserError
from megastarid.core.files import atomic_write
from megastarid.models.network import POOLINGS, EmbeddingModel, Pooling, build_model


def save_checkpoint(path: str | Path, model: nn.Module, config: dict[str, Any], **state: Any) -> None:
    """Write ``{"model", "config", **state}`` atomically (temp file + rename): no half-written file.

    ``config`` must hold plain types (``TrainConfig.to_dict()``); ``state`` may add epoch, optimizer, RNG ...
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {"model": model.state_dict(), "config": config, **state}
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


#: how a checkpoint file starts: ``torch.save``'s zip archive, or the legacy format's pickle (protocol 2 or
#: later); anything else never reaches the unpickler, whose complaints about text read as if it held code
_ZIP_START = b"PK\x03\x04"
_PICKLE_START = b"\x80"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check it: anything wrong with the file, its config
    or its weights (NaN/inf) is a one-line ``UserError`` naming it."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a folder, not a checkpoint file (e.g. {path / 'best.pth'})")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        with path.open("rb") as handle:
            start = handle.read(len(_ZIP_START))
    except OSError as err:
        raise UserError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    if not start:
        raise UserError(f"checkpoint {path} is an empty file (its write was cut short?)")
    if not start.startswith((_ZIP_START, _PICKLE_START)):  # text (a calibration.json), an image ...
        raise UserError(f"checkpoint {path} is not a PyTorch checkpoint file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise UserError(
                f"checkpoint {path} holds code or objects other than tensors and plain values; they are not "
                "loaded, for safety (a checkpoint must never run code)"
            ) from None
        raise UserError(f"checkpoint {path} is not a PyTorch checkpoint file, or a damaged one") from None
    except Exception as err:
        if not zipfile.is_zipfile(path):
            if start == _ZIP_START:  # a zip archive's start, its end missing
                raise UserError(f"checkpoint {path} cannot be read: it is cut short or damaged") from None
            raise UserError(f"checkpoint {path} is not a PyTorch checkpoint file") from None
        reason = str(err).splitlines()[0][:200] if str(err) else "corrupt file"
        raise UserError(f"checkpoint {path} cannot be read ({type(err).__name__}: {reason})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise UserError(f"checkpoint {path} is not a MegaStarID checkpoint (no model/config)")
    _check_config(ckpt["config"], path)
    _check_weights(ckpt["model"], path)
    return ckpt


def _check_config(config: Any, path: Path) -> None:
    """The config entries a checkpoint is rebuilt from: a timm name and positive integer sizes."""
    if not isinstance(config, dict):
        raise UserError(f"checkpoint {path}: its config is a {type(config).__name__}, not a mapping")
    backbone = config.get("backbone")
    if not isinstance(backbone, str) or not backbone:
        raise UserError(
            f"checkpoint {path}: its config's backbone must be a timm model name, got {backbone!r}"
        )
    for key in ("embedding_dim", "image_size"):
        value = config.get(key)
        if key == "image_size" and value is None:
            continue  # evaluate then needs --image-size
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(
                f"checkpoint {path}: its config's {key} must be a positive integer, got {value!r}"
            )
    pooling, multiscale = config.get("pooling", "avg"), config.get("multiscale", False)
    if pooling not in POOLINGS or not isinstance(multiscale, bool):
        raise UserError(
            f"checkpoint {path}: its config's head must be pooling {' or '.join(POOLINGS)} and multiscale "
            f"true or false, got pooling {pooling!r}, multiscale {multiscale!r}"
        )


def checkpoint_head(config: dict[str, Any]) -> tuple[Pooling, bool]:
    """The head a checkpoint's config records: (pooling, multiscale); checkpoints from before these
    options have the backbone's own average pooling on one scale."""
    return config.get("pooling", "avg"), bool(config.get("multiscale", False))


def _check_weights(weights: Any, path: Path) -> None:
    """A mapping of tensors, all finite: a diverged run's NaN weights are refused, not evaluated."""
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise UserError(f"checkpoint {path}: its model entry is not a mapping of weight tensors")
    bad = [name for name, t in weights.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise UserError(
            f"checkpoint {path}: {len(bad)} weight tensor(s) hold NaN/inf values (e.g. {bad[0]}); the run "
            "that saved it diverged, use an earlier checkpoint"
        )


def model_from_checkpoint(ckpt: dict[str, Any], path: str | Path) -> EmbeddingModel:
    """Rebuild the architecture named in a loaded checkpoint's config (backbone and head) and load its
    weights."""
    config = ckpt["config"]
    backbone = config["backbone"]
    if not backbone.startswith("hf-hub:") and not timm.is_model(backbone):
        raise UserError(f"checkpoint {path}: its backbone {backbone!r} is not a timm model name in this timm")
    pooling, multiscale = checkpoint_head(config)
    try:
        model = build_model(backbone, int(config["embedding_dim"]), pooling=pooling, multiscale=multiscale)
    except UserError as err:
        raise UserError(f"checkpoint {path}: cannot build its backbone {backbone!r}: {err}") from None
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise UserError(
            f"checkpoint {path}: weights do not fit {config['backbone']} ({str(err)[:200]})"
        ) from None
    return model


def load_model_from_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[EmbeddingModel, dict]:
    """The evaluation entry point: model in eval mode on ``device``, plus the run's resolved config."""
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path).to(device).eval()
    return model, dict(ckpt["config"])
