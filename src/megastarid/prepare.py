"""``megastarid prepare``: write a pre-resized copy of an image tree once (see ``data.resize``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from megastarid.core.console import run_main
from megastarid.data.resize import JPEG_QUALITY, prepare_tree


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="megastarid prepare",
        description="Write a pre-resized copy of an image tree (same relative paths; shorter side = --size).",
    )
    parser.add_argument(
        "--src", type=Path, required=True, help="tree to copy (star root or WildlifeReID-10k root)"
    )
    parser.add_argument("--dst", type=Path, required=True, help="where to write the copy")
    parser.add_argument("--size", type=int, default=620, help="shorter side in pixels (default 620)")
    parser.add_argument("--quality", type=int, default=JPEG_QUALITY, help="JPEG quality (default 95)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="threads")
    args = parser.parse_args(argv)
    report = prepare_tree(args.src, args.dst, args.size, args.quality, args.workers)
    counts = report.counts
    print(
        f"prepared {args.dst}: {counts['resized']} photos resized, {counts['copied']} already small "
        f"(copied), {counts['other']} other files copied, {counts['skipped']} already done, "
        f"{len(report.unreadable)} unreadable"
    )
    if report.unreadable:
        print("unreadable photos (not copied):")
        print("\n".join(f"  {path}: {reason}" for path, reason in report.unreadable.items()))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
