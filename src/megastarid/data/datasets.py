"""A torch Dataset over image files that survives corrupt photos: one bad file must never kill a run."""

from __future__ import annotations

import bisect
import logging
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset

from megastarid.data.images import BadImageError, load_rgb

log = logging.getLogger(__name__)

Item = tuple[torch.Tensor | None, int, int]


class ImageDataset(Dataset[Item]):
    """``(transform(image), label, index)`` per file, or ``(None, label, index)`` when the file is unreadable.

    ``decode_size`` is passed to ``load_rgb`` as ``min_side`` (reduced JPEG decoding); use the size the
    transform crops from. Paths are held as one numpy bytes array rather than a list of str so forked
    DataLoader workers do not copy them page by page through reference counting (and at 1 byte a character).
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: Sequence[int],
        transform: Callable[[Image.Image], torch.Tensor],
        decode_size: int | None = None,
    ) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = np.asarray([os.fsencode(p) for p in paths], dtype=bytes)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.decode_size = decode_size

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, index: int) -> str:
        """The file behind ``index`` (for logging bad indices)."""
        return os.fsdecode(self.paths[index])

    def __getitem__(self, index: int) -> Item:
        label = int(self.labels[index])
        try:
            image = load_rgb(self.path(index), self.decode_size)
        except BadImageError as err:
            log.debug("skipping %s", err)
            return None, label, index
        return self.transform(image), label, index


class ConcatImageDataset(ConcatDataset[Item]):
    """``ImageDataset``s end to end (stars then wildlife for co-training) whose items carry the *global*
    index, so ``collate_skip_bad``'s bad indices and ``path(i)`` address the concatenation, as the mixed
    sampler's indices do (a plain ``ConcatDataset`` would pass on each part's local index)."""

    def __init__(self, datasets: Sequence[ImageDataset]) -> None:
        super().__init__(datasets)
        self.parts = list(datasets)

    def __getitem__(self, index: int) -> Item:
        image, label, _ = super().__getitem__(index)
        return image, label, index

    def path(self, index: int) -> str:
        part = bisect.bisect_right(self.cumulative_sizes, index)
        start = self.cumulative_sizes[part - 1] if part else 0
        return self.parts[part].path(index - start)


def collate_skip_bad(batch: Sequence[Item]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """Stack the good items; return ``(images, labels, indices, bad_indices)``.

    ``bad_indices`` are the dataset indices of unreadable files so the caller can log and count them.
    When every item is bad, ``images`` is an empty tensor and ``labels``/``indices`` have length 0.
    """
    good = [item for item in batch if item[0] is not None]
    bad = [index for image, _, index in batch if image is None]
    images = torch.stack([image for image, _, _ in good if image is not None]) if good else torch.empty(0)
    labels = torch.tensor([label for _, label, _ in good], dtype=torch.long)
    indices = torch.tensor([index for _, _, index in good], dtype=torch.long)
    return images, labels, indices, bad
