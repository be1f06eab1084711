"""Options declared once for the commands that embed new photos with a catalogue's own model (identify,
catalogue apply): only where its files are now may differ, never how it embeds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from megastarid.evaluation.embed import TTA
from megastarid.evaluation.options import EmbeddingOptions


@dataclass(kw_only=True)
class CatalogueModelOptions(EmbeddingOptions):
    """A catalogue, and how new photos are embedded with the model it was built with."""

    catalogue: Path
    """the catalogue file (made by megastarid catalogue build)"""
    checkpoint: Path | None = None
    """where the catalogue's checkpoint is now, if it moved (it must be the very same file)"""
    backbone_weights: Path | None = None
    """where a zero-shot catalogue's backbone weights are now, if they moved"""
    tta: Literal["catalogue", TTA] = "catalogue"  # type: ignore[assignment]  # replaces TTAOptions' "auto"
    """test-time augmentation: catalogue = the catalogue's own, the only one whose embeddings compare with
    the catalogue's (a mode named here must be that one)"""

    def requested_tta(self) -> TTA | None:
        """The mode named with --tta, None for the catalogue's own."""
        return None if self.tta == "catalogue" else self.tta
