"""Drawing primitives shared by the synthetic star and wildlife photos.

Everything is vector geometry projected through one 3x3 homography (pose, scale and camera tilt in one
matrix), drawn with PIL at twice the output size and downsampled, so a photo costs a few milliseconds and
the same seed always gives the same bytes. The photographic nuisances (background, lighting, water colour,
blur, occluders, noise) live here too, so both kinds of animal get the same camera.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Colour = tuple[int, int, int]

#: Render at this multiple of the output size, then downsample: cheap anti-aliasing.
SUPERSAMPLE = 2

#: Open-water tints (RGB multipliers): the per-photo colour cast is drawn around these.
WATER_TINTS = np.array(
    [[0.55, 0.85, 1.00], [0.50, 0.95, 0.85], [0.70, 0.90, 0.95], [0.85, 0.95, 0.80], [0.95, 0.95, 1.00]]
)

#: Ground colours shared by every animal, so the background says nothing about identity.
GROUND_COLOURS = np.array(
    [[196, 180, 140], [150, 140, 120], [110, 110, 105], [170, 160, 150], [120, 100, 80]]
)


def seeded_rng(*keys: int) -> np.random.Generator:
    """A generator for one (set, animal, outing, photo) key: independent of the order things are drawn in.

    The key length leads the entropy because SeedSequence ignores trailing zeros: without it an animal's
    stream would equal the stream of its first outing and of that outing's first photo.
    """
    return np.random.default_rng(np.random.SeedSequence([len(keys), *(int(k) for k in keys)]))


def pose_matrix(
    size: int, rotation: float, scale: float, centre: tuple[float, float], tilt: tuple[float, float]
) -> np.ndarray:
    """Homography from the animal's unit frame to pixels: rotate, scale, tilt the camera, then place."""
    cos, sin = np.cos(rotation), np.sin(rotation)
    rotate_scale = np.array(
        [[cos * scale, -sin * scale, 0.0], [sin * scale, cos * scale, 0.0], [0.0, 0.0, 1.0]]
    )
    perspective = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [tilt[0], tilt[1], 1.0]])
    half = size / 2
    to_pixels = np.array(
        [[half, 0.0, half * (1 + centre[0])], [0.0, half, half * (1 + centre[1])], [0, 0, 1.0]]
    )
    return to_pixels @ perspective @ rotate_scale


def project(matrix: np.ndarray, points: np.ndarray) -> list[tuple[float, float]]:
    """Map (N, 2) unit-frame points through a homography into a PIL polygon."""
    homogeneous = np.c_[points, np.ones(len(points))] @ matrix.T
    xy = homogeneous[:, :2] / homogeneous[:, 2:3]
    return [(float(x), float(y)) for x, y in xy]


def ellipse_points(
    centre: np.ndarray, radii: tuple[float, float], angle: float = 0.0, n: int = 10
) -> np.ndarray:
    """Polygon approximating a rotated ellipse in the unit frame."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = radii[0] * np.cos(t), radii[1] * np.sin(t)
    cos, sin = np.cos(angle), np.sin(angle)
    return np.c_[centre[0] + cos * x - sin * y, centre[1] + sin * x + cos * y]


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a tiny random grid upsampled bicubically."""
    grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
    big = Image.fromarray(grid, "L").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(big, dtype=np.float32) / 255.0


def ground(rng: np.random.Generator, size: int) -> Image.Image:
    """Sand, gravel or rock: a base colour, patchy shading, grain and a few pebbles."""
    base = GROUND_COLOURS[rng.integers(len(GROUND_COLOURS))] * rng.uniform(0.8, 1.15, 3)
    shade = 0.7 + 0.6 * smooth_noise(rng, size, int(rng.integers(3, 8)))
    grain = rng.normal(1.0, rng.uniform(0.03, 0.12), (size, size)).astype(np.float32)
    pixels = np.clip(base[None, None, :] * (shade * grain)[..., None], 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 12))):
        centre = rng.uniform(0, size, 2)
        radius = rng.uniform(0.01, 0.06) * size
        tone = tuple(int(c) for c in np.clip(base * rng.uniform(0.5, 1.3), 0, 255))
        outline = ellipse_points(centre, (radius, radius * rng.uniform(0.5, 1.0)), rng.uniform(0, np.pi), 9)
        draw.polygon([tuple(p) for p in outline], fill=tone)
    return image


def occlude(image: Image.Image, rng: np.random.Generator, matrix: np.ndarray, count: int) -> None:
    """Draw kelp strands or rocks over the animal (centred near it), partly hiding it."""
    draw = ImageDraw.Draw(image)
    for _ in range(count):
        anchor = rng.uniform(-0.9, 0.9, 2)
        if rng.random() < 0.5:
            colour = tuple(int(c) for c in rng.uniform([30, 60, 20], [90, 110, 50]))
            angle = rng.uniform(0, np.pi)
            t = np.linspace(-1.2, 1.2, 12)
            spine = np.c_[t * np.cos(angle), t * np.sin(angle)] + anchor
            normal = np.array([-np.sin(angle), np.cos(angle)])
            spine += normal * (0.12 * np.sin(t * rng.uniform(2, 5)))[:, None]
            width = rng.uniform(0.04, 0.09)
            outline = np.r_[spine + normal * width, (spine - normal * width)[::-1]]
        else:
            colour = tuple(int(c) for c in rng.uniform(60, 140) * rng.uniform(0.9, 1.1, 3))
            radius = rng.uniform(0.15, 0.3)
            outline = ellipse_points(
                anchor, (radius, radius * rng.uniform(0.5, 0.9)), rng.uniform(0, np.pi), 9
            )
            outline += rng.normal(0, radius * 0.12, outline.shape)
        draw.polygon(project(matrix, outline), fill=colour)


@dataclass(frozen=True)
class Camera:
    """Per-photo photographic conditions, drawn once from the photo's own generator."""

    water: np.ndarray
    haze: float
    light_angle: float
    light_strength: float
    caustics: float
    blur: float
    noise: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Camera:
        tint = WATER_TINTS[rng.integers(len(WATER_TINTS))] * rng.uniform(0.85, 1.15, 3)
        return cls(
            water=np.clip(tint, 0.3, 1.2) * rng.uniform(0.7, 1.2),
            haze=float(rng.uniform(0.0, 0.25)),
            light_angle=float(rng.uniform(0, 2 * np.pi)),
            light_strength=float(rng.uniform(0.0, 0.4)),
            caustics=float(rng.uniform(0.0, 0.12) if rng.random() < 0.5 else 0.0),
            blur=float(rng.uniform(0.0, 0.8) if rng.random() < 0.5 else 0.0),
            noise=float(rng.uniform(1.0, 6.0)),
        )


def develop(image: Image.Image, camera: Camera, rng: np.random.Generator, size: int) -> Image.Image:
    """Turn a supersampled scene into the final photo: downsample, light, tint, haze, blur and noise."""
    small = image.resize((size, size), Image.Resampling.BILINEAR)
    if camera.blur > 0:
        small = small.filter(ImageFilter.GaussianBlur(camera.blur))
    pixels = np.asarray(small, dtype=np.float32)
    axis = np.linspace(-1, 1, size, dtype=np.float32)
    x, y = np.meshgrid(axis, axis)
    light = 1 + camera.light_strength * (np.cos(camera.light_angle) * x + np.sin(camera.light_angle) * y) / 2
    if camera.caustics:
        phase = rng.uniform(0, 2 * np.pi, 2)
        light = light + camera.caustics * np.sin(9 * x + 3 * np.sin(7 * y + phase[0])) * np.sin(
            8 * y + 3 * np.sin(6 * x + phase[1])
        )
    pixels = pixels * light[..., None] * camera.water[None, None, :].astype(np.float32)
    haze_colour = 255 * camera.water.astype(np.float32) * 0.6
    pixels = (1 - camera.haze) * pixels + camera.haze * haze_colour
    pixels += rng.normal(0, camera.noise, pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def save_jpeg(image: Image.Image, path: Path, quality: int) -> None:
    """Write a baseline JPEG without metadata, so the bytes depend only on the pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=quality, optimize=False)
