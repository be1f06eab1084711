"""The embedding model (timm backbone + BNNeck head) and its checkpoints.

Checkpoints hold only tensors and plain Python types so that they load with ``torch.load(weights_only=True)``:
a checkpoint file can never run code.
"""

from __future__ import annotations

import logging
import pickle
import socket
import zipfile
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from megastarid.core.errors import UserError
from megastarid.core.files import atomic_write

log = logging.getLogger(__name__)

HUB_HOST = ("huggingface.co", 443)
#: the timm backbone a run uses unless told otherwise
DEFAULT_BACKBONE = "convnext_tiny"


class EmbeddingModel(nn.Module):
    """Backbone -> pooled features -> linear -> BatchNorm (BNNeck) -> L2-normalised embedding.

    The BNNeck's bias is frozen (as in Luo et al., "Bag of Tricks") so the normalised embedding lives
    on a sphere centred on the origin, which is what cosine losses and retrieval assume.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, embedding_dim: int = 512) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = nn.Linear(feature_dim, embedding_dim, bias=False)
        self.bn = nn.BatchNorm1d(embedding_dim)
        self.bn.bias.requires_grad_(False)
        nn.init.kaiming_normal_(self.neck.weight, mode="fan_out")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)
        return F.normalize(self.bn(self.neck(features)).float(), dim=1)

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for p in (*self.neck.parameters(), *self.bn.parameters()) if p.requires_grad]


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe so an offline machine fails in seconds instead of waiting on HTTP retries."""
    try:
        socket.create_connection(HUB_HOST, timeout=timeout).close()
    except OSError:
        return False
    return True


def _offline_hint(backbone: str) -> str:
    if backbone.startswith("hf-hub:"):
        return (
            f"--backbone {backbone} needs the Hugging Face hub (or its local cache); offline, use the timm "
            "architecture name with local weights, e.g. --backbone swin_tiny_patch4_window7_224 "
            "--backbone-weights FILE"
        )
    return (
        f"--pretrained {backbone}: weights not available offline; pass local weights with "
        "--backbone-weights FILE (or use --no-pretrained)"
    )


def build_model(
    backbone: str = DEFAULT_BACKBONE,
    embedding_dim: int = 512,
    pretrained: bool = False,
    backbone_weights: str | Path | None = None,
) -> EmbeddingModel:
    """Create the backbone by timm name with its classifier removed, and put the embedding head on top.

    ``backbone_weights`` loads a local file through timm's ``pretrained_cfg_overlay`` (works offline);
    ``pretrained`` fetches the published weights. Offline (no network, or ``HF_HUB_OFFLINE=1``) without a
    cached copy, the user gets one line saying how to pass local weights.
    """
    kwargs: dict[str, Any] = {"num_classes": 0}
    if backbone_weights is not None:
        path = Path(backbone_weights)
        if not path.is_file():
            raise UserError(f"--backbone-weights: {path} is not a file")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    elif pretrained or backbone.startswith("hf-hub:"):
        import huggingface_hub.constants as hub

        if not hub.HF_HUB_OFFLINE and not _hub_reachable():
            # Use the local cache only: fails at once when the weights are not there.
            hub.HF_HUB_OFFLINE = True
        kwargs["pretrained"] = pretrained
    try:
        net = timm.create_model(backbone, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise UserError(
                f"--backbone {backbone}: not a timm model name (see timm.list_models())"
            ) from None
        if backbone_weights is not None:
            raise UserError(
                f"--backbone-weights {backbone_weights}: does not fit {backbone} "
                f"({str(err).splitlines()[0][:200]})"
            ) from None
        raise
    except (OSError, ValueError) as err:
        if backbone_weights is not None:
            raise UserError(f"--backbone-weights {backbone_weights}: cannot load it ({err})") from None
        log.debug("weight download failed: %s", err)
        raise UserError(_offline_hint(backbone)) from None
    # Models with a conv head after pooling (MobileNetV3, ...) output head_hidden_size, not num_features.
    feature_dim = getattr(net, "head_hidden_size", None) or net.num_features
    return EmbeddingModel(net, feature_dim, embedding_dim)


def save_checkpoint(path: str | Path, model: nn.Module, config: dict[str, Any], **state: Any) -> None:
    """Write ``{"model", "config", **state}`` atomically (temp file + rename): no half-written file.

    ``config`` must hold plain types (``TrainConfig.to_dict()``); ``state`` may add epoch, optimizer, RNG ...
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {"model": model.state_dict(), "config": config, **state}
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check it: anything wrong with the file, its config
    or its weights (NaN/inf) is a one-line ``UserError`` naming it."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a folder, not a checkpoint file (e.g. {path / 'best.pth'})")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        if path.stat().st_size == 0:
            raise UserError(f"checkpoint {path} is an empty file (its write was cut short?)")
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except UserError:
        raise
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise UserError(
                f"checkpoint {path} holds code or objects other than tensors and plain values; they are not "
                "loaded, for safety (a checkpoint must never run code)"
            ) from None
        raise UserError(f"checkpoint {path} is not a PyTorch checkpoint file, or a damaged one") from None
    except Exception as err:
        if not zipfile.is_zipfile(path):
            with path.open("rb") as handle:
                damaged = handle.read(4) == b"PK\x03\x04"  # a zip archive's start, its end missing
            if damaged:
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
    """Rebuild the architecture named in a loaded checkpoint's config and load its weights."""
    config = ckpt["config"]
    backbone = config["backbone"]
    if not backbone.startswith("hf-hub:") and not timm.is_model(backbone):
        raise UserError(f"checkpoint {path}: its backbone {backbone!r} is not a timm model name in this timm")
    try:
        model = build_model(backbone, int(config["embedding_dim"]))
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
