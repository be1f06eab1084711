"""The model a catalogue embeds with, and its fingerprint: new photos are embedded exactly as the
catalogue's were (same weights, image size, TTA), or not at all.

``checkpoint_embedder`` makes one from a trained checkpoint, ``backbone_embedder`` from a bare timm backbone
(zero-shot: identify before anything is trained); the catalogue build, identify and evaluation use them.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from megastarid.core.errors import UserError
from megastarid.evaluation.embed import TTA, embed_images
from megastarid.models.checkpoints import load_model_from_checkpoint
from megastarid.models.network import build_model

log = logging.getLogger(__name__)

#: how a catalogue's model is re-created: a trained checkpoint, or a backbone's pooled features
KINDS = ("checkpoint", "backbone")


@dataclass(frozen=True)
class ModelFingerprint:
    """What makes two embeddings comparable: the same weights (sha256 of the checkpoint file, or of the
    backbone's weights), the same architecture, image size, test-time augmentation and embedding size."""

    kind: str
    sha256: str
    backbone: str
    image_size: int
    tta: TTA
    embedding_dim: int

    def differences(self, other: ModelFingerprint) -> list[str]:
        """``name mine vs other's`` for every field that differs (hashes shortened)."""

        def show(value: Any) -> str:
            return repr(value[:12] + "...") if isinstance(value, str) and len(value) == 64 else repr(value)

        return [
            f"{f.name} {show(getattr(self, f.name))} vs {show(getattr(other, f.name))}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelFingerprint:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


class FeatureModel(nn.Module):
    """A backbone's pooled features, L2-normalised: zero-shot embeddings, before anything is trained."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone(images).float(), dim=1)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(module: nn.Module) -> str:
    """sha256 of a module's weights (names, shapes, dtypes and values of its state dict, in order)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class Embedder:
    """A model in eval mode with its fingerprint and the recipe to re-create it (``source``)."""

    model: nn.Module
    fingerprint: ModelFingerprint
    source: dict[str, Any]  # kind, checkpoint / backbone, weights, pretrained: absolute paths
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 64
    num_workers: int = 0

    def embed(self, paths: Sequence[str]) -> np.ndarray:
        """(len(paths), dim) float32, L2-normalised; rows of unreadable photos are NaN."""
        if not paths:
            return np.zeros((0, self.fingerprint.embedding_dim), dtype=np.float32)
        try:
            return embed_images(
                self.model,
                list(paths),
                self.fingerprint.image_size,
                self.device,
                batch_size=self.batch_size,
                tta=self.fingerprint.tta,
                num_workers=self.num_workers,
                progress=False,
            )
        except UserError as err:
            if type(err) is not UserError:  # a subclass means something else (a broken model): re-raise
                raise
            log.debug("%s", err)  # none of the photos could be read: every row unreadable
            return np.full((len(paths), self.fingerprint.embedding_dim), np.nan, dtype=np.float32)

    def record(self) -> dict[str, Any]:
        """What a catalogue stores about its model."""
        return {"fingerprint": asdict(self.fingerprint), "source": dict(self.source)}


#: image size of a zero-shot backbone whose timm config names none
DEFAULT_BACKBONE_SIZE = 224


def checkpoint_embedder(
    checkpoint: Path,
    device: torch.device,
    tta: TTA = "none",
    image_size: int | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
) -> Embedder:
    """A trained model (``best.pth``) at its training image size unless ``image_size`` says otherwise."""
    model, config = load_model_from_checkpoint(checkpoint, device)
    fingerprint = ModelFingerprint(
        kind="checkpoint",
        sha256=file_sha256(checkpoint),
        backbone=str(config["backbone"]),
        image_size=int(image_size or config["image_size"]),
        tta=tta,
        embedding_dim=int(config["embedding_dim"]),
    )
    source = {"kind": "checkpoint", "checkpoint": os.path.abspath(checkpoint)}
    return Embedder(model, fingerprint, source, device, batch_size, num_workers)


def backbone_embedder(
    backbone: str,
    device: torch.device,
    pretrained: bool = False,
    weights: Path | None = None,
    tta: TTA = "none",
    image_size: int | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
) -> Embedder:
    """A timm backbone's pooled, L2-normalised features (not our embedding head): ``pretrained`` weights
    from the hub, or local ``weights`` (a state dict file, e.g. of ``hf-hub:BVRA/MegaDescriptor-T-224``)."""
    net = build_model(backbone, pretrained=pretrained, backbone_weights=weights).backbone
    model = FeatureModel(net).to(device).eval()
    size = image_size or _default_size(net)
    with torch.inference_mode():
        dim = int(model(torch.zeros(1, 3, size, size, device=device)).shape[1])
    fingerprint = ModelFingerprint(
        kind="backbone",
        sha256=weights_sha256(net),
        backbone=backbone,
        image_size=size,
        tta=tta,
        embedding_dim=dim,
    )
    source = {
        "kind": "backbone",
        "backbone": backbone,
        "pretrained": pretrained,
        "weights": None if weights is None else os.path.abspath(weights),
    }
    return Embedder(model, fingerprint, source, device, batch_size, num_workers)


def _default_size(net: torch.nn.Module) -> int:
    config = getattr(net, "pretrained_cfg", None) or {}
    size = config.get("input_size") or (3, DEFAULT_BACKBONE_SIZE, DEFAULT_BACKBONE_SIZE)
    return int(size[-1])
