"""The models a catalogue embeds with (``identification.embedder.Embedder``): a trained checkpoint, or a
bare timm backbone's pooled features (zero-shot: identify before anything is trained), and re-creating
the one a catalogue was built with, refusing any other."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from megastarid.core.errors import UserError
from megastarid.evaluation.embed import TTA
from megastarid.identification.embedder import (
    Embedder,
    FeatureModel,
    ModelFingerprint,
    file_sha256,
    weights_sha256,
)
from megastarid.identification.options import CatalogueModelOptions
from megastarid.training.models import build_model, load_model_from_checkpoint

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


def catalogue_embedder(
    record: dict[str, Any], options: CatalogueModelOptions, device: torch.device
) -> Embedder:
    """Re-create the model a catalogue was built with (from its ``record``); ``--checkpoint`` /
    ``--backbone-weights`` say where the files are now if they moved. Anything but the very same weights is
    a one-line error, and so is a ``--tta`` other than the catalogue's, before the model loads."""
    catalogue, tta = options.catalogue, options.requested_tta()
    batch_size, num_workers = options.batch_size, options.workers
    try:
        stored = ModelFingerprint.from_dict(record["fingerprint"])
        source = record["source"]
    except (KeyError, TypeError) as err:
        raise UserError(f"catalogue {catalogue} does not record its model ({err})") from None
    if tta not in (None, stored.tta):
        raise UserError(
            f"--tta {tta}: catalogue {catalogue} was embedded with --tta {stored.tta}, and new photos must "
            f"be embedded the same way (leave out --tta, or rebuild the catalogue with --tta {tta} --rebuild)"
        )
    if stored.kind == "checkpoint":
        path = options.checkpoint or Path(source["checkpoint"])
        if not path.is_file():
            raise UserError(
                f"catalogue {catalogue} was built with checkpoint {source['checkpoint']}, which is not there "
                "any more: pass --checkpoint PATH to the same file"
            )
        embedder = checkpoint_embedder(path, device, stored.tta, stored.image_size, batch_size, num_workers)
        what = f"checkpoint {path}"
    else:
        recorded = Path(source["weights"]) if source.get("weights") else None
        weights_path = options.backbone_weights or recorded
        if weights_path is not None and not weights_path.is_file():
            raise UserError(
                f"catalogue {catalogue} was built with backbone weights {weights_path}, which are not there "
                "any more: pass --backbone-weights FILE"
            )
        embedder = backbone_embedder(
            stored.backbone,
            device,
            pretrained=bool(source.get("pretrained")) and weights_path is None,
            weights=weights_path,
            tta=stored.tta,
            image_size=stored.image_size,
            batch_size=batch_size,
            num_workers=num_workers,
        )
        what = f"backbone {stored.backbone}" + (f" with weights {weights_path}" if weights_path else "")
    if embedder.fingerprint != stored:
        differences = "; ".join(embedder.fingerprint.differences(stored))
        raise UserError(
            f"{what} is not the model catalogue {catalogue} was built with ({differences}): use the same "
            "model, or rebuild the catalogue with this one (megastarid catalogue build --rebuild)"
        )
    return embedder


def resolve_device(name: str) -> torch.device:
    """``--device``: auto (the first GPU when there is one), cpu, cuda, cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a torch device (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return device
