"""An epoch's batches, reproducible and resumable: the epoch's torch seed, the sampler that skips the batches
a resumed run had done, and the fill-up that keeps a batch's shape the same on every DDP rank."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler


class ResumableBatches(Sampler[list[int]]):
    """The task's batch sampler, minus the first ``skip`` batches of the epoch (for a mid-epoch resume)."""

    def __init__(self, sampler: Any) -> None:
        self.sampler, self.skip = sampler, 0

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return len(self.sampler) - self.skip


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The torch seed one rank starts an epoch from: a pure function of (seed, epoch, rank), so a resumed
    run draws what the uninterrupted one did."""
    return (seed * 1_000_003 + epoch * 7919 + rank) % (2**63)


def fill_batch(images: torch.Tensor, labels: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch that lost unreadable photos, filled up to ``size`` by repeating its readable ones: under DDP
    every rank must hand the same shape to the loss, which gathers the embeddings of all ranks."""
    if len(labels) >= size:
        return images, labels
    fill = torch.arange(size) % len(labels)
    return images[fill], labels[fill]
