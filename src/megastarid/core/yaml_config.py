"""Option values from a YAML file (``--config FILE.yaml``, a saved run config), read safely and checked
against the option dataclass's field types by the command line's own rules.

- a YAML file is UTF-8, small, without aliases (``*name``: a few hundred bytes of nested aliases expand
  to gigabytes), and an error quotes at most ~100 characters of a bad value (``core.errors.quoted``);
- a float is finite, and a number written as a string (``lr: 1e-4``, which YAML 1.1 reads as a string) is
  read as the number; a seed is in range; a comma list may be a YAML list;
- a run-control switch (``--resume``, ``--overwrite``) is command-line only: a file's value is ignored.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from tyro.constructors import PrimitiveConstructorSpec

from megastarid.core.errors import UserError, cut_long_words, quoted
from megastarid.core.options import finite_float, run_control_names

log = logging.getLogger(__name__)

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
        raise UserError(f"{where}: not valid YAML ({cut_long_words(first)})") from None
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
    kind, specs = unwrap(annotation)
    union = typing.get_origin(kind) in (typing.Union, types.UnionType)
    options = typing.get_args(kind) if union else (kind,)
    if value is None:
        if type(None) in options:
            return None
        raise ValueError("a value is required")
    kind = next(option for option in options if option is not type(None))
    kind, more = unwrap(kind)
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


def unwrap(annotation: Any) -> tuple[Any, list[PrimitiveConstructorSpec]]:
    """``Annotated[X, spec, ...]`` -> (X, [spec]); anything else -> (it, [])."""
    if typing.get_origin(annotation) is Annotated:
        base, *extras = typing.get_args(annotation)
        return base, [extra for extra in extras if isinstance(extra, PrimitiveConstructorSpec)]
    return annotation, []
