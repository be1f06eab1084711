"""Turn image files into L2-normalised embeddings with a model, surviving unreadable photos."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from megastarid.core.errors import UserError
from megastarid.data.catalogue import examples
from megastarid.data.datasets import ImageDataset, collate_skip_bad
from megastarid.data.transforms import build_eval_transform

log = logging.getLogger(__name__)

#: test-time augmentation: the views of each photo whose embeddings are averaged. A sea star photographed
#: from above has no "up", so its quarter turns (rot4) and their mirrors (rot4flip) are the same animal.
TTA = Literal["none", "flip", "rot4", "rot4flip"]
TTA_MODES: tuple[str, ...] = get_args(TTA)


def tta_mode(value: object) -> TTA:
    """A recorded TTA as its mode: reports and catalogues written before the modes stored a bool (the
    mirror or nothing). Anything else is a ``ValueError``."""
    if value is True or value is False:
        return "flip" if value else "none"
    if value not in TTA_MODES:
        raise ValueError(f"not a test-time augmentation ({'|'.join(TTA_MODES)}): {value!r}")
    return value  # type: ignore[return-value]


#: ``--tta auto``: each kind of photo's mode. A star photographed from above has no "up" (rot4 raised test
#: mAP beyond two standard deviations in bench/README.md's ablation); WildlifeReID-10k's animals are mostly
#: photographed from the side, where a quarter turn is a pose the set never shows.
AUTO_TTA: dict[str, TTA] = {"star": "rot4", "wildlife": "none"}
#: what ``--tta`` accepts: a mode, or auto
TTAChoice = Literal["auto", TTA]


def resolve_tta(choice: str, photos: Literal["star", "wildlife"]) -> TTA:
    """The mode ``--tta`` means for ``photos``: auto is ``AUTO_TTA``'s, a mode is itself."""
    return AUTO_TTA[photos] if choice == "auto" else tta_mode(choice)


def tta_views(images: torch.Tensor, tta: TTA) -> Iterator[torch.Tensor]:
    """The views of a batch (N, C, H, W) that ``tta`` averages: the batch itself first, then its mirror
    (flip), its three further quarter turns (rot4), or those four turns of the batch and of its mirror
    (rot4flip). The set of views of a photo turned by 90° (or, with rot4flip, mirrored) is the same set, so
    the mean embedding is the same."""
    mirrors = (images, images.flip(-1)) if tta in ("flip", "rot4flip") else (images,)
    turns = 4 if tta in ("rot4", "rot4flip") else 1
    for view in mirrors:
        for k in range(turns):
            yield torch.rot90(view, k, dims=(-2, -1)) if k else view


class NonFiniteEmbeddingError(UserError):
    """The model turned a readable photo into NaN/inf: the model is broken, not the photo."""


def embed_images(
    model: nn.Module,
    paths: Sequence[str],
    image_size: int,
    device: torch.device | str,
    batch_size: int = 64,
    tta: TTA = "none",
    num_workers: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """Embed ``paths`` in order as a float32 (N, D) array; rows of unreadable files are NaN.

    The unreadable files are logged as one warning; callers drop the NaN rows and count them
    (``np.isnan(emb).any(axis=1)``). A readable photo whose embedding is NaN/inf is a model error
    (``NonFiniteEmbeddingError``), never counted as an unreadable photo. With ``tta`` each embedding is
    the re-normalised mean of the embeddings of the photo's views (``tta_views``). The model's train/eval
    mode is restored afterwards, so the trainer can call this between epochs. ``progress=False`` hides the
    progress bar (for callers that embed in many small calls under a bar of their own).
    """
    device = torch.device(device)
    tta = tta_mode(tta)  # a bad mode fails here, not after the first batch
    dataset = ImageDataset(list(paths), [0] * len(paths), build_eval_transform(image_size), image_size)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_skip_bad,
        pin_memory=device.type == "cuda",
    )
    out: np.ndarray | None = None
    unreadable: list[int] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for images, _, indices, bad in tqdm(
                loader, desc="embedding", unit="batch", disable=None if progress else True
            ):
                unreadable.extend(bad)
                if indices.numel() == 0:
                    continue
                batch = images.to(device, non_blocking=True)
                views = [model(view).float() for view in tta_views(batch, tta)]
                emb = views[0] if len(views) == 1 else F.normalize(torch.stack(views).sum(0), dim=1)
                emb = emb.cpu().numpy()
                broken = ~np.isfinite(emb).all(axis=1)
                if broken.any():
                    example = dataset.path(int(indices[int(np.argmax(broken))]))
                    raise NonFiniteEmbeddingError(
                        f"the model gives NaN/inf embeddings for readable photos (e.g. {example}): the model "
                        "is broken (diverged or damaged weights), not the photos"
                    )
                if out is None:
                    out = np.full((len(dataset), emb.shape[1]), np.nan, dtype=np.float32)
                out[indices.numpy()] = emb
    finally:
        model.train(was_training)
    bad_paths = [dataset.path(i) for i in sorted(unreadable)]
    if out is None:
        raise UserError(f"none of the {len(dataset)} images could be read: {examples(bad_paths, 3)}")
    if bad_paths:
        log.warning("skipped %d unreadable image(s): %s", len(bad_paths), examples(bad_paths, 5))
    return out
