"""The ``megastarid`` console script: one sub-command per ``python -m megastarid.<module>`` entry point."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from megastarid.core.console import run_main

#: sub-command -> (module whose ``main(argv)`` it runs, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("megastarid.pretrain", "pre-train on WildlifeReID-10k"),
    "finetune": ("megastarid.finetune", "fine-tune on star_dataset (or train star-only from scratch)"),
    "cotrain": ("megastarid.cotrain", "co-train on stars and wildlife with mixed batches"),
    "evaluate": ("megastarid.evaluate", "evaluate a checkpoint or saved embeddings on star_dataset"),
    "grid-search": ("megastarid.experiments.grid_search", "compare strategies x losses"),
    "synth": ("megastarid.synth", "write the built-in synthetic star or wildlife set"),
    "prepare": ("megastarid.prepare", "write a pre-resized copy of an image tree"),
    "data": ("megastarid.data_cli", "check a data set, export its split, preview augmentations"),
    "demo": ("megastarid.demo", "run the whole pipeline on the synthetic sets"),
    "catalogue": ("megastarid.catalogue", "build or describe the catalogue of known individuals (SQLite)"),
    "identify": ("megastarid.identify", "name the individuals in new photos against a catalogue"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "usage: megastarid <command> [options]\n\ncommands:\n" + "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"megastarid: error: unknown command {name!r}\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return run_main(module.main, rest)


if __name__ == "__main__":
    sys.exit(main())
