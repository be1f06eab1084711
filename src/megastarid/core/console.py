"""Shared plumbing for every command: logging set-up and turning user errors into one line."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence

from megastarid.core.errors import UserError

Main = Callable[[Sequence[str] | None], int | None]


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr in a terse format; the first call wins so sub-commands can be nested."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s: %(message)s" if verbose else "%(message)s",
        stream=sys.stderr,
    )


def run_main(main: Main, argv: Sequence[str] | None = None) -> int:
    """Run a command's ``main``; a ``UserError`` becomes ``megastarid: error: ...`` and exit code 2."""
    setup_logging()
    try:
        return int(main(argv) or 0)
    except UserError as err:
        print(f"megastarid: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("megastarid: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
