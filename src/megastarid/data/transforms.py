"""Training and evaluation transforms: PIL RGB image in, ImageNet-normalised float32 CHW tensor out.

Wildlife pre-training uses torchvision transforms v2; star fine-tuning uses Albumentations 2.x with an
underwater-specific set of ops. Every star op after the first is applied at the training size: the
random resized crop runs first so noise, spatter, CLAHE and blur never touch a 12-megapixel photo
(DESIGN.md §6). Both pipelines draw their randomness from torch's generator, so ``torch.manual_seed``
and DataLoader worker seeding make them reproducible and different in every worker.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, fields

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from megastarid.core.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Transform = Callable[[Image.Image], torch.Tensor]


@dataclass(frozen=True)
class StarAugmentConfig:
    """Probability of each star augmentation op (0 removes the op from the pipeline).

    ``crop_scale`` is the area range of the random resized crop that always runs first.
    """

    crop_scale: tuple[float, float] = (0.6, 1.0)
    perspective: float = 0.3
    affine: float = 0.7
    water_colour: float = 0.5
    brightness_contrast: float = 0.3
    clahe: float = 0.2
    motion_blur: float = 0.2
    iso_noise: float = 0.2
    spatter: float = 0.1
    coarse_dropout: float = 0.3
    grid_dropout: float = 0.1
    pixel_dropout: float = 0.1

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "crop_scale":
                low, high = value
                if not 0 < low <= high <= 1:
                    raise UserError(f"augmentation crop_scale must satisfy 0 < low <= high <= 1, got {value}")
            elif not 0.0 <= value <= 1.0:
                raise UserError(f"augmentation probability {field.name} must be in [0, 1], got {value}")


def _check_size(image_size: int) -> None:
    if not isinstance(image_size, int) or image_size < 16:
        raise UserError(f"--image-size must be an integer >= 16, got {image_size!r}")


def star_crop_op(image_size: int, cfg: StarAugmentConfig) -> A.BasicTransform:
    """The geometric crop + resize to the training size; INTER_AREA when shrinking avoids aliasing."""
    return A.RandomResizedCrop(
        size=(image_size, image_size), scale=cfg.crop_scale, ratio=(0.8, 1.25), area_for_downscale="image"
    )


def star_augment_ops(cfg: StarAugmentConfig) -> list[A.BasicTransform]:
    """The underwater augmentation ops with a non-zero probability, in application order.

    Sizes are relative (fractions of the image) so the ops mean the same at any input size.
    """
    reflect = cv2.BORDER_REFLECT_101
    candidates: list[tuple[float, Callable[[float], A.BasicTransform]]] = [
        (cfg.perspective, lambda p: A.Perspective(scale=(0.02, 0.08), border_mode=reflect, p=p)),
        (
            cfg.affine,
            lambda p: A.Affine(
                rotate=(-180, 180),
                scale=(0.9, 1.1),
                translate_percent=(-0.05, 0.05),
                shear=(-5, 5),
                border_mode=reflect,
                p=p,
            ),
        ),
        # Water absorbs red first: pull red down, push green/blue up.
        (cfg.water_colour, lambda p: A.RGBShift((-40, 0), (-5, 25), (0, 40), p=p)),
        (cfg.brightness_contrast, lambda p: A.RandomBrightnessContrast(0.25, 0.25, p=p)),
        (cfg.clahe, lambda p: A.CLAHE(clip_limit=(1.0, 3.0), p=p)),
        (cfg.motion_blur, lambda p: A.MotionBlur(blur_limit=(3, 7), p=p)),
        (cfg.iso_noise, lambda p: A.ISONoise(color_shift=(0.01, 0.05), intensity=(0.1, 0.4), p=p)),
        (cfg.spatter, lambda p: A.Spatter(mode="rain", p=p)),
        (
            cfg.coarse_dropout,
            lambda p: A.CoarseDropout(
                num_holes_range=(1, 4), hole_height_range=(0.05, 0.15), hole_width_range=(0.05, 0.15), p=p
            ),
        ),
        (cfg.grid_dropout, lambda p: A.GridDropout(ratio=0.3, p=p)),
        (cfg.pixel_dropout, lambda p: A.PixelDropout(dropout_prob=0.02, p=p)),
    ]
    return [make(prob) for prob, make in candidates if prob > 0]


def normalise_ops() -> list[A.BasicTransform]:
    """uint8 HWC -> ImageNet-normalised float32 CHW tensor."""
    return [A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), A.ToTensorV2()]


class AlbumentationsTransform:
    """Apply an Albumentations pipeline to a PIL image, seeding it from torch's generator on each call.

    Albumentations keeps its own generator, which forked DataLoader workers would all inherit
    identically; drawing a fresh seed from torch per image ties it to torch's per-worker seeding.
    """

    def __init__(self, ops: list[A.BasicTransform]) -> None:
        self.compose = A.Compose(ops)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        seed = int(torch.randint(0, 2**62, (1,)).item())
        self.compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        pixels = np.asarray(image.convert("RGB"))
        return self.compose(image=pixels)["image"].contiguous()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.compose!r})"


def build_star_train_transform(image_size: int, cfg: StarAugmentConfig | None = None) -> Transform:
    """Star fine-tuning transform: random resized crop to ``image_size`` first, then underwater ops."""
    _check_size(image_size)
    cfg = StarAugmentConfig() if cfg is None else cfg
    return AlbumentationsTransform([star_crop_op(image_size, cfg), *star_augment_ops(cfg), *normalise_ops()])


def _to_normalised_tensor() -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def build_wildlife_train_transform(image_size: int) -> Transform:
    """Wildlife pre-training transform (torchvision v2); the crop runs first so the rest works small."""
    _check_size(image_size)
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=(0.5, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomRotation(15),
            v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.2, hue=0.05),
            v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 2.0))], p=0.2),
            *_to_normalised_tensor(),
            v2.RandomErasing(p=0.25, scale=(0.02, 0.2)),
        ]
    )


def build_eval_transform(image_size: int) -> Transform:
    """Evaluation transform: resize the whole photo to a square (no centre crop, so no arm tip is cut off)."""
    _check_size(image_size)
    return v2.Compose([v2.Resize((image_size, image_size), antialias=True), *_to_normalised_tensor()])


def denormalise(tensor: torch.Tensor) -> np.ndarray:
    """Undo the ImageNet normalisation of a CHW tensor into an HWC uint8 array for display."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    pixels = (tensor.detach().cpu().float() * std + mean).clamp(0, 1)
    return (pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
