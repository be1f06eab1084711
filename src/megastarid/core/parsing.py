"""Every command's options parsed by tyro from the command line, with ``--config FILE.yaml`` under the flags.

A command calls ``parse_options`` with its option dataclass (``core.options``). tyro makes the flags
(``--circle-weight``, ``--flag/--no-flag``) and the help; this module adds what tyro lacks:

- ``--config FILE.yaml`` on every command: the file's values (``core.yaml_config``) become tyro's
  ``default=``, so the precedence is dataclass default < YAML file < flag;
- one line per bad option (a ``UserError``, which ``run_main`` prints as ``megastarid: error: ...``
  with exit code 2) instead of tyro's boxed error, quoting at most ~100 characters of a bad value.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import tyro

from megastarid.core.errors import UserError, cut_long_words
from megastarid.core.options import REGISTRY
from megastarid.core.yaml_config import read_yaml

T = TypeVar("T")

CONFIG_HELP = (
    "Options may also come from a YAML file, --config FILE.yaml (keys: the option names, with dashes or "
    "underscores; numbers such as 1e-4 may be written plain or quoted); flags override it."
)


def parse_options(
    cls: type[T],
    argv: Sequence[str] | None,
    prog: str,
    description: str,
    config: Path | None = None,
) -> T:
    """Options of ``cls`` from ``argv`` (default ``sys.argv[1:]``), over ``--config FILE.yaml`` if given
    (else over ``config``, when not None), over the dataclass defaults. A bad value, flag or file raises a
    one-line ``UserError``; ``--help`` prints the help and exits 0."""
    args = list(sys.argv[1:] if argv is None else argv)
    args, config_file = _take_config(args)
    if config_file is None:
        config_file = config
    default = _base(cls, read_yaml(cls, config_file) if config_file is not None else {})
    help_asked = any(arg in ("-h", "--help") for arg in args)
    with _one_line_errors(wide=not help_asked):
        return tyro.cli(
            cls,
            args=args,
            prog=prog,
            description=f"{description}\n\n{CONFIG_HELP}".strip(),
            default=default,
            registry=REGISTRY,
        )


def option_value(argv: Sequence[str], name: str) -> str | None:
    """The last value given to option ``name`` (``--name VALUE`` or ``--name=VALUE``) before ``--``."""
    value = None
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == name:
            value = argv[i + 1] if i + 1 < len(argv) else None
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def switch_value(argv: Sequence[str], name: str) -> bool | None:
    """Switch ``--name``: on or off by the last ``--name`` / ``--no-name`` before ``--``; None if absent."""
    value = None
    no = "--no-" + name.removeprefix("--")
    for arg in argv:
        if arg == "--":
            break
        if arg in (name, no):
            value = arg == name
    return value


def _take_config(args: list[str]) -> tuple[list[str], Path | None]:
    """Remove ``--config FILE`` / ``--config=FILE`` from ``args`` (tyro does not know it); the last wins."""
    rest: list[str] = []
    config: Path | None = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest += args[i:]
            break
        if arg == "--config":
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise UserError("--config needs a file: --config FILE.yaml")
            config = Path(args[i + 1])
            i += 2
            continue
        if arg.startswith("--config="):
            config = Path(arg.split("=", 1)[1])
        else:
            rest.append(arg)
        i += 1
    return rest, config


def _base(cls: type[T], values: dict[str, Any]) -> Any:
    """The defaults overlaid with ``values``, as an instance of ``cls`` built without ``__init__``: it is
    only the starting point of the flags, so ``__post_init__`` judges the resolved options alone, once."""
    if not values:
        return tyro.MISSING_NONPROP
    base = object.__new__(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in values:
            value = values[f.name]
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = tyro.MISSING  # still required from the command line
        object.__setattr__(base, f.name, value)
    return base


# -- one-line errors ---------------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_RULE = re.compile(r"^[─\-]+$")
_PARSING = re.compile(r"^Error parsing (\S+?):\s*(.*)$")
_CHOICE = re.compile(r"^invalid choice (.*) for argument '(\S+)'\. Expected one of \((.*)\)\.?$")
_MISSING_VALUE = re.compile(r"^Missing value for argument '(\S+)'")


@contextlib.contextmanager
def _one_line_errors(wide: bool) -> Iterator[None]:
    """Turn tyro's error box on stderr + ``SystemExit(2)`` into a one-line ``UserError``.

    ``wide`` sets a huge terminal width (``COLUMNS``) while tyro runs so the box does not wrap the message;
    it stays off for ``--help``, which should fit the real terminal.
    """
    captured = io.StringIO()
    columns = os.environ.get("COLUMNS")
    if wide:
        os.environ["COLUMNS"] = "100000"
    exited = False
    try:
        with contextlib.redirect_stderr(captured):
            yield
    except SystemExit as exit_:
        exited = True
        if exit_.code not in (0, None):
            raise UserError(error_line(captured.getvalue())) from None
        raise
    finally:
        if wide:
            if columns is None:
                os.environ.pop("COLUMNS", None)
            else:
                os.environ["COLUMNS"] = columns
        if not exited:
            sys.stderr.write(captured.getvalue())  # anything else tyro said (a warning) still shows


def error_line(text: str) -> str:
    """The message of tyro's error box, as one line that starts with the option at fault when known; a
    value it quotes (or any one word) is cut to ~100 characters."""
    return cut_long_words(_box_message(text))


def _box_message(text: str) -> str:
    lines = [_ANSI.sub("", line).strip().strip("│").strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return "invalid options"
    if lines[0].startswith("╭"):
        body = lines[1:]
    elif len(lines) > 1 and _RULE.match(lines[1]):
        body = lines[2:]
    else:
        return lines[0]
    title = lines[0].strip("╭─╮ ")
    message = []
    for line in body:
        if _RULE.match(line) or line.startswith("╰"):
            break
        message.append(line)
    text = " ".join(message) or title
    if title == "Required options":
        missing = list(dict.fromkeys(re.findall(r"(?<!\S)(--[\w-]+)", text)))
        if missing:
            return f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required"
    match = _PARSING.match(text)
    if match:
        option, reason = match[1].split("/")[-1], match[2]  # aliases come first
        return f"{option} {reason}" if reason.startswith("must ") else f"{option}: {reason}"
    match = _CHOICE.match(text)
    if match:
        return f"{match[2]}: invalid choice {match[1]} (choose from {match[3]})"
    match = _MISSING_VALUE.match(text)
    if match:
        return f"{match[1]} needs a value"
    return text[:1].lower() + text[1:]
