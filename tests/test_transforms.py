"""Train/eval transforms: output contract, seeding, per-op probabilities and resize-before-costly-ops."""

from __future__ import annotations

import dataclasses

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image

from megastarid.core.errors import UserError
from megastarid.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    StarAugmentConfig,
    build_eval_transform,
    build_star_train_transform,
    build_wildlife_train_transform,
    denormalise,
    star_augment_ops,
)

SIZE = 64
ALL_OFF = StarAugmentConfig(
    **{f.name: 0.0 for f in dataclasses.fields(StarAugmentConfig) if f.name != "crop_scale"}
)
ALL_ON = StarAugmentConfig(
    **{f.name: 1.0 for f in dataclasses.fields(StarAugmentConfig) if f.name != "crop_scale"}
)


@pytest.fixture(autouse=True)
def seeded() -> None:
    torch.manual_seed(0)


def noisy(width: int = 120, height: int = 90, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def uniform(colour: tuple[int, int, int], width: int = 100, height: int = 70) -> Image.Image:
    return Image.new("RGB", (width, height), colour)


def expected_normalised(colour: tuple[int, int, int]) -> np.ndarray:
    return (np.array(colour) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)


BUILDERS = {
    "star": lambda size: build_star_train_transform(size),
    "star_all_ops": lambda size: build_star_train_transform(size, ALL_ON),
    "wildlife": build_wildlife_train_transform,
    "eval": build_eval_transform,
}


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("shape", [(120, 90), (50, 200), (SIZE, SIZE)])
def test_output_is_normalised_float_square_tensor(name: str, shape: tuple[int, int]) -> None:
    out = BUILDERS[name](SIZE)(noisy(*shape))
    assert out.shape == (3, SIZE, SIZE)
    assert out.dtype == torch.float32
    # ImageNet-normalised pixels of a [0, 1] image: spread beyond [0, 1] but within the normalised range.
    low = (0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    high = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert out.min() < 0  # a merely [0, 1]-scaled tensor has no negatives
    assert (out >= low.view(3, 1, 1) - 1e-4).all() and (out <= high.view(3, 1, 1) + 1e-4).all()


@pytest.mark.parametrize("name", ["eval", "star_off"])
def test_uniform_colour_maps_to_imagenet_normalised_value(name: str) -> None:
    transform = build_eval_transform(SIZE) if name == "eval" else build_star_train_transform(SIZE, ALL_OFF)
    colour = (200, 90, 30)
    out = transform(uniform(colour)).numpy()
    np.testing.assert_allclose(
        out, np.broadcast_to(expected_normalised(colour)[:, None, None], out.shape), atol=1e-2
    )
    np.testing.assert_array_equal(denormalise(torch.from_numpy(out))[0, 0], colour)


@pytest.mark.parametrize("name", BUILDERS)
def test_same_torch_seed_same_augmentation_other_seed_differs(name: str) -> None:
    transform, image = BUILDERS[name](SIZE), noisy()
    torch.manual_seed(3)
    first = transform(image)
    torch.manual_seed(3)
    again = transform(image)
    torch.manual_seed(4)
    other = transform(image)
    assert torch.equal(first, again)
    if name != "eval":
        assert not torch.equal(first, other)


def test_zero_probability_removes_op_and_config_sets_probability() -> None:
    assert star_augment_ops(ALL_OFF) == []
    ops = star_augment_ops(StarAugmentConfig(clahe=0.37))
    clahe = [op for op in ops if isinstance(op, A.CLAHE)]
    assert len(clahe) == 1 and clahe[0].p == pytest.approx(0.37)
    assert len(star_augment_ops(ALL_ON)) == len(dataclasses.fields(StarAugmentConfig)) - 1


def test_single_enabled_op_changes_a_uniform_image() -> None:
    colour = (120, 120, 120)
    transform = build_star_train_transform(SIZE, dataclasses.replace(ALL_OFF, coarse_dropout=1.0))
    out = denormalise(transform(uniform(colour)))
    assert (out == 0).all(axis=2).any()  # black holes cut out
    assert (out == colour).all(axis=2).mean() > 0.5


def test_costly_ops_see_training_size_input(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, list[tuple[int, ...]]] = {}
    for op in (A.CLAHE, A.ISONoise, A.Spatter, A.MotionBlur, A.Perspective, A.Affine, A.GridDropout):
        original = op.apply

        def spy(self, img, *args, _original=original, _name=op.__name__, **kwargs):
            seen.setdefault(_name, []).append(img.shape)
            return _original(self, img, *args, **kwargs)

        monkeypatch.setattr(op, "apply", spy)
    transform = build_star_train_transform(SIZE, ALL_ON)
    for seed in range(3):
        transform(noisy(640, 480, seed))
    assert len(seen) == 7
    assert {shape for shapes in seen.values() for shape in shapes} == {(SIZE, SIZE, 3)}


@pytest.mark.parametrize(
    "kwargs, option",
    [({"clahe": 1.5}, "clahe"), ({"spatter": -0.1}, "spatter"), ({"crop_scale": (0.0, 1.0)}, "crop_scale")],
)
def test_bad_config_is_a_one_line_user_error(kwargs: dict, option: str) -> None:
    with pytest.raises(UserError, match=option):
        StarAugmentConfig(**kwargs)


@pytest.mark.parametrize(
    "builder", [build_star_train_transform, build_wildlife_train_transform, build_eval_transform]
)
def test_bad_image_size_is_a_user_error(builder) -> None:
    with pytest.raises(UserError, match="--image-size"):
        builder(0)
