"""``python -m megastarid.synth``: write the built-in synthetic star or wildlife set to a folder."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from megastarid.core.console import run_main
from megastarid.core.options import Seed
from megastarid.core.parsing import parse_options
from megastarid.data.synth import (
    DEFAULT_STAR_IDENTITIES,
    DEFAULT_STAR_IMAGE_SIZE,
    DEFAULT_WILDLIFE_IDENTITIES,
    DEFAULT_WILDLIFE_IMAGE_SIZE,
    generate_stars,
    generate_wildlife,
)

log = logging.getLogger(__name__)

DESCRIPTION = (
    "Write procedurally drawn sea stars as a star_dataset tree (--kind stars) or a WildlifeReID-10k-style "
    "folder with metadata.csv (--kind wildlife). Same seed, same bytes."
)


@dataclass(kw_only=True)
class SynthOptions:
    """Which synthetic set to write, where, and how big."""

    out: Path
    """folder to create (must be empty or absent)"""
    kind: Literal["stars", "wildlife"] = "stars"
    """which set: a star_dataset tree, or a WildlifeReID-10k-style folder with metadata.csv"""
    identities: Annotated[
        int | None,
        tyro.conf.arg(
            help=f"number of individuals (None: {DEFAULT_STAR_IDENTITIES} stars, "
            f"{DEFAULT_WILDLIFE_IDENTITIES} wildlife)"
        ),
    ] = None
    seed: Seed = 0
    """random seed, 0 to 2**32-1"""
    image_size: Annotated[
        int | None,
        tyro.conf.arg(
            help=f"square image side in pixels (None: {DEFAULT_STAR_IMAGE_SIZE} stars, "
            f"{DEFAULT_WILDLIFE_IMAGE_SIZE} wildlife)"
        ),
    ] = None
    overwrite: bool = False
    """replace a non-empty --out folder"""


def synth(options: SynthOptions) -> int:
    """Write the set and log how many images it holds."""
    stars = options.kind == "stars"
    generate = generate_stars if stars else generate_wildlife
    default_identities = DEFAULT_STAR_IDENTITIES if stars else DEFAULT_WILDLIFE_IDENTITIES
    identities = default_identities if options.identities is None else options.identities
    default_size = DEFAULT_STAR_IMAGE_SIZE if stars else DEFAULT_WILDLIFE_IMAGE_SIZE
    image_size = default_size if options.image_size is None else options.image_size
    started = time.perf_counter()
    out = generate(
        options.out,
        identities=identities,
        seed=options.seed,
        image_size=image_size,
        overwrite=options.overwrite,
    )
    images = sum(1 for _ in out.rglob("*.jpg"))
    log.info(
        "wrote %d synthetic %s images of %d identities to %s in %.1f s",
        images,
        options.kind,
        identities,
        out,
        time.perf_counter() - started,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return synth(parse_options(SynthOptions, argv, "megastarid synth", DESCRIPTION))


if __name__ == "__main__":
    sys.exit(run_main(main))
