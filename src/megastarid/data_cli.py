"""``megastarid data <check|show-augmentations>``: inspect a data set before training on it."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from megastarid.console import run_main

SUBCOMMANDS: dict[str, str] = {
    "check": "megastarid.data.check",
    "show-augmentations": "megastarid.data.preview",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in SUBCOMMANDS:
        names = "|".join(SUBCOMMANDS)
        print(f"usage: megastarid data {{{names}}} [options]", file=sys.stderr)
        return 0 if args[:1] in (["-h"], ["--help"]) else 2
    module = importlib.import_module(SUBCOMMANDS[args[0]])
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(run_main(main))
