"""Re-creating the model a catalogue was built with, refusing any other: new photos are embedded exactly as
the catalogue's were, or not at all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from megastarid.core.errors import UserError
from megastarid.identification.options import CatalogueModelOptions
from megastarid.models.embedder import Embedder, ModelFingerprint, backbone_embedder, checkpoint_embedder


def catalogue_embedder(
    record: dict[str, Any], options: CatalogueModelOptions, device: torch.device
) -> Embedder:
    """Re-create the model a catalogue was built with (from its ``record``); ``--checkpoint`` /
    ``--backbone-weights`` say where the files are now if they moved. Anything but the very same weights is
    a one-line error, and so is a ``--tta`` other than the catalogue's, before the model loads."""
    catalogue, tta = options.catalogue, options.requested_tta()
    batch_size, num_workers = options.batch_size, options.workers
    stored = ModelFingerprint.from_dict(record["fingerprint"])  # checked as it was read (store_checks)
    source = record["source"]
    if tta not in (None, stored.tta):
        raise UserError(
            f"--tta {tta}: catalogue {catalogue} was embedded with --tta {stored.tta}, and new photos must "
            f"be embedded the same way (leave out --tta, or rebuild the catalogue with --tta {tta} --rebuild)"
        )
    if stored.kind == "checkpoint":
        path = options.checkpoint or Path(source["checkpoint"])
        if options.checkpoint is None and not path.is_file():  # a given path: loading it says what is wrong
            raise UserError(
                f"catalogue {catalogue} was built with checkpoint {source['checkpoint']}, which is not there "
                "any more: pass --checkpoint PATH to the same file"
            )
        embedder = checkpoint_embedder(path, device, stored.tta, stored.image_size, batch_size, num_workers)
        what = f"checkpoint {path}"
    else:
        recorded = Path(source["weights"]) if source.get("weights") else None
        weights_path = options.backbone_weights or recorded
        if options.backbone_weights is None and weights_path is not None and not weights_path.is_file():
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
