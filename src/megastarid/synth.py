"""``python -m megastarid.synth``: write the built-in synthetic star or wildlife set to a folder."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from megastarid.core.console import run_main
from megastarid.data.synth import (
    DEFAULT_STAR_IDENTITIES,
    DEFAULT_STAR_IMAGE_SIZE,
    DEFAULT_WILDLIFE_IDENTITIES,
    DEFAULT_WILDLIFE_IMAGE_SIZE,
    generate_stars,
    generate_wildlife,
)

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megastarid synth",
        description="Write procedurally drawn sea stars as a star_dataset tree (--kind stars) or a "
        "WildlifeReID-10k-style folder with metadata.csv (--kind wildlife). Same seed, same bytes.",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to create (must be empty or absent)")
    parser.add_argument(
        "--kind", choices=("stars", "wildlife"), default="stars", help="which set (default: stars)"
    )
    parser.add_argument(
        "--identities",
        type=int,
        help=f"number of individuals (default: {DEFAULT_STAR_IDENTITIES} stars, "
        f"{DEFAULT_WILDLIFE_IDENTITIES} wildlife)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--image-size",
        type=int,
        help=f"square image side in px (default: {DEFAULT_STAR_IMAGE_SIZE} stars, "
        f"{DEFAULT_WILDLIFE_IMAGE_SIZE} wildlife)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    stars = args.kind == "stars"
    generate = generate_stars if stars else generate_wildlife
    default_identities = DEFAULT_STAR_IDENTITIES if stars else DEFAULT_WILDLIFE_IDENTITIES
    identities = default_identities if args.identities is None else args.identities
    default_size = DEFAULT_STAR_IMAGE_SIZE if stars else DEFAULT_WILDLIFE_IMAGE_SIZE
    image_size = default_size if args.image_size is None else args.image_size
    started = time.perf_counter()
    out = generate(
        args.out, identities=identities, seed=args.seed, image_size=image_size, overwrite=args.overwrite
    )
    images = sum(1 for _ in out.rglob("*.jpg"))
    log.info(
        "wrote %d synthetic %s images of %d identities to %s in %.1f s",
        images,
        args.kind,
        identities,
        out,
        time.perf_counter() - started,
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
