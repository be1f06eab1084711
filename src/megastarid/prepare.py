"""``megastarid prepare``: write a pre-resized copy of an image tree once (see ``data.resize``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from megastarid.core.console import run_main
from megastarid.core.parsing import parse_options
from megastarid.data.resize import JPEG_QUALITY, prepare_tree


@dataclass(kw_only=True)
class PrepareOptions:
    """Which tree to copy, where, and how small."""

    src: Path
    """tree to copy (star root or WildlifeReID-10k root)"""
    dst: Path
    """where to write the copy"""
    size: int = 620
    """shorter side in pixels"""
    quality: int = JPEG_QUALITY
    """JPEG quality"""
    workers: int = min(8, os.cpu_count() or 1)
    """threads"""


def prepare(options: PrepareOptions) -> int:
    """Copy the tree, resizing photos, and print what was done."""
    report = prepare_tree(options.src, options.dst, options.size, options.quality, options.workers)
    counts = report.counts
    print(
        f"prepared {options.dst}: {counts['resized']} photos resized, {counts['copied']} already small "
        f"(copied), {counts['other']} other files copied, {counts['skipped']} already done, "
        f"{len(report.unreadable)} unreadable"
    )
    if report.unreadable:
        print("unreadable photos (not copied):")
        print("\n".join(f"  {path}: {reason}" for path, reason in report.unreadable.items()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    description = "Write a pre-resized copy of an image tree (same relative paths; shorter side = --size)."
    return prepare(parse_options(PrepareOptions, argv, "megastarid prepare", description))


if __name__ == "__main__":
    sys.exit(run_main(main))
