"""``python -m megastarid.experiments.grid_search``: compare training strategies × losses over seeds.

Each experiment runs its phases (``pretrain`` → ``finetune``, ``cotrain``, or ``finetune`` alone) as
separate ``python -m megastarid.<phase>`` processes in ``<output-dir>/<strategy>-<loss>-seed<s>/<phase>/``.
Training options are passed through after ``--`` to every phase (e.g. ``-- --backbone resnet18
--image-size 128``); ``--star-root`` / ``--wildlife-root`` go to the phases that read that data set, and
``--pretrain-args`` / ``--finetune-args`` / ``--cotrain-args`` to one phase only.
"""

from __future__ import annotations

import logging
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from megastarid.core.console import run_main
from megastarid.core.errors import UserError, quoted
from megastarid.core.options import GpuIdsOrNone, Names, Seeds, flag
from megastarid.core.parsing import parse_options
from megastarid.core.runfiles import GRID_SLURM_DIR
from megastarid.core.yaml_config import load_yaml
from megastarid.experiments.plan import (
    DEFAULT_LOSSES,
    DEFAULT_STRATEGIES,
    GRID_CONTROLLED,
    LOSSES,
    STRATEGIES,
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
from megastarid.experiments.slurm import (
    SlurmSettings,
    check_partition_gpus,
    parse_extra,
    parse_mem,
    parse_time,
    run_slurm_grid,
    sbatch_lines,
)
from megastarid.experiments.status import format_status, grid_status
from megastarid.training.config import (
    CotrainConfig,
    FinetuneConfig,
    PretrainConfig,
    TrainConfig,
)

log = logging.getLogger(__name__)

EXAMPLES = """\
Examples:
  python -m megastarid.experiments.grid_search --epochs 25 --gpus 0,1 --dry-run
  python -m megastarid.experiments.grid_search --epochs 25 --gpus 0,1 --seeds 0,1,2 \\
      --star-root data/star_dataset --wildlife-root data/WildlifeReID-10k -- --backbone convnext_tiny
  python -m megastarid.experiments.grid_search --strategies star_only,cotrain --losses combined \\
      --cotrain-args "--star-batch-ratio 0.5" -- --backbone resnet18 --image-size 128 --no-pretrained

Rerunning the same command skips finished experiments, resumes interrupted phases from last.pth and
retries failed ones; the result files always cover every experiment in the output folder."""

DESCRIPTION = (
    "Train every strategy x loss x seed and compare their star mAP / CMC. Training options for every phase "
    "go after -- (e.g. -- --backbone resnet18 --image-size 128 --no-pretrained); the grid sets --epochs, "
    "--seed, --output-dir, --gpus, --checkpoint and the loss weights itself.\n\n" + EXAMPLES
)

PHASES = ("pretrain", "finetune", "cotrain")


@dataclass
class GridSearchOptions:
    """The grid (strategies x losses x seeds), its devices and folders, and extra options per phase."""

    strategies: Names = DEFAULT_STRATEGIES
    """comma list of pretrain_finetune, cotrain, star_only"""
    losses: Names = DEFAULT_LOSSES
    """comma list of circle (weights 1/0), triplet (0/1), combined (0.7/0.3)"""
    seeds: Seeds = (0,)
    """comma list of seeds (each 0 to 2**32-1), one run each"""
    epochs: int = 25
    """epochs per training phase"""
    pretrain_epochs: int | None = None
    """epochs of the pretrain phase (None: --epochs)"""
    gpus: GpuIdsOrNone = None
    """comma list of GPU ids, one experiment per GPU side by side (None: one after another, default device)"""
    output_dir: Path = Path("checkpoints/megastarid/grid")
    """grid folder"""
    star_root: Path | None = None
    """star_dataset root, for finetune and cotrain (None: the built-in synthetic set)"""
    wildlife_root: Path | None = None
    """WildlifeReID-10k root, for pretrain and cotrain (None: the built-in synthetic set)"""
    pretrain_args: str = ""
    """extra options for the pretrain phase only, e.g. --pretrain-args '--lr 1e-4'"""
    finetune_args: str = ""
    """extra options for the finetune phase only, e.g. --finetune-args '--lr 1e-4'"""
    cotrain_args: str = ""
    """extra options for the cotrain phase only, e.g. --cotrain-args '--star-batch-ratio 0.5'"""
    dry_run: bool = False
    """print the plan and commands (and the sbatch parameters with --launcher slurm); train nothing"""
    status: bool = False
    """print each experiment's state in --output-dir (pending, running where, epoch reached, finished
    metrics, failed with the last error line) from its run folders and SLURM; start nothing"""
    launcher: Literal["local", "slurm"] = "local"
    """local: the phases run here (one experiment per --gpus id side by side); slurm: one SLURM array task
    per experiment, submitted with submitit (requeued on pre-emption, resumed from last.pth)"""
    partition: str | None = None
    """slurm: partition (None: the cluster's default)"""
    time: str = "24:00:00"
    """slurm: time limit of each experiment's job, minutes or [D-]HH:MM[:SS]; before it ends the job saves
    and is requeued"""
    gpus_per_experiment: int = 1
    """slurm: GPUs per experiment (0: CPU only; more than 1: DDP on the job's GPUs)"""
    cpus_per_gpu: int = 8
    """slurm: CPU cores per GPU (per experiment with --gpus-per-experiment 0)"""
    mem: str | None = None
    """slurm: memory per experiment, e.g. 64G (None: the cluster's default)"""
    account: str | None = None
    """slurm: account to charge"""
    qos: str | None = None
    """slurm: quality of service"""
    slurm_extra: tuple[str, ...] = ()
    """slurm: further sbatch options as KEY=VALUE, e.g. --slurm-extra constraint=a100 exclude=node7"""
    max_parallel: int | None = None
    """slurm: experiments running at once (the array's parallelism; None: as many as the cluster allows)"""

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise UserError(f"--epochs must be at least 1 (got {self.epochs})")
        if self.pretrain_epochs is not None and self.pretrain_epochs < 1:
            raise UserError(f"--pretrain-epochs must be at least 1 (got {self.pretrain_epochs})")
        self.strategies = _choices(self.strategies, tuple(STRATEGIES), "--strategies", "strategy")
        self.losses = _choices(self.losses, tuple(LOSSES), "--losses", "loss")
        if not self.seeds:
            raise UserError("--seeds: give at least one value, e.g. --seeds 0,1,2")
        self.seeds = tuple(dict.fromkeys(self.seeds))
        if self.gpus is not None:
            if not self.gpus:
                raise UserError("--gpus: give at least one value, e.g. --gpus 0,1")
            if min(self.gpus) < 0:
                raise UserError(f"--gpus: GPU ids are 0 or more (got {','.join(map(str, self.gpus))})")
            self.gpus = tuple(dict.fromkeys(self.gpus))
        for name, least in (("gpus_per_experiment", 0), ("cpus_per_gpu", 1), ("max_parallel", 1)):
            value = getattr(self, name)
            if value is not None and value < least:
                raise UserError(f"{flag(name)} must be at least {least} (got {value})")
        if self.launcher == "slurm" and self.gpus is not None:
            raise UserError("--gpus is for --launcher local; with --launcher slurm use --gpus-per-experiment")
        self.slurm_settings()  # the time, memory and extra options, checked now
        for name in ("star_root", "wildlife_root"):
            path = getattr(self, name)
            if path is not None and not path.is_dir():
                raise UserError(f"{flag(name)} {path}: no such folder")

    def slurm_settings(self) -> SlurmSettings:
        return SlurmSettings(
            partition=self.partition,
            time_min=parse_time(self.time),
            gpus_per_experiment=self.gpus_per_experiment,
            cpus_per_gpu=self.cpus_per_gpu,
            mem_gb=None if self.mem is None else parse_mem(self.mem),
            account=self.account,
            qos=self.qos,
            extra=parse_extra(self.slurm_extra),
            max_parallel=self.max_parallel,
        )


def _choices(names: tuple[str, ...], choices: Sequence[str], option: str, noun: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(names))
    if not names:
        raise UserError(f"{option}: give at least one of {', '.join(choices)}")
    for name in names:
        if name not in choices:
            raise UserError(f"{option}: unknown {noun} {quoted(name)} (choose from {', '.join(choices)})")
    return names


def _controlled(name: str) -> str | None:
    """The grid-set option that ``name`` means, also when ``name`` is a prefix of it (a likely typo)."""
    name = name.split("=", 1)[0]
    if name.startswith("--") and len(name) > 2:
        return next((option for option in GRID_CONTROLLED if option.startswith(name)), None)
    return None


def _yaml_keys(path: str) -> list[str]:
    data = load_yaml(Path(path))  # the options' own safe reader: UTF-8, no aliases, one-line errors
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
        raise UserError(f"{option}: cannot split {quoted(text)}: {err}") from None


def grid_config(options: GridSearchOptions, train_args: Sequence[str]) -> GridConfig:
    """The grid's plan input: the options, with ``train_args`` (after ``--``) going to every phase."""
    return GridConfig(
        strategies=options.strategies,
        losses=options.losses,
        seeds=options.seeds,
        epochs=options.epochs,
        pretrain_epochs=options.pretrain_epochs,
        gpus=options.gpus or (),
        output_dir=options.output_dir.resolve(),
        star_root=None if options.star_root is None else options.star_root.resolve(),
        wildlife_root=None if options.wildlife_root is None else options.wildlife_root.resolve(),
        train_args=_passed_through(train_args, "options after --"),
        phase_args={
            phase: _split_args(getattr(options, f"{phase}_args"), f"--{phase}-args") for phase in PHASES
        },
    )


PHASE_CONFIGS: dict[str, type[TrainConfig]] = {
    "pretrain": PretrainConfig,
    "finetune": FinetuneConfig,
    "cotrain": CotrainConfig,
}


def check_phase_options(config: GridConfig) -> None:
    """Parse the options passed through to each phase with that command's own options class, so a typo or
    a bad value is one error now instead of the same failure in every experiment. (The options the grid
    adds itself are left out: the finetune phase's --checkpoint only exists once pretrain has run.)"""
    phases = dict.fromkeys(phase for strategy in config.strategies for phase in STRATEGIES[strategy])
    for phase in phases:
        options = [*config.train_args, *config.phase_args.get(phase, ())]
        try:
            parse_options(PHASE_CONFIGS[phase], options, prog=f"megastarid {phase}", description="")
        except UserError as err:
            raise UserError(f"options for the {phase} phase: {err}") from None


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


def attach_values(argv: Sequence[str]) -> list[str]:
    """``--pretrain-args "--lr 1e-4"`` as ``--pretrain-args=--lr 1e-4``: tyro reads a value that starts
    with a dash only when it is attached with ``=``."""
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in {f"--{phase}-args" for phase in PHASES}:
            out.append(f"{arg}={next(args, '')}")
        else:
            out.append(arg)
    return out


def run(options: GridSearchOptions, train_args: Sequence[str] = ()) -> int:
    """Plan the grid, check it, then print it (``--dry-run``), or train it (here or on SLURM) and write
    the results; ``--status`` only reports."""
    if options.status:
        print(format_status(grid_status(options.output_dir.resolve()), options.output_dir))
        return 0
    config = grid_config(options, train_args)
    experiments = build_plan(config)
    check_phase_options(config)
    slurm = options.launcher == "slurm"
    slots: list[int | None] = list(config.gpus) or [None]
    assignment = assign_devices(experiments, slots)
    settings = options.slurm_settings()
    if slurm:
        check_partition_gpus(settings)
    gpus = settings.gpus_per_experiment
    device = f"SLURM job, {plural(gpus, 'GPU')}" if gpus else "SLURM job, CPU only"
    device = device if slurm else default_device()
    for note in epoch_mismatches(experiments):
        log.warning("kept as finished: %s (use a new --output-dir to train it again)", note)
    if options.dry_run:
        notes, devices = {}, None
        if slurm:
            sbatch = sbatch_lines(settings, config.output_dir / GRID_SLURM_DIR, len(assignment))
            flags = " ".join(line.split(maxsplit=1)[1] for line in sbatch)
            notes = {name: [f"  array task {i}: sbatch {flags}"] for i, name in enumerate(assignment)}
            devices = f"SLURM through submitit, one array task per unfinished experiment ({device})"
        print(format_plan(config, experiments, assignment, device, notes, devices))
        print("\n--dry-run: nothing was trained.")
        return 0
    if not slurm:
        check_gpus(config.gpus)
    log.info(
        "grid search: %s, %d to run, %d finished; output %s",
        plural(len(experiments), "experiment"),
        len(assignment),
        len(experiments) - len(assignment),
        config.output_dir,
    )
    try:
        if slurm:
            outcomes = run_slurm_grid(
                experiments, list(assignment), settings, config.output_dir / GRID_SLURM_DIR
            )
        else:
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


def main(argv: Sequence[str] | None = None) -> int:
    """Options before ``--`` are the grid's; everything after it goes to every training phase."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    prog = "megastarid grid-search"
    options = parse_options(GridSearchOptions, attach_values(argv[:cut]), prog, DESCRIPTION)
    return run(options, argv[cut + 1 :])


if __name__ == "__main__":
    sys.exit(run_main(main))
