"""Options declared once for the commands that share them: the open-set calibration (training and
evaluation), the test-time augmentation (evaluation, star training, catalogue) and how photos are embedded
(evaluate, catalogue build, identify)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from megastarid.core.errors import UserError
from megastarid.core.options import Options
from megastarid.evaluation.embed import TTAChoice
from megastarid.evaluation.star import OpenSetSettings


@dataclass
class TTAOptions(Options):
    """How the embeddings that are scored, calibrated and stored are made (evaluation, the final report of
    star training, the catalogue)."""

    tta: TTAChoice = "auto"
    """test-time augmentation, each embedding the mean of the photo's views: flip (the photo and its
    mirror), rot4 (its four quarter turns), rot4flip (those and their mirrors: 8 views, 8x the model's
    work); auto: rot4 for star photos (taken from above, a star has no up), none for WildlifeReID-10k's side
    views"""


@dataclass
class EmbeddingOptions(TTAOptions):
    """How photos are embedded: batches, loading processes, device and test-time augmentation."""

    batch_size: int = 64
    """images per embedding batch"""
    workers: int = 0
    """image loading processes"""
    device: str = "auto"
    """torch device: cpu, cuda, cuda:1 ... (auto: cuda when available)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise UserError(f"--workers must be >= 0, got {self.workers}")


@dataclass
class CalibrationOptions(Options):
    """How "known or new?" is decided: τ and P(top-1 right), fitted on validation only."""

    calibration: Literal["isotonic", "logistic"] = "isotonic"
    """map from the top-1 score to P(the top-1 individual is right), fitted on validation"""
    max_false_new: float | None = None
    """choose τ as the highest threshold that answers "new" for at most this share of validation's known
    queries (None: the τ that maximises the geometric mean of BAKS and BAUS on validation)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_false_new is not None and not 0 <= self.max_false_new <= 1:
            raise UserError(f"--max-false-new must be between 0 and 1, got {self.max_false_new}")

    def openset_settings(self) -> OpenSetSettings:
        return OpenSetSettings(self.calibration, self.max_false_new)
