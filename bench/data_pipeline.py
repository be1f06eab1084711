"""Star training data pipeline throughput: ours against a naive pipeline, measured in the same run.

Ours: ``load_rgb`` with reduced (draft) JPEG decoding, then the star train transform, which crops to the
training size before the costly underwater ops. Naive: full-size decode, the same ops at full size, then the
crop/resize. Both run on a few dozen 4000x3000 phone-sized JPEGs written to a temporary folder, on one
thread as in a DataLoader worker, with the same augmentation probabilities and seed.

    .venv/bin/python bench/data_pipeline.py [--images 24] [--image-size 224]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from megastarid.core.console import run_main
from megastarid.core.errors import UserError
from megastarid.data.images import load_rgb
from megastarid.data.transforms import (
    AlbumentationsTransform,
    StarAugmentConfig,
    build_star_train_transform,
    normalise_ops,
    star_augment_ops,
    star_crop_op,
)

PHOTO_SIZE = (4000, 3000)  # width, height of a 12-megapixel phone photo
TARGET_SPEEDUP = 4.0

Pipeline = Callable[[Path], torch.Tensor]


def write_photos(folder: Path, count: int, seed: int) -> list[Path]:
    """Phone-sized JPEGs: smooth colour fields with sensor-like noise (pure noise would not compress)."""
    rng = np.random.default_rng(seed)
    grain = rng.normal(0, 6, (PHOTO_SIZE[1], PHOTO_SIZE[0], 3)).astype(np.int16)
    paths = []
    for i in range(count):
        field = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).resize(
            PHOTO_SIZE, Image.BICUBIC
        )
        shifted = np.roll(grain, rng.integers(0, PHOTO_SIZE[1]), axis=0)
        pixels = np.clip(np.asarray(field, dtype=np.int16) + shifted, 0, 255).astype(np.uint8)
        path = folder / f"photo_{i:03d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


@dataclass
class Timing:
    """Seconds spent by one pipeline: wall clock and this process's CPU time."""

    wall: float = 0.0
    cpu: float = 0.0

    def rates(self, images: int) -> tuple[float, float]:
        return images / self.wall, images / self.cpu


def time_interleaved(pipelines: dict[str, Pipeline], paths: list[Path], seed: int) -> dict[str, Timing]:
    """Run the pipelines image by image in turn, so load from other processes hits both alike."""
    timings = {name: Timing() for name in pipelines}
    for pipeline in pipelines.values():
        pipeline(paths[0])  # warm-up: first-call allocations and lazy imports
    for i, path in enumerate(paths):
        for name, pipeline in pipelines.items():
            torch.manual_seed(seed + i)
            wall, cpu = time.perf_counter(), time.process_time()
            pipeline(path)
            timings[name].wall += time.perf_counter() - wall
            timings[name].cpu += time.process_time() - cpu
    return timings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24, help="number of 4000x3000 JPEGs (default 24)")
    parser.add_argument("--image-size", type=int, default=224, help="training image size (default 224)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.images < 2:
        raise UserError(f"--images must be >= 2, got {args.images}")
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    cfg = StarAugmentConfig()
    size = args.image_size
    ours_transform = build_star_train_transform(size, cfg)
    naive_transform = AlbumentationsTransform(
        [*star_augment_ops(cfg), star_crop_op(size, cfg), *normalise_ops()]
    )

    def ours(path: Path) -> torch.Tensor:
        return ours_transform(load_rgb(path, min_side=size))

    def naive(path: Path) -> torch.Tensor:
        return naive_transform(load_rgb(path))

    with tempfile.TemporaryDirectory(prefix="megastarid-bench-") as folder:
        started = time.perf_counter()
        paths = write_photos(Path(folder), args.images, args.seed)
        took = time.perf_counter() - started
        print(f"wrote {len(paths)} JPEGs of {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} in {took:.0f} s")
        timings = time_interleaved({"ours": ours, "naive": naive}, paths, args.seed)
    print(f"image size {size}, one thread, default StarAugmentConfig, seed {args.seed}")
    labels = {
        "ours": f"ours  (draft decode -> crop to {size} -> augment)",
        "naive": f"naive (full decode -> augment at full size -> crop to {size})",
    }
    for name, label in labels.items():
        wall, cpu = timings[name].rates(len(paths))
        print(f"  {label}: {wall:7.2f} images/s wall, {cpu:7.2f} images per CPU-second")
    wall_ratio = timings["naive"].wall / timings["ours"].wall
    cpu_ratio = timings["naive"].cpu / timings["ours"].cpu
    verdict = "meets" if min(wall_ratio, cpu_ratio) >= TARGET_SPEEDUP else "BELOW"
    target = f"{verdict} the {TARGET_SPEEDUP:.0f}x target"
    print(f"  speed-up: {wall_ratio:.1f}x wall, {cpu_ratio:.1f}x CPU ({target})")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
