"""The base of every option dataclass and the rules every option of every command obeys.

A command declares its options once, as a dataclass whose fields carry their help in docstrings and
check their values in ``__post_init__`` (a ``UserError`` naming the option); ``core.parsing`` reads them
from the command line and ``core.yaml_config`` from a ``--config`` file. The rules, checked here once
rather than per field, hold on both:

- a float option is a finite number (``--lr inf``, ``--weight-decay nan`` are refused);
- a seed (``Seed``, ``Seeds``) lies in 0 … 2**32-1, the range numpy and torch accept;
- a comma list comes in one token (``--gpus 0,1``, ``--ks 1,5,10,20``), as the original tool spelled it;
- a run-control switch (``run_control()``: ``--resume``, ``--overwrite``) steers one invocation: it comes
  from the command line only, never from a YAML file, and is not part of the recorded options
  (``recorded``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any

import tyro
from tyro.constructors import PrimitiveConstructorSpec

from megastarid.core.errors import quoted


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


#: tyro's constructor registry with the float rule, for every command's parse
REGISTRY = tyro.constructors.ConstructorRegistry()
REGISTRY.primitive_rule(_float_rule)


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
