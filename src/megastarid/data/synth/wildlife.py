"""A small WildlifeReID-10k look-alike: patterned animals from a few source datasets, plus a sea-star slice.

Each "species" is a coat pattern (spots, stripes, rosettes, blotches) on a body silhouette; an identity is
one random instance of its species' pattern. The slice named ``SeaStarReID2023`` reuses the star renderer,
so the reader's default exclusion of that dataset has real rows to exclude.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageChops, ImageDraw

from megastarid.core.files import write_csv
from megastarid.data.synth.canvas import (
    SUPERSAMPLE,
    Camera,
    develop,
    ellipse_points,
    ground,
    occlude,
    pose_matrix,
    project,
    save_jpeg,
    seeded_rng,
)
from megastarid.data.synth.stars import StarIdentity, render_star

WILDLIFE_KEY = 2  # first seed key of the wildlife set, so it never shares a stream with the star set
SEA_STAR_DATASET = "SeaStarReID2023"
METADATA_COLUMNS = ("identity", "path", "date", "orientation", "species", "split", "dataset", "cluster_id")

Pattern = Callable[[np.random.Generator], list[np.ndarray]]


def _spots(rng: np.random.Generator) -> list[np.ndarray]:
    centres = rng.uniform([-0.9, -0.45], [0.9, 0.45], (int(rng.integers(25, 45)), 2))
    return [
        ellipse_points(c, (r, r), n=8)
        for c, r in zip(centres, rng.uniform(0.03, 0.07, len(centres)), strict=True)
    ]


def _stripes(rng: np.random.Generator) -> list[np.ndarray]:
    shapes = []
    y = np.linspace(-0.6, 0.6, 10)
    for x0 in np.sort(rng.uniform(-0.95, 0.95, int(rng.integers(9, 15)))):
        wobble = rng.uniform(0.05, 0.2) * np.sin(y * rng.uniform(2, 6) + rng.uniform(0, 2 * np.pi))
        half = rng.uniform(0.02, 0.05)
        centre = x0 + wobble + rng.uniform(-0.3, 0.3) * y
        shapes.append(np.r_[np.c_[centre - half, y], np.c_[centre + half, y][::-1]])
    return shapes


def _rosettes(rng: np.random.Generator) -> list[np.ndarray]:
    shapes = []
    for c in rng.uniform([-0.85, -0.4], [0.85, 0.4], (int(rng.integers(14, 24)), 2)):
        radius = rng.uniform(0.06, 0.1)
        for a in np.linspace(0, 2 * np.pi, int(rng.integers(3, 6)), endpoint=False) + rng.uniform(0, 1):
            blob = c + radius * np.array([np.cos(a), np.sin(a)])
            shapes.append(ellipse_points(blob, (radius * 0.45, radius * 0.3), a + np.pi / 2, n=7))
    return shapes


def _blotches(rng: np.random.Generator) -> list[np.ndarray]:
    shapes = []
    for c in rng.uniform([-0.9, -0.45], [0.9, 0.45], (int(rng.integers(12, 20)), 2)):
        outline = ellipse_points(
            c, (rng.uniform(0.08, 0.16), rng.uniform(0.06, 0.12)), rng.uniform(0, np.pi), 7
        )
        shapes.append(outline + rng.normal(0, 0.02, outline.shape))
    return shapes


@dataclass(frozen=True)
class Species:
    """A source dataset of WildlifeReID-10k: its species, coat pattern and colours."""

    dataset: str
    species: str
    pattern: Pattern
    body: tuple[int, int, int]
    marks: tuple[int, int, int]
    dated: float  # fraction of photos with a known date


SPECIES = (
    Species("WhaleSharkID", "whale shark", _spots, (70, 85, 100), (225, 225, 215), 1.0),
    Species("StripeSpotter", "zebra", _stripes, (225, 220, 210), (30, 30, 30), 0.0),
    Species("LeopardID2022", "leopard", _rosettes, (200, 160, 90), (50, 35, 25), 0.7),
    Species("GiraffeZebraID", "giraffe", _blotches, (225, 200, 150), (140, 80, 40), 0.5),
)


def _animal_photo(
    species: Species, shapes: list[np.ndarray], rng: np.random.Generator, size: int
) -> tuple[Image.Image, str]:
    """The pattern clipped to a body silhouette, posed and photographed; returns the photo and orientation."""
    big = size * SUPERSAMPLE
    image = ground(rng, big)
    facing_left = bool(rng.random() < 0.5)
    matrix = pose_matrix(
        big,
        rotation=float(rng.normal(0, 0.3)),
        scale=float(rng.uniform(0.8, 1.0)),
        centre=(float(rng.uniform(-0.08, 0.08)), float(rng.uniform(-0.08, 0.08))),
        tilt=(float(rng.uniform(-0.2, 0.2)), float(rng.uniform(-0.2, 0.2))),
    ) @ np.diag([-1.0 if facing_left else 1.0, 1.0, 1.0])
    silhouette = [
        ellipse_points(np.zeros(2), (0.95, 0.5), n=28),
        ellipse_points(np.array([0.95, -0.1]), (0.25, 0.2)),
    ]
    body_mask = Image.new("L", image.size)
    pattern_mask = Image.new("L", image.size)
    for outline in silhouette:
        ImageDraw.Draw(body_mask).polygon(project(matrix, outline), fill=255)
    for shape in shapes:
        ImageDraw.Draw(pattern_mask).polygon(project(matrix, shape), fill=255)
    tone = rng.uniform(0.85, 1.15)
    body = Image.new("RGB", image.size, tuple(int(min(255, c * tone)) for c in species.body))
    image.paste(body, mask=body_mask)
    marks = Image.new("RGB", image.size, tuple(int(min(255, c * tone)) for c in species.marks))
    image.paste(marks, mask=ImageChops.multiply(body_mask, pattern_mask))
    if rng.random() < 0.3:
        occlude(image, rng, matrix, 1)
    return develop(image, Camera.draw(rng), rng, size), "left" if facing_left else "right"


def _identity_counts(identities: int) -> list[int]:
    """Identities per source dataset: a small sea-star slice, the rest shared among the species."""
    stars = max(1, round(identities * 0.08)) if identities > len(SPECIES) else 0
    rest = identities - stars
    counts = [rest // len(SPECIES) + (i < rest % len(SPECIES)) for i in range(len(SPECIES))]
    return [*counts, stars]


def _split(photos: int, rng: np.random.Generator) -> list[str]:
    """Official-style split: later photos of an identity go to test; a few identities are test-only."""
    if rng.random() < 0.06:
        return ["test"] * photos
    held = round(photos * 0.3) if photos >= 4 else 0
    return ["train"] * (photos - held) + ["test"] * held


def write_wildlife(root: Path, identities: int, seed: int, image_size: int) -> int:
    """Write ``root/images/<Dataset>/<id>/*.jpg`` and ``root/metadata.csv``; returns the number of images."""
    rows = []
    cluster = 0
    for kind, count in enumerate(_identity_counts(identities)):
        species = SPECIES[kind] if kind < len(SPECIES) else None
        dataset = species.dataset if species else SEA_STAR_DATASET
        for number in range(count):
            rng = seeded_rng(seed, WILDLIFE_KEY, kind, number)
            photos = int(rng.integers(3, 10))
            star = StarIdentity.draw(rng, 1) if species is None else None
            shapes = species.pattern(rng) if species else []
            date = dt.date(2015, 1, 1) + dt.timedelta(days=int(rng.integers(0, 2500)))
            for photo, split in enumerate(_split(photos, rng)):
                photo_rng = seeded_rng(seed, WILDLIFE_KEY, kind, number, photo)
                if photo_rng.random() < 0.4:
                    date += dt.timedelta(days=int(photo_rng.integers(1, 90)))
                    cluster += 1
                if star is not None:
                    image, orientation = render_star(star, photo_rng, image_size), "top"
                else:
                    assert species is not None  # no star drawn: an animal species
                    image, orientation = _animal_photo(species, shapes, photo_rng, image_size)
                relative = f"images/{dataset}/{number:04d}/{photo:03d}.jpg"
                save_jpeg(image, root / relative, quality=int(photo_rng.integers(80, 95)))
                known = species is not None and photo_rng.random() < species.dated
                rows.append(
                    {
                        "identity": f"{dataset}_{number:04d}",
                        "path": relative,
                        "date": date.isoformat() if known else "",
                        "orientation": orientation,
                        "species": species.species if species else "sea star",
                        "split": split,
                        "dataset": dataset,
                        "cluster_id": cluster,
                    }
                )
            cluster += 1
    write_csv(root / "metadata.csv", pd.DataFrame(rows, columns=list(METADATA_COLUMNS)))
    return len(rows)
