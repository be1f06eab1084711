"""embed_images: order kept, flip TTA as specified, unreadable files become NaN rows (not crashes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import write_image
from megastarid.core.errors import UserError
from megastarid.data.images import load_rgb
from megastarid.data.transforms import build_eval_transform
from megastarid.evaluation.embed import embed_images

SIZE = 16


class PixelModel(nn.Module):
    """A linear map of the raw pixels: not mirror-symmetric, so TTA changes its output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(3 * SIZE * SIZE, 6)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(images.flatten(1)), dim=1)


def reference(model: nn.Module, paths: list[Path], tta: str) -> np.ndarray:
    transform = build_eval_transform(SIZE)
    batch = torch.stack([transform(load_rgb(p, SIZE)) for p in paths])
    with torch.no_grad():
        emb = model(batch)
        if tta == "flip":
            emb = F.normalize((emb + model(batch.flip(-1))) / 2, dim=1)
    return emb.numpy()


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_embeddings_in_order_with_and_without_tta(tmp_path: Path, tta: str) -> None:
    paths = [write_image(tmp_path / f"ü {i}.jpg", (40, 30), seed=i) for i in range(5)]
    model = PixelModel()
    emb = embed_images(model, [str(p) for p in paths], SIZE, "cpu", batch_size=2, tta=tta)
    assert emb.dtype == np.float32 and emb.shape == (5, 6)
    np.testing.assert_allclose(emb, reference(model, paths, tta), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_tta_differs_from_plain_for_an_asymmetric_model(tmp_path: Path) -> None:
    paths = [str(write_image(tmp_path / "a.png", (20, 20), seed=1))]
    model = PixelModel()
    plain = embed_images(model, paths, SIZE, "cpu")
    assert not np.allclose(plain, embed_images(model, paths, SIZE, "cpu", tta="flip"))


def test_unreadable_files_are_nan_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = [write_image(tmp_path / f"g{i}.jpg", seed=i) for i in range(3)]
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "text.png"
    text.write_text("not an image")
    paths = [str(good[0]), str(empty), str(good[1]), str(text), str(good[2])]
    emb = embed_images(PixelModel(), paths, SIZE, "cpu", batch_size=2)
    assert np.isnan(emb).any(axis=1).tolist() == [False, True, False, True, False]
    assert "skipped 2 unreadable image(s)" in caplog.text and "empty.jpg" in caplog.text


def test_nothing_readable_is_a_user_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="none of the 1 images could be read"):
        embed_images(PixelModel(), [str(empty)], SIZE, "cpu")
