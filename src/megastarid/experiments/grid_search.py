"""``python -m megastarid.experiments.grid_search``: compare training strategies × losses over seeds.

Each experiment runs its phases (``pretrain`` → ``finetune``, ``cotrain``, or ``finetune`` alone) as
separate ``python -m megastarid.<phase>`` processes in ``<output-dir>/<strategy>-<loss>-seed<s>/<phase>/``.
Training options are passed through after ``--`` to every phase (e.g. ``-- --backbone resnet18
--image-size 128``); ``--star-root`` / ``--wildlife-root`` go to the phases that read that data set, and
``--pretrain-args`` / ``--finetune-args`` / ``--cotrain-args`` to one phase only.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from megastarid.core.console import run_main
from megastarid.core.errors import UserError
from megastarid.experiments.plan import (
    DEFAULT_LOSSES,
    DEFAULT_STRATEGIES,
    GRID_CONTROLLED,
    LOSSES,
    STRATEGIES,
    Experiment,
    GridConfig,
    assign_devices,
    build_plan,
    epoch_mismatches,
    format_plan,
    plural,
    with_existing,
)
from megastarid.experiments.results import RESULTS_CSV, RESULTS_PNG, SUMMARY_MD, write_results
from megastarid.experiments.runner import run_grid
from megastarid.training.config import (
    CotrainConfig,
    FinetuneConfig,
    PretrainConfig,
    TrainConfig,
    build_parser,
)

log = logging.getLogger(__name__)

EPILOG = """\
examples:
  python -m megastarid.experiments.grid_search --epochs 25 --gpus 0,1 --dry-run
  python -m megastarid.experiments.grid_search --epochs 25 --gpus 0,1 --seeds 0,1,2 \\
      --star-root data/star_dataset --wildlife-root data/WildlifeReID-10k -- --backbone convnext_tiny
  python -m megastarid.experiments.grid_search --strategies star_only,cotrain --losses combined \\
      --cotrain-args "--star-batch-ratio 0.5" -- --backbone resnet18 --image-size 128 --no-pretrained

Rerunning the same command skips finished experiments, resumes interrupted phases from last.pth and
retries failed ones; the result files always cover every experiment in the output folder.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megastarid grid-search",
        description="Train every strategy × loss × seed and compare their star mAP / CMC. Training options "
        "for every phase go after -- (e.g. -- --backbone resnet18 --image-size 128 --no-pretrained); the "
        "grid sets --epochs, --seed, --output-dir, --gpus, --checkpoint and the loss weights itself.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--strategies",
        default=",".join(DEFAULT_STRATEGIES),
        help=f"comma list of {', '.join(STRATEGIES)} (default: all)",
    )
    parser.add_argument(
        "--losses",
        default=",".join(DEFAULT_LOSSES),
        help="comma list of circle (weights 1/0), triplet (0/1), combined (0.7/0.3) "
        "(default: circle,triplet)",
    )
    parser.add_argument("--seeds", default="0", help="comma list of seeds, one run each (default: 0)")
    parser.add_argument("--epochs", type=int, default=25, help="epochs per training phase (default: 25)")
    parser.add_argument(
        "--pretrain-epochs", type=int, default=None, help="epochs of the pretrain phase (default: --epochs)"
    )
    parser.add_argument(
        "--gpus",
        default=None,
        help="comma list of GPU ids; experiments run side by side, one per GPU "
        "(default: one after another on the trainer's default device)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("checkpoints/megastarid/grid"),
        help="grid folder (default: checkpoints/megastarid/grid)",
    )
    parser.add_argument(
        "--star-root",
        type=Path,
        default=None,
        help="star_dataset root, for finetune and cotrain (default: built-in synthetic set)",
    )
    parser.add_argument(
        "--wildlife-root",
        type=Path,
        default=None,
        help="WildlifeReID-10k root, for pretrain and cotrain (default: built-in synthetic set)",
    )
    for phase in ("pretrain", "finetune", "cotrain"):
        parser.add_argument(
            f"--{phase}-args",
            default="",
            metavar="ARGS",
            help=f'extra options for the {phase} phase only, e.g. --{phase}-args="--lr 1e-4"',
        )
    parser.add_argument("--dry-run", action="store_true", help="print the plan and commands; train nothing")
    return parser


def _names(text: str, choices: Sequence[str], option: str, noun: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise UserError(f"{option}: give at least one of {', '.join(choices)}")
    for name in names:
        if name not in choices:
            raise UserError(f"{option}: unknown {noun} {name!r} (choose from {', '.join(choices)})")
    return names


def _integers(text: str, option: str, example: str) -> tuple[int, ...]:
    values = [item.strip() for item in text.split(",") if item.strip()]
    if not values:
        raise UserError(f"{option}: give at least one value, e.g. {option} {example}")
    try:
        numbers = tuple(dict.fromkeys(int(value) for value in values))
    except ValueError:
        raise UserError(
            f"{option}: {text!r} is not a comma list of integers, e.g. {option} {example}"
        ) from None
    return numbers


def _controlled(name: str) -> str | None:
    """The grid-set option that ``name`` means, also as an abbreviation argparse would expand."""
    name = name.split("=", 1)[0]
    if name.startswith("--") and len(name) > 2:
        return next((option for option in GRID_CONTROLLED if option.startswith(name)), None)
    return None


def _yaml_keys(path: str) -> list[str]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"--config {path}: cannot read it as YAML ({err})") from None
    return ["--" + str(key).replace("_", "-") for key in data] if isinstance(data, dict) else []


def _passed_through(args: Sequence[str], where: str) -> tuple[str, ...]:
    """Training options to forward; those the grid sets per experiment are refused with the alternative,
    also inside a ``--config`` YAML file (it would apply to every experiment alike)."""
    for i, arg in enumerate(args):
        option = _controlled(arg)
        if option:
            raise UserError(
                f"{where}: {option} is set by the grid for each experiment; use {GRID_CONTROLLED[option]}"
            )
        if arg.split("=", 1)[0] == "--config":
            path = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
            clash = next((key for key in _yaml_keys(path) if key in GRID_CONTROLLED), None)
            if clash:
                raise UserError(
                    f"--config {path}: {clash[2:]} is set by the grid for each experiment; "
                    f"remove it and use {GRID_CONTROLLED[clash]}"
                )
    return tuple(args)


def _split_args(text: str, option: str) -> tuple[str, ...]:
    try:
        return _passed_through(shlex.split(text), option)
    except ValueError as err:
        raise UserError(f"{option}: cannot split {text!r}: {err}") from None


def _existing_dir(path: Path | None, option: str) -> Path | None:
    if path is not None and not path.is_dir():
        raise UserError(f"{option} {path}: no such folder")
    return None if path is None else path.resolve()


def parse_config(argv: Sequence[str]) -> tuple[GridConfig, bool]:
    """Options → (config, dry_run); everything after ``--`` is passed to every phase."""
    argv = list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = _parser().parse_args(argv[:cut])
    if args.epochs < 1:
        raise UserError(f"--epochs must be at least 1 (got {args.epochs})")
    if args.pretrain_epochs is not None and args.pretrain_epochs < 1:
        raise UserError(f"--pretrain-epochs must be at least 1 (got {args.pretrain_epochs})")
    gpus = _integers(args.gpus, "--gpus", "0,1") if args.gpus is not None else ()
    if any(gpu < 0 for gpu in gpus):
        raise UserError(f"--gpus: GPU ids are 0 or more (got {args.gpus})")
    config = GridConfig(
        strategies=_names(args.strategies, tuple(STRATEGIES), "--strategies", "strategy"),
        losses=_names(args.losses, tuple(LOSSES), "--losses", "loss"),
        seeds=_integers(args.seeds, "--seeds", "0,1,2"),
        epochs=args.epochs,
        pretrain_epochs=args.pretrain_epochs,
        gpus=gpus,
        output_dir=args.output_dir.resolve(),
        star_root=_existing_dir(args.star_root, "--star-root"),
        wildlife_root=_existing_dir(args.wildlife_root, "--wildlife-root"),
        train_args=_passed_through(argv[cut + 1 :], "options after --"),
        phase_args={
            phase: _split_args(getattr(args, f"{phase}_args"), f"--{phase}-args")
            for phase in ("pretrain", "finetune", "cotrain")
        },
    )
    return config, args.dry_run


PHASE_CONFIGS: dict[str, type[TrainConfig]] = {
    "pretrain": PretrainConfig,
    "finetune": FinetuneConfig,
    "cotrain": CotrainConfig,
}


def check_phase_options(experiments: Sequence[Experiment]) -> None:
    """Parse each phase's options with that command's own parser, so a typo in a passed-through option
    is one error now instead of the same failure in every experiment."""
    checked: set[str] = set()
    for experiment in experiments:
        for phase in experiment.phases:
            if phase.name in checked:
                continue
            checked.add(phase.name)
            parser = build_parser(PHASE_CONFIGS[phase.name], prog=f"megastarid {phase.name}", description="")
            try:
                parser.parse_args(phase.options)
            except UserError as err:
                raise UserError(f"options for the {phase.name} phase: {err}") from None


def default_device() -> str:
    """What a phase without ``--gpus`` trains on (the trainer picks the first GPU, else the CPU)."""
    import torch

    return "GPU 0 (trainer default)" if torch.cuda.is_available() else "CPU"


def check_gpus(gpus: Sequence[int], device_count: Callable[[], int] | None = None) -> None:
    """Refuse GPU ids this machine does not have before any experiment starts (not N identical failures)."""
    if not gpus:
        return
    if device_count is None:
        import torch

        device_count = torch.cuda.device_count
    count = device_count()
    listed = ",".join(map(str, gpus))
    if count == 0:
        raise UserError(f"--gpus {listed}: no CUDA GPU is visible here; leave --gpus out to train on the CPU")
    missing = [gpu for gpu in gpus if gpu >= count]
    if missing:
        raise UserError(f"--gpus {listed}: GPU {missing[0]} does not exist (this machine has {count})")


def main(argv: Sequence[str] | None = None) -> int:
    config, dry_run = parse_config(sys.argv[1:] if argv is None else argv)
    experiments = build_plan(config)
    check_phase_options(experiments)
    slots: list[int | None] = list(config.gpus) or [None]
    assignment = assign_devices(experiments, slots)
    device = default_device()
    for note in epoch_mismatches(experiments):
        log.warning("kept as finished: %s (use a new --output-dir to train it again)", note)
    if dry_run:
        print(format_plan(config, experiments, assignment, device))
        print("\n--dry-run: nothing was trained.")
        return 0
    check_gpus(config.gpus)
    log.info(
        "grid search: %s, %d to run, %d finished; output %s",
        plural(len(experiments), "experiment"),
        len(assignment),
        len(experiments) - len(assignment),
        config.output_dir,
    )
    try:
        outcomes = run_grid(experiments, assignment, slots, device)
    finally:
        write_results(with_existing(config, experiments), config.output_dir)
        log.info(
            "results: %s",
            ", ".join(str(config.output_dir / name) for name in (RESULTS_CSV, SUMMARY_MD, RESULTS_PNG)),
        )
    print((config.output_dir / SUMMARY_MD).read_text(encoding="utf-8"))
    failed = [name for name, outcome in outcomes.items() if outcome.status == "failed"]
    if failed:
        log.info(
            "%d of %s failed (errors in %s): %s",
            len(failed),
            plural(len(experiments), "experiment"),
            RESULTS_CSV,
            ", ".join(failed),
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
