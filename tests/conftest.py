"""Fixtures shared by the whole suite: small real image files written on the fly."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Keep every test on the CPU and light on threads: CI has 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: dataset -> individual -> outing folder -> number of images
StarLayout = Mapping[str, Mapping[str, Mapping[str, int]]]


def write_image(path: Path, size: tuple[int, int] = (64, 48), seed: int = 0, mode: str = "RGB") -> Path:
    """Write a small noisy image whose format follows the file suffix."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def make_star_tree(root: Path, layout: StarLayout, size: tuple[int, int] = (64, 48)) -> Path:
    """Write ``ROOT/<DATASET>/<individual>/<outing>/imgN.jpg`` files for the given layout."""
    seed = 0
    for dataset, individuals in layout.items():
        for individual, outings in individuals.items():
            for outing, count in outings.items():
                for i in range(count):
                    write_image(root / dataset / individual / outing / f"img{i}.jpg", size, seed)
                    seed += 1
    return root


@pytest.fixture
def star_tree(tmp_path: Path) -> Path:
    """A tiny star_dataset: 4 identities, dated outings, one single-outing identity."""
    layout = {
        "SiteA": {
            "star1": {
                "3_23_2024_dock": 2,
                "4_02_2024_dock": 2,
                "5_10_2024_reef": 2,
                "6_01_2024": 1,
                "7_15_2024": 2,
            },
            "star2": {"2024-03-23": 2, "2024-05-01": 3},
            "star3": {"2024-03-23": 3},
        },
        "SiteB": {"star1": {"20240101_survey": 2, "20240301_survey": 2}},
    }
    return make_star_tree(tmp_path / "stars", layout)


@pytest.fixture(scope="session")
def synthetic_stars(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small built-in synthetic star tree (8 identities, 96 px, seed 0) shared by the session: read only."""
    from megastarid.data.synth import generate_stars

    root = tmp_path_factory.mktemp("synthetic") / "stars"
    return generate_stars(root, identities=8, seed=0, image_size=96)


@pytest.fixture(scope="session")
def synthetic_wildlife(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic WildlifeReID-10k folder (20 identities, a SeaStarReID2023 slice): read only."""
    from megastarid.data.synth import generate_wildlife

    root = tmp_path_factory.mktemp("synthetic") / "wildlife"
    return generate_wildlife(root, identities=20, seed=0, image_size=64)


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny synthetic star (6 identities) and wildlife (8) sets at 48 px for end-to-end training runs, one
    pair per test module (a module's tests may add a corrupt photo to them)."""
    from megastarid.data.synth import generate_stars, generate_wildlife

    root = tmp_path_factory.mktemp("tiny")
    return {
        "stars": generate_stars(root / "stars", identities=6, image_size=48),
        "wildlife": generate_wildlife(root / "wildlife", identities=8, image_size=48),
    }


@pytest.fixture
def one_torch_thread():
    """Training tests on a shared 2-core machine: one intra-op thread avoids oversubscription stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
