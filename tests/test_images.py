"""Image decoding: every mode a camera or editor writes comes back as upright 8-bit RGB; bad files say so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_image
from megastarid.core.errors import UserError
from megastarid.data.datasets import ConcatImageDataset, ImageDataset, collate_skip_bad
from megastarid.data.images import BACKGROUND, BadImageError, is_image_file, load_rgb


def _assert_rgb8(image: Image.Image, size: tuple[int, int]) -> None:
    assert image.mode == "RGB"
    assert image.size == size
    assert np.asarray(image).dtype == np.uint8


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGB", "1"])
def test_common_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    suffix = ".jpg" if mode in {"CMYK", "L", "RGB"} else ".png"
    path = write_image(tmp_path / f"img_{mode}{suffix}", (40, 30), mode=mode)
    _assert_rgb8(load_rgb(path), (40, 30))


def test_cmyk_jpeg_keeps_its_colours(tmp_path: Path) -> None:
    red = Image.new("RGB", (32, 32), (220, 30, 30))
    red.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    pixels = np.asarray(load_rgb(tmp_path / "cmyk.jpg")).reshape(-1, 3).mean(axis=0)
    assert pixels[0] > 180 and pixels[1] < 80 and pixels[2] < 80


def test_16_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64 * 16).reshape(16, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    pixels = np.asarray(load_rgb(tmp_path / "deep.png"))
    assert pixels.dtype == np.uint8
    assert pixels.min() == 0 and pixels.max() == 255
    assert 100 < pixels[8, 32, 0] < 156  # mid-ramp stays mid-grey rather than saturating


def test_alpha_is_composited_on_neutral_grey(tmp_path: Path) -> None:
    rgba = np.zeros((10, 20, 4), dtype=np.uint8)
    rgba[:, :10] = (255, 0, 0, 255)  # opaque red left half, fully transparent right half
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(rgba, "RGBA").convert("LA").save(tmp_path / "grey_alpha.png")
    pixels = np.asarray(load_rgb(tmp_path / "alpha.png"))
    assert tuple(pixels[5, 2]) == (255, 0, 0)
    assert tuple(pixels[5, 15]) == BACKGROUND
    assert tuple(np.asarray(load_rgb(tmp_path / "grey_alpha.png"))[5, 15]) == BACKGROUND


def test_palette_with_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    image.putpixel((0, 0), 1)
    image.save(tmp_path / "palette.png", transparency=0)
    pixels = np.asarray(load_rgb(tmp_path / "palette.png"))
    assert tuple(pixels[0, 0]) == (0, 255, 0)
    assert tuple(pixels[4, 4]) == BACKGROUND


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    pixels = np.zeros((30, 60, 3), dtype=np.uint8)
    pixels[:, :30] = 255  # white left half of a landscape photo
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, to be shown rotated 90 degrees clockwise
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    upright = load_rgb(tmp_path / "rotated.jpg")
    assert upright.size == (30, 60)
    top, bottom = np.asarray(upright)[:5].mean(), np.asarray(upright)[-5:].mean()
    assert top > 200 > 50 > bottom  # the white half is now on top


def test_large_jpeg_is_decoded_reduced_but_never_below_min_side(tmp_path: Path) -> None:
    path = write_image(tmp_path / "big.JPG", (1600, 1200))
    assert load_rgb(path).size == (1600, 1200)
    reduced = load_rgb(path, min_side=300)
    assert reduced.size == (400, 300)  # 1/4 scale: the smallest that keeps 300 px
    assert min(load_rgb(path, min_side=301).size) >= 301
    assert load_rgb(path, min_side=2000).size == (1600, 1200)  # never upscaled


def test_png_ignores_min_side(tmp_path: Path) -> None:
    path = write_image(tmp_path / "big.png", (400, 300))
    assert load_rgb(path, min_side=50).size == (400, 300)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("zero.jpg", b"", "empty file"),
        ("text.jpg", b"these are field notes, not a photo\n", "not an image"),
        ("missing.jpg", None, "not found"),
    ],
)
def test_bad_files_raise_one_line_error_naming_them(
    tmp_path: Path, name: str, content: bytes | None, reason: str
):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BadImageError, match=reason) as info:
        load_rgb(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, UserError)


def test_truncated_jpeg_is_a_bad_image(tmp_path: Path) -> None:
    data = write_image(tmp_path / "full.jpg", (256, 256)).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError, match=r"cut\.jpg"):
        load_rgb(tmp_path / "cut.jpg")
    with pytest.raises(BadImageError, match=r"cut\.jpg"):
        load_rgb(tmp_path / "cut.jpg", min_side=32)  # reduced decoding still reads the whole stream


def test_unicode_and_spaces_in_path(tmp_path: Path) -> None:
    path = write_image(tmp_path / "étoile de mer" / "ヒトデ 1.jpeg", (20, 10))
    _assert_rgb8(load_rgb(path), (20, 10))
    _assert_rgb8(load_rgb(str(path)), (20, 10))


def test_is_image_file_ignores_case() -> None:
    assert all(map(is_image_file, ["a.jpg", "b.JPEG", "c.Png", "d/e.jpeg"]))
    assert not any(map(is_image_file, ["a.txt", "b.jpg.txt", "c.heic", "jpg"]))


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image.resize((8, 8)))).permute(2, 0, 1).float()


def test_dataset_returns_none_for_bad_files_and_collate_drops_them(tmp_path: Path) -> None:
    good = [write_image(tmp_path / f"ok{i}.jpg", (16, 12), seed=i) for i in range(3)]
    (tmp_path / "zero.jpg").write_bytes(b"")
    paths = [good[0], tmp_path / "zero.jpg", good[1], tmp_path / "gone.jpg", good[2]]
    dataset = ImageDataset([str(p) for p in paths], [5, 6, 7, 8, 9], _to_tensor, decode_size=8)
    assert len(dataset) == 5
    assert dataset[1] == (None, 6, 1)
    assert dataset.path(3) == str(tmp_path / "gone.jpg")
    images, labels, indices, bad = collate_skip_bad([dataset[i] for i in range(5)])
    assert images.shape == (3, 3, 8, 8)
    assert labels.tolist() == [5, 7, 9] and labels.dtype == torch.long
    assert indices.tolist() == [0, 2, 4]
    assert bad == [1, 3]


def test_collate_of_an_all_bad_batch_is_empty(tmp_path: Path) -> None:
    images, labels, indices, bad = collate_skip_bad([(None, 1, 0), (None, 2, 1)])
    assert images.numel() == 0 and len(labels) == 0 and len(indices) == 0
    assert bad == [0, 1]


def test_dataset_works_in_dataloader_workers(tmp_path: Path) -> None:
    paths = [str(write_image(tmp_path / "ünï cödé" / f"{i}.png", (12, 12), seed=i)) for i in range(4)]
    dataset = ImageDataset([*paths, str(tmp_path / "nope.png")], [0, 0, 1, 1, 2], _to_tensor)
    loader = torch.utils.data.DataLoader(dataset, batch_size=5, num_workers=1, collate_fn=collate_skip_bad)
    images, labels, _, bad = next(iter(loader))
    assert images.shape[0] == 4 and labels.tolist() == [0, 0, 1, 1] and bad == [4]


def test_concatenated_datasets_report_global_indices(tmp_path: Path) -> None:
    stars = [str(write_image(tmp_path / f"s{i}.jpg", (8, 8), seed=i)) for i in range(2)]
    wildlife = [str(write_image(tmp_path / "w0.png", (8, 8))), str(tmp_path / "w_missing.jpg")]
    both = ConcatImageDataset(
        [ImageDataset(stars, [0, 1], _to_tensor), ImageDataset(wildlife, [2, 3], _to_tensor)]
    )
    assert len(both) == 4
    _, labels, indices, bad = collate_skip_bad([both[i] for i in (3, 0, 2)])
    assert bad == [3] and both.path(3) == wildlife[1]
    assert indices.tolist() == [0, 2] and labels.tolist() == [0, 2]
    assert [both.path(i) for i in range(4)] == stars + wildlife
