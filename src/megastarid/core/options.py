"""Every command's options: one dataclass, parsed by tyro, with ``--config FILE.yaml`` under the flags.

A command declares its options once, as a dataclass whose fields carry their help in docstrings and
check their values in ``__post_init__`` (a ``UserError`` naming the option), and calls
``parse_options``. tyro makes the flags (``--circle-weight``, ``--flag/--no-flag``) and the help; this
module adds the three things tyro lacks:

- ``--config FILE.yaml`` on every command: the file's values become tyro's ``default=``, so the
  precedence is dataclass default < YAML file < flag;
- one line per bad option (a ``UserError``, which ``run_main`` prints as ``megastarid: error: ...``
  with exit code 2) instead of tyro's boxed error;
- comma lists in one token (``--gpus 0,1``, ``--ks 1,5,10,20``), as the original tool spelled them.

and the rules every option of every command obeys, checked here once rather than per field:

- a float option is a finite number (``--lr inf``, ``--weight-decay nan`` are refused), from a flag or a
  YAML file; in YAML a number written as a string (``lr: 1e-4``, which YAML 1.1 reads as a string) is
  read as the number;
- a seed (``Seed``, ``Seeds``) lies in 0 … 2**32-1, the range numpy and torch accept;
- a run-control switch (``run_control()``: ``--resume``, ``--overwrite``) steers one invocation: it comes
  from the command line only, never from a YAML file, and is not part of the recorded options
  (``recorded``);
- a YAML file is UTF-8, small, without aliases (``*name``: a few hundred bytes of nested aliases expand
  to gigabytes), and an error quotes at most ~100 characters of a bad value (``core.errors.quoted``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import tyro
import yaml
from tyro.constructors import PrimitiveConstructorSpec

from megastarid.core.errors import QUOTE_LIMIT, UserError, quoted

log = logging.getLogger(__name__)

T = TypeVar("T")

CONFIG_HELP = (
    "Options may also come from a YAML file, --config FILE.yaml (keys: the option names, with dashes or "
    "underscores; numbers such as 1e-4 may be written plain or quoted); flags override it."
)


@dataclasses.dataclass
class Options:
    """The base of every option dataclass. Each ``__post_init__`` checks its own fields and then calls
    ``super().__post_init__()``, so option mixins (star data, split, calibration ...) compose in any
    command and every one of their checks runs."""

    def __post_init__(self) -> None:
        """Nothing to check at the root."""


def flag(name: str) -> str:
    """A field name as its command-line flag: ``circle_weight`` -> ``--circle-weight``."""
    return "--" + name.replace("_", "-")


# -- run-control switches ----------------------------------------------------------------------------------

#: field metadata key marking a run-control switch
RUN_CONTROL = "megastarid_run_control"


def run_control(default: bool = False) -> Any:
    """A field for a switch that steers this one invocation (``--resume``, ``--overwrite``) rather than
    describing the run: it is read from the command line only (a YAML file's value is ignored) and left out
    of ``recorded``, so a saved config.yaml or checkpoint never replays it."""
    return dataclasses.field(default=default, metadata={RUN_CONTROL: True})


def run_control_names(cls: Any) -> frozenset[str]:
    """The run-control fields of an option dataclass (or instance)."""
    return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get(RUN_CONTROL))


def recorded(options: Any) -> dict[str, Any]:
    """The options that describe a run, field by field (every field but the run-control switches)."""
    skip = run_control_names(options)
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options) if f.name not in skip}


# -- numbers -----------------------------------------------------------------------------------------------

#: the seed range numpy's and torch's generators accept
SEED_MAX = 2**32 - 1


def finite_float(text: str) -> float:
    """A float option's value from its text; ``inf``, ``nan`` and the unreadable are a ``ValueError``."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"must be a number, got {quoted(text)}") from None
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {quoted(text)}")
    return value


def seed_value(text: str) -> int:
    """A seed from its text: an integer in 0 … 2**32-1, else a ``ValueError``."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= SEED_MAX:
        raise ValueError(f"must be an integer from 0 to {SEED_MAX} (2**32-1), got {quoted(text)}")
    return value


def _float_rule(type_info: Any) -> PrimitiveConstructorSpec | None:
    """tyro reads every ``float`` option with ``finite_float``; a ``float | None`` one also takes ``None``
    (one rule for the pair, so a bad value is this one message rather than tyro's report per member)."""
    kind = type_info.type
    union = typing.get_origin(kind) in (typing.Union, types.UnionType)
    if kind is not float and not (union and set(typing.get_args(kind)) == {float, type(None)}):
        return None
    optional = kind is not float

    def parse(args: list[str]) -> float | None:
        return None if optional and args[0] == "None" else finite_float(args[0])

    def is_instance(value: Any) -> bool:
        return (optional and value is None) or (
            isinstance(value, int | float) and not isinstance(value, bool)
        )

    return PrimitiveConstructorSpec(
        nargs=1,
        metavar="{None}|FLOAT" if optional else "FLOAT",
        instance_from_str=parse,
        is_instance=is_instance,
        str_from_instance=lambda value: [str(value)],
    )


_REGISTRY = tyro.constructors.ConstructorRegistry()
_REGISTRY.primitive_rule(_float_rule)


# -- comma lists -------------------------------------------------------------------------------------------


def comma_list(kind: Callable[[str], object], metavar: str, invalid: str) -> PrimitiveConstructorSpec:
    """How tyro reads a ``tuple[kind, ...]`` option from one ``a,b,c`` token (and shows its default).

    ``invalid`` (formatted with ``text``, the token quoted, and ``reason``, ``kind``'s error) says why a
    token is refused. Blank items are dropped; order and repeats are kept, for the field's
    ``__post_init__`` to judge. The spec also serves ``tuple | None``
    fields (``None`` = not given), so the error stays this one line rather than tyro's union report.
    """

    def parse(args: list[str]) -> tuple:
        text = args[0]
        try:
            return tuple(kind(part.strip()) for part in text.split(",") if part.strip())
        except ValueError as err:
            raise ValueError(invalid.format(text=quoted(text), reason=err)) from None

    return PrimitiveConstructorSpec(
        nargs=1,
        metavar=metavar,
        instance_from_str=parse,
        is_instance=lambda value: value is None or isinstance(value, tuple),
        str_from_instance=lambda value: [str(value) if value is None else ",".join(map(str, value))],
    )


_INTS = comma_list(int, "N,N,...", "{text} is not a comma list of integers")
_GPU_IDS = comma_list(int, "ID,ID,...", "must be comma-separated device ids such as 0,1, got {text}")
_NAMES = comma_list(str, "NAME,NAME,...", "{text} is not a comma list")
_SEEDS = comma_list(seed_value, "SEED,SEED,...", "{reason}")
_SEED = PrimitiveConstructorSpec(
    nargs=1,
    metavar="SEED",
    instance_from_str=lambda args: seed_value(args[0]),
    is_instance=lambda value: isinstance(value, int) and not isinstance(value, bool),
    str_from_instance=lambda value: [str(value)],
)

#: ``--seeds 0,1,2``, ``--ks 1,5,10,20``
Ints = Annotated[tuple[int, ...], _INTS]
#: ``--strategies a,b``
Names = Annotated[tuple[str, ...], _NAMES]
#: ``--wildlife-datasets A,B`` (None: not given)
NamesOrNone = Annotated[tuple[str, ...] | None, _NAMES]
#: ``--gpus 0,1`` (None: not given)
GpuIdsOrNone = Annotated[tuple[int, ...] | None, _GPU_IDS]
#: ``--seed 7``: an integer in 0 … 2**32-1 (the one seed rule of every command)
Seed = Annotated[int, _SEED]
#: ``--seeds 0,1,2``: each one a ``Seed``
Seeds = Annotated[tuple[int, ...], _SEEDS]


# -- parsing -----------------------------------------------------------------------------------------------


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
            registry=_REGISTRY,
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
    return _LONG_WORD.sub(_cut_word, _box_message(text))


#: a quoted value or a word longer than what an error message echoes
_LONG_WORD = re.compile(rf"'[^']{{{QUOTE_LIMIT + 1},}}'|\S{{{QUOTE_LIMIT + 1},}}")


def _cut_word(match: re.Match[str]) -> str:
    word = match[0]
    if word.startswith("'") and word.endswith("'") and len(word) > 1:
        inner = word[1:-1]
        if inner.endswith("…") and len(inner) <= QUOTE_LIMIT + 1:
            return word  # already cut by ``quoted``
        return f"'{inner[:QUOTE_LIMIT]}…' ({len(inner)} characters)"
    return f"{word[:QUOTE_LIMIT]}… ({len(word)} characters)"


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


# -- YAML --------------------------------------------------------------------------------------------------


#: largest YAML file read: an options file is a few hundred bytes
MAX_YAML_BYTES = 1_000_000


class _AliasRefused(yaml.YAMLError):
    """A YAML alias (``*name``) in a file that must not have one."""


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases: a few hundred bytes of nested ``*name`` references ("billion
    laughs") expand to gigabytes of values, and an options file never needs one."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _AliasRefused(
                f"line {event.start_mark.line + 1}: aliases such as *{quoted(event.anchor)[1:-1]} are not "
                "accepted in an options file; write the value out"
            )
        return super().compose_node(parent, index)


def load_yaml(path: Path, what: str = "--config") -> Any:
    """The YAML document in ``path``, read safely: at most ``MAX_YAML_BYTES``, UTF-8, no aliases. Anything
    wrong is one ``UserError`` line that starts with ``what`` and the file."""
    where = f"{what} {path}"
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(MAX_YAML_BYTES + 1)
    except OSError as err:
        raise UserError(f"{where}: cannot read it ({err.strerror or err})") from None
    if len(data) > MAX_YAML_BYTES:
        raise UserError(f"{where}: larger than {MAX_YAML_BYTES:,} bytes; an options file is a few lines")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{where}: not UTF-8 text (byte 0x{data[err.start]:02x} at position {err.start}); "
            "save it as UTF-8"
        ) from None
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader that also refuses aliases
    except _AliasRefused as err:
        raise UserError(f"{where}: {err}") from None
    except yaml.YAMLError as err:
        first = next((line for line in str(err).splitlines() if line.strip()), "")
        raise UserError(f"{where}: not valid YAML ({_LONG_WORD.sub(_cut_word, first)})") from None
    except RecursionError:
        raise UserError(f"{where}: not valid YAML (nested too deeply)") from None


def read_yaml(cls: type, path: Path) -> dict[str, Any]:
    """A YAML mapping of option names (dashes or underscores) to values, each checked against its field's
    type; anything wrong is one line naming the file (and the key). Run-control switches (``--resume``,
    ``--overwrite``) are command-line only: a file's value for one is ignored."""
    raw = load_yaml(path)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"--config {path}: expected a mapping of option: value")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    switches = run_control_names(cls)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise UserError(f"--config {path}: unknown option {quoted(key)}")
        if name in switches:
            if value:
                log.info("--config %s: %s is a command-line switch; the file's value is ignored", path, key)
            continue
        try:
            values[name] = convert(hints[name], value)
        except ValueError as err:
            raise UserError(f"--config {path}: {key}: {err}") from None
    return values


def convert(annotation: Any, value: Any) -> Any:
    """``value`` (from YAML) as the type ``annotation`` says, or ``ValueError`` saying what was expected.

    The command line's rules hold: a float is finite (a string that reads as one, ``"1e-4"``, counts: YAML
    1.1 reads ``1e-4`` without a dot as a string), a ``Seed`` is in range, a comma list reads its items."""
    kind, specs = _unwrap(annotation)
    union = typing.get_origin(kind) in (typing.Union, types.UnionType)
    options = typing.get_args(kind) if union else (kind,)
    if value is None:
        if type(None) in options:
            return None
        raise ValueError("a value is required")
    kind = next(option for option in options if option is not type(None))
    kind, more = _unwrap(kind)
    specs += more
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if specs and typing.get_origin(kind) is tuple:  # a comma list: "a,b" or a YAML list
        if isinstance(value, list):
            value = ",".join(str(item) for item in value)
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise ValueError(f"expected a list or a comma list, got {quoted(value)}")
        return specs[0].instance_from_str([str(value)])
    if specs:  # one value read by its own rule (a Seed)
        if not (isinstance(value, str) or (number and isinstance(value, int))):
            raise ValueError(f"expected {specs[0].metavar}, got {quoted(value)}")
        return specs[0].instance_from_str([str(value)])
    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        text = str(value) if isinstance(value, str) or number else None
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(map(str, choices))}, got {quoted(value)}")
        return text
    if kind is float and (number or isinstance(value, str)):
        return finite_float(str(value).strip())
    ok = (
        (kind is bool and isinstance(value, bool))
        or (kind is int and number and isinstance(value, int))
        or (kind in (str, Path) and (isinstance(value, str) or number))
    )
    if not ok:
        raise ValueError(f"expected {kind.__name__}, got {quoted(value)}")
    return kind(str(value)) if kind in (str, Path) else kind(value)


def _unwrap(annotation: Any) -> tuple[Any, list[PrimitiveConstructorSpec]]:
    """``Annotated[X, spec, ...]`` -> (X, [spec]); anything else -> (it, [])."""
    if typing.get_origin(annotation) is Annotated:
        base, *extras = typing.get_args(annotation)
        return base, [extra for extra in extras if isinstance(extra, PrimitiveConstructorSpec)]
    return annotation, []
