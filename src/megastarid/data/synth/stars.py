"""Procedural sea stars photographed on dated survey outings, written as a star_dataset tree.

Identity lives in shape and pattern (arm count, arm-length profile, arm width, banding, spot layout, disc
mark), never in colour alone: base colours come from a small palette that many individuals share, and every
photo gets its own colour jitter, lighting and water cast. Between outings an individual changes a little
(spots drift, an injured arm regrows); within an outing only the photo (pose, camera) changes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

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

#: Base body colours; each is shared by many individuals.
PALETTE = np.array(
    [[222, 112, 52], [150, 72, 132], [156, 104, 72], [196, 64, 52], [222, 162, 150], [96, 54, 98]]
)

#: Sites (the ``<DATASET>`` level) and the outing-folder spellings each one uses.
SITES = {
    "DockSurveys": ("{m}_{d}_{y}_dock_sighting", "{y}-{m:02d}-{d:02d}"),
    "ReefTransects": ("{y}{m:02d}{d:02d}_survey", "{y}-{m:02d}-{d:02d}"),
}

STARS_KEY = 1  # first seed key of the star set, so it never shares a stream with the wildlife set


#: Arm-count classes and mark styles: with light/dark marks they make 36 coarse signatures, so every
#: individual of a set up to that size differs in shape or pattern (never only in colour); the fine
#: details (exact arm count, arm lengths, spot layout, band positions) differ within a signature.
ARM_CLASSES = ((5, 6, 7), (8, 9, 10, 11, 12, 13), tuple(range(14, 25)))
MARK_STYLES = ("spots", "speckles", "bands", "alternate_bands", "ring", "stripe")
SIGNATURES = len(ARM_CLASSES) * len(MARK_STYLES) * 2


def _spots(
    rng: np.random.Generator, arms: int, count: int, size: tuple[float, float], on_disc: float
) -> np.ndarray:
    """(count, 4) spots: arm index (-1 = disc), position along/angle, offset across/radius, size."""
    disc = rng.random(count) < on_disc
    return np.c_[
        np.where(disc, -1, rng.integers(0, arms, count)),
        np.where(disc, rng.uniform(0, 2 * np.pi, count), rng.uniform(0.15, 0.9, count)),
        np.where(disc, rng.uniform(0.2, 0.8, count), rng.uniform(-0.6, 0.6, count)),
        rng.uniform(*size, count),
    ]


@dataclass(frozen=True)
class StarIdentity:
    """What makes one individual itself. Unit frame: the longest arm reaches about 1."""

    arms: int
    phase: float
    disc: float
    lengths: np.ndarray  # (arms,) relative arm lengths
    width: float  # arm half-width at the base
    taper: float
    base: np.ndarray  # RGB body colour, from the shared palette
    light_marks: bool  # marks lighter (True) or darker than the body
    bands: np.ndarray  # (B, 2) transverse bands: position along the arm, thickness
    band_every: int  # bands on every k-th arm
    stripe: bool  # a mark stripe along every arm
    spots: np.ndarray  # see _spots
    disc_ring: float  # radius of a ring on the disc (0 = none)
    injury: tuple[int, int]  # (arm, first outing it is missing from), arm -1 = never injured

    @classmethod
    def draw(cls, rng: np.random.Generator, outings: int, signature: int | None = None) -> StarIdentity:
        """A random individual; ``signature`` (0..SIGNATURES-1) fixes its arm class, mark style and tone."""
        if signature is None:
            signature = int(rng.integers(SIGNATURES))
        arm_class, rest = signature % len(ARM_CLASSES), signature // len(ARM_CLASSES)
        style, light = MARK_STYLES[rest % len(MARK_STYLES)], rest // len(MARK_STYLES) == 1
        arms = int(rng.choice(ARM_CLASSES[arm_class]))
        disc = float(rng.uniform(0.22, 0.36))
        width = min(float(rng.uniform(0.1, 0.16)), 0.95 * np.pi * disc / arms + 0.03)
        if style == "spots":
            spots = _spots(rng, arms, int(rng.integers(5, 9)), (0.09, 0.13), 0.4)
        elif style == "speckles":
            spots = _spots(rng, arms, int(rng.integers(20, 31)), (0.045, 0.06), 0.25)
        else:
            spots = _spots(rng, arms, int(rng.integers(2, 5)), (0.06, 0.08), 0.5)
        n_bands = {"bands": 2, "alternate_bands": int(rng.integers(1, 3))}.get(style, 0)
        injured = outings >= 2 and rng.random() < 0.4
        return cls(
            arms=arms,
            phase=float(rng.uniform(0, 2 * np.pi)),
            disc=disc,
            lengths=rng.uniform(0.72, 1.0, arms),
            width=width,
            taper=float(rng.uniform(0.45, 0.75)),
            base=PALETTE[rng.integers(len(PALETTE))].astype(float),
            light_marks=light,
            bands=np.c_[
                np.linspace(0.3, 0.65, n_bands) + rng.uniform(-0.08, 0.08, n_bands),
                rng.uniform(0.12, 0.16, n_bands),
            ],
            band_every=2 if style == "alternate_bands" else 1,
            stripe=style == "stripe",
            spots=spots,
            disc_ring=float(rng.uniform(0.75, 0.95)) if style == "ring" else 0.0,
            injury=(int(rng.integers(arms)), int(rng.integers(1, outings))) if injured else (-1, 0),
        )

    def at_outing(self, outing: int, rng: np.random.Generator) -> StarIdentity:
        """The individual as seen on one outing: spots drift slightly, an injured arm regrows."""
        lengths = self.lengths.copy()
        arm, since = self.injury
        if arm >= 0 and outing >= since:
            lengths[arm] *= min(1.0, 0.45 + 0.15 * (outing - since))
        spots = self.spots.copy()
        spots[:, 1:3] += rng.normal(0, 0.02, (len(spots), 2))
        return replace(self, lengths=lengths, spots=spots)


def _arm_geometry(
    star: StarIdentity, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per arm: centreline points, unit normals and half-widths, with this photo's arm bending."""
    t = np.linspace(0, 1, 9)
    arms = []
    for i in range(star.arms):
        angle = star.phase + 2 * np.pi * i / star.arms + rng.normal(0, 0.04)
        bend = rng.normal(0, 0.15) * t**2
        radius = 0.5 * star.disc + t * (star.lengths[i] - 0.5 * star.disc)
        theta = angle + bend
        centre = np.c_[radius * np.cos(theta), radius * np.sin(theta)]
        tangent = np.gradient(centre, axis=0)
        tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
        normal = np.c_[-tangent[:, 1], tangent[:, 0]]
        arms.append((centre, normal, star.width * (1 - star.taper * t)))
    return arms


def _along(arm: tuple[np.ndarray, np.ndarray, np.ndarray], pos: float, across: float) -> np.ndarray:
    """A point on an arm at fraction ``pos`` of its length and ``across`` half-widths from its centreline."""
    centre, normal, half = arm
    x = np.linspace(0, 1, len(centre))
    c = np.array([np.interp(pos, x, centre[:, 0]), np.interp(pos, x, centre[:, 1])])
    n = np.array([np.interp(pos, x, normal[:, 0]), np.interp(pos, x, normal[:, 1])])
    return c + n * across * np.interp(pos, x, half)


def _arm_outline(arm: tuple[np.ndarray, np.ndarray, np.ndarray], scale: float = 1.0) -> np.ndarray:
    centre, normal, half = arm
    left, right = centre + normal * (half * scale)[:, None], centre - normal * (half * scale)[:, None]
    tip_dir = centre[-1] - centre[-2]
    tip_dir /= np.linalg.norm(tip_dir)
    cap = [
        centre[-1] + half[-1] * scale * (np.cos(a) * normal[-1] + np.sin(a) * tip_dir) for a in (1.0, 0, -1.0)
    ]
    return np.r_[left, np.array(cap)[::-1], right[::-1]]


def _colour(rgb: np.ndarray) -> tuple[int, int, int]:
    r, g, b = np.clip(rgb, 0, 255).astype(int)
    return int(r), int(g), int(b)


def render_star(star: StarIdentity, rng: np.random.Generator, size: int) -> Image.Image:
    """One photo of one individual: pose, bending, occluders and camera drawn from ``rng``."""
    big = size * SUPERSAMPLE
    image = ground(rng, big)
    draw = ImageDraw.Draw(image)
    matrix = pose_matrix(
        big,
        rotation=float(rng.uniform(0, 2 * np.pi)),
        scale=float(rng.uniform(0.85, 1.0)),
        centre=(float(rng.uniform(-0.1, 0.1)), float(rng.uniform(-0.1, 0.1))),
        tilt=(float(rng.uniform(-0.12, 0.12)), float(rng.uniform(-0.12, 0.12))),
    )
    body = star.base * rng.uniform(0.85, 1.15) * rng.uniform(0.92, 1.08, 3)
    marks = body + (255 - body) * 0.75 if star.light_marks else body * 0.25
    arms = _arm_geometry(star, rng)
    shadow = matrix @ np.array([[1, 0, 0.04], [0, 1, 0.05], [0, 0, 1]])
    for arm in arms:
        draw.polygon(project(shadow, _arm_outline(arm)), fill=(40, 40, 40))
    for arm in arms:
        draw.polygon(project(matrix, _arm_outline(arm)), fill=_colour(body))
        draw.polygon(
            project(matrix, _arm_outline(arm, 0.45 if star.stripe else 0.3)),
            fill=_colour(marks if star.stripe else body * 1.12),
        )
    draw.polygon(
        project(matrix, ellipse_points(np.zeros(2), (star.disc, star.disc), n=24)), fill=_colour(body)
    )
    for i, arm in enumerate(arms):
        if i % star.band_every:
            continue
        for pos, thick in star.bands:
            corners = ((pos, -1), (pos, 1), (pos + thick, 1), (pos + thick, -1))
            strip = np.array([_along(arm, p, s) for p, s in corners])
            draw.polygon(project(matrix, strip), fill=_colour(marks))
    if star.disc_ring:
        for radius, tone in ((star.disc_ring, marks), (star.disc_ring - 0.4, body)):
            ring = ellipse_points(np.zeros(2), (star.disc * radius,) * 2, n=20)
            draw.polygon(project(matrix, ring), fill=_colour(tone))
    for arm_index, pos, across, radius in star.spots:
        if arm_index < 0:
            r = star.disc * across
            centre = np.array([r * np.cos(pos + star.phase), r * np.sin(pos + star.phase)])
        else:
            centre = _along(arms[int(arm_index)], float(np.clip(pos, 0, 1)), across)
        draw.polygon(project(matrix, ellipse_points(centre, (radius, radius), n=8)), fill=_colour(marks))
    if rng.random() < 0.25:
        occlude(image, rng, matrix, 1)
    return develop(image, Camera.draw(rng), rng, size)


def _outing_folder(site: str, date: dt.date, rng: np.random.Generator) -> str:
    spellings = SITES[site]
    return spellings[int(rng.integers(len(spellings)))].format(y=date.year, m=date.month, d=date.day)


def write_stars(root: Path, identities: int, seed: int, image_size: int) -> int:
    """Write the tree ``root/<DATASET>/<individual>/<outing>/*.jpg``; returns the number of images."""
    sites = list(SITES)
    first_reef = int(np.ceil(identities * 0.6))
    signatures = seeded_rng(seed, STARS_KEY).permutation(SIGNATURES)
    written = 0
    for index in range(identities):
        rng = seeded_rng(seed, STARS_KEY, index)
        outings = 1 if rng.random() < 0.15 else int(rng.integers(2, 7))
        star = StarIdentity.draw(rng, outings, int(signatures[index % SIGNATURES]))
        site = sites[index >= first_reef]
        individual = f"star_{index + 1:03d}"
        date = dt.date(2023, 1, 1) + dt.timedelta(days=int(rng.integers(0, 500)))
        for outing in range(outings):
            outing_rng = seeded_rng(seed, STARS_KEY, index, outing)
            folder = _outing_folder(site, date, outing_rng)
            seen = star.at_outing(outing, outing_rng)
            first_photo = int(outing_rng.integers(1000, 9000))
            for photo in range(int(outing_rng.integers(3, 9))):
                photo_rng = seeded_rng(seed, STARS_KEY, index, outing, photo)
                image = render_star(seen, photo_rng, image_size)
                path = root / site / individual / folder / f"IMG_{first_photo + photo:04d}.jpg"
                save_jpeg(image, path, quality=int(photo_rng.integers(80, 95)))
                written += 1
            date += dt.timedelta(days=int(outing_rng.integers(6, 60)))
    return written
