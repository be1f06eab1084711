"""Where a run stands, as plain values: ``RunState`` for the run, ``EpochTally`` for one rank's epoch so far.

Both round-trip through a ``weights_only`` checkpoint, so ``--resume`` continues at an epoch boundary or
mid-epoch from exactly these numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning_fabric import Fabric

from megastarid.core.runfiles import LOSS_KEYS


@dataclass
class RunState:
    """Where a run stands; all plain values so that it round-trips through a weights_only checkpoint."""

    epoch: int = 0  # last completed epoch (0 = only the baseline evaluation done)
    step: int = 0  # batches done in epoch ``epoch + 1`` when the run was interrupted mid-epoch
    history: list[dict[str, float]] = field(default_factory=list)
    best_metric: float = -math.inf
    best_epoch: int = -1
    stopped_early: bool = False
    wall_time_s: float = 0.0
    skipped_steps: int = 0
    partial: dict[str, Any] | None = None  # the interrupted epoch's ``EpochTally.to_dict()``


@dataclass
class EpochTally:
    """What one rank has done so far in an epoch; summed over the ranks when the epoch ends.

    ``loss_sums`` holds one sum per ``LOSS_KEYS`` entry, float32 on the training device, so adding a step's
    losses never waits for the device. ``to_dict`` / ``from_dict`` carry a tally through a weights_only
    checkpoint as plain numbers, exactly (a float32 value is exact as a Python float).
    """

    loss_sums: torch.Tensor
    steps: int = 0  # optimisation steps taken
    images: int = 0  # images in those steps
    bad_images: int = 0  # unreadable photos met (left out of their batch)
    skipped_steps: int = 0  # steps with a NaN/inf loss or no readable image (nothing updated)
    elapsed: float = 0.0  # seconds spent in the epoch so far, on this rank

    @classmethod
    def zero(cls, device: torch.device) -> EpochTally:
        return cls(torch.zeros(len(LOSS_KEYS), device=device))

    def add_step(self, losses: torch.Tensor, images: int) -> None:
        self.loss_sums += losses
        self.steps += 1
        self.images += images

    def to_dict(self) -> dict[str, Any]:
        return {
            "loss_sums": dict(zip(LOSS_KEYS, self.loss_sums.tolist(), strict=True)),
            "steps": self.steps,
            "images": self.images,
            "bad_images": self.bad_images,
            "skipped_steps": self.skipped_steps,
            "elapsed": self.elapsed,
        }

    @classmethod
    def from_dict(cls, saved: dict[str, Any], device: torch.device) -> EpochTally:
        sums = torch.tensor([saved["loss_sums"].get(key, math.nan) for key in LOSS_KEYS], device=device)
        return cls(sums, **{key: value for key, value in saved.items() if key != "loss_sums"})

    def summed(self, fabric: Fabric) -> EpochTally:
        """The tally of every rank, with one all_reduce; ``elapsed`` stays this rank's."""
        counts = [self.steps, self.images, self.bad_images, self.skipped_steps]
        local = torch.cat([self.loss_sums, self.loss_sums.new_tensor(counts)])
        reduced = fabric.all_reduce(local, reduce_op="sum")
        assert isinstance(reduced, torch.Tensor)  # a tensor in, a tensor out
        total = reduced.cpu()
        steps, images, bad_images, skipped_steps = (int(n) for n in total[len(LOSS_KEYS) :].tolist())
        return EpochTally(total[: len(LOSS_KEYS)], steps, images, bad_images, skipped_steps, self.elapsed)

    def loss_means(self) -> dict[str, float]:
        """Each loss term's mean over the steps; a term the objective does not compute (NaN) is left out."""
        if not self.steps:
            return {}
        sums = zip(LOSS_KEYS, self.loss_sums.tolist(), strict=True)
        return {key: total / self.steps for key, total in sums if not math.isnan(total)}
