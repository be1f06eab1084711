"""The open-set calibration options, declared once for training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from megastarid.core.errors import UserError
from megastarid.core.options import Options
from megastarid.evaluation.star import OpenSetSettings


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
