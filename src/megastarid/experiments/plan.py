"""The grid's plan: which experiments exist, their phases, run folders and exact commands.

Everything here is pure (no training, no subprocess), so ``--dry-run`` and the runner share one
source of truth and a rerun can tell from the run folders alone what is finished.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from megastarid.core.errors import UserError
from megastarid.core.runfiles import (
    BEST_CHECKPOINT,
    CONFIG_YAML,
    LAST_CHECKPOINT,
    RUN_SUMMARY_JSON,
    STAR_SUMMARY_JSON,
)
from megastarid.core.yaml_config import load_yaml

#: strategy -> training phases in order (each phase is ``python -m megastarid.<phase>``)
STRATEGIES: dict[str, tuple[str, ...]] = {
    "pretrain_finetune": ("pretrain", "finetune"),
    "cotrain": ("cotrain",),
    "star_only": ("finetune",),
}
#: loss -> (circle weight, triplet weight)
LOSSES: dict[str, tuple[float, float]] = {
    "circle": (1.0, 0.0),
    "triplet": (0.0, 1.0),
    "combined": (0.7, 0.3),
}
DEFAULT_STRATEGIES = ("pretrain_finetune", "cotrain", "star_only")
DEFAULT_LOSSES = ("circle", "triplet")
#: phases that read each data set (the data-root options go only to these)
STAR_PHASES = frozenset({"finetune", "cotrain"})
WILDLIFE_PHASES = frozenset({"pretrain", "cotrain"})
#: phases whose run folder must also hold the star evaluation to count as finished
STAR_EVAL_PHASES = STAR_PHASES
#: training options the grid sets itself for every phase -> what to use instead
GRID_CONTROLLED = {
    "--epochs": "--epochs / --pretrain-epochs",
    "--seed": "--seeds",
    "--output-dir": "--output-dir",
    "--gpus": "--gpus",
    "--checkpoint": "the pretrain_finetune strategy",
    "--resume": "a rerun of the same grid command",
    "--overwrite": "a rerun of the same grid command",
    "--circle-weight": "--losses",
    "--triplet-weight": "--losses",
}


class PhaseState(Enum):
    """What a rerun does with a phase, read from its run folder."""

    FINISHED = "finished"  # skip
    RESUME = "resume"  # last.pth exists: continue with --resume
    OVERWRITE = "overwrite"  # folder exists without last.pth: start again with --overwrite
    NEW = "new"  # no folder yet


@dataclass(frozen=True)
class GridConfig:
    """Resolved grid-search options; ``train_args`` go to every phase, ``phase_args`` to one."""

    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    losses: tuple[str, ...] = DEFAULT_LOSSES
    seeds: tuple[int, ...] = (0,)
    epochs: int = 25
    pretrain_epochs: int | None = None
    gpus: tuple[int, ...] = ()
    output_dir: Path = Path("checkpoints/megastarid/grid")
    star_root: Path | None = None
    wildlife_root: Path | None = None
    train_args: tuple[str, ...] = ()
    phase_args: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Phase:
    """One training command of an experiment; ``argv`` lacks only the --resume/--overwrite flag."""

    name: str
    run_dir: Path
    epochs: int
    argv: tuple[str, ...]

    def state(self) -> PhaseState:
        return phase_state(self.name, self.run_dir)

    @property
    def options(self) -> tuple[str, ...]:
        """The training options alone (after ``python -m megastarid.<phase>``)."""
        return self.argv[3:]

    def command(self, gpu: int | None = None) -> list[str]:
        """The exact command for the phase's current state (``--resume`` / ``--overwrite`` added),
        pinned to one GPU with ``--gpus g``, or on the trainer's default device when ``gpu`` is None."""
        flag = {PhaseState.RESUME: ["--resume"], PhaseState.OVERWRITE: ["--overwrite"]}.get(self.state(), [])
        device = [] if gpu is None else ["--gpus", str(gpu)]
        return [*self.argv, *device, *flag]


@dataclass(frozen=True)
class Experiment:
    """One (strategy, loss, seed) cell of the grid, trained in its own folder ``out_dir``."""

    strategy: str
    loss: str
    seed: int
    out_dir: Path
    phases: tuple[Phase, ...]

    @property
    def name(self) -> str:
        return experiment_name(self.strategy, self.loss, self.seed)

    @property
    def final_phase(self) -> Phase:
        return self.phases[-1]

    def is_finished(self) -> bool:
        return all(phase.state() is PhaseState.FINISHED for phase in self.phases)

    def remaining_epochs(self) -> int:
        """Epochs still to train: the scheduler balances GPUs by this."""
        return sum(p.epochs for p in self.phases if p.state() is not PhaseState.FINISHED)


def experiment_name(strategy: str, loss: str, seed: int) -> str:
    return f"{strategy}-{loss}-seed{seed}"


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``, or None when it is missing or unreadable (a run cut off mid-write)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def phase_state(phase: str, run_dir: Path) -> PhaseState:
    """Finished = ``run_summary.json`` says so (and the star evaluation exists where the phase makes one)."""
    summary = read_json(run_dir / RUN_SUMMARY_JSON)
    finished = summary is not None and summary.get("status") == "finished"
    if finished and (phase not in STAR_EVAL_PHASES or (run_dir / STAR_SUMMARY_JSON).is_file()):
        return PhaseState.FINISHED
    if (run_dir / LAST_CHECKPOINT).is_file():
        return PhaseState.RESUME
    return PhaseState.OVERWRITE if run_dir.exists() else PhaseState.NEW


def _number(value: float) -> str:
    return f"{value:g}"


def _phase_argv(
    config: GridConfig, phase: str, epochs: int, loss: str, seed: int, run_dir: Path, checkpoint: Path | None
) -> list[str]:
    circle, triplet = LOSSES[loss]
    argv = [sys.executable, "-m", f"megastarid.{phase}", "--output-dir", str(run_dir)]
    argv += ["--epochs", str(epochs), "--seed", str(seed)]
    argv += ["--circle-weight", _number(circle), "--triplet-weight", _number(triplet)]
    if checkpoint is not None:
        argv += ["--checkpoint", str(checkpoint)]
    if phase in STAR_PHASES and config.star_root is not None:
        argv += ["--star-root", str(config.star_root)]
    if phase in WILDLIFE_PHASES and config.wildlife_root is not None:
        argv += ["--wildlife-root", str(config.wildlife_root)]
    return [*argv, *config.train_args, *config.phase_args.get(phase, ())]


def build_experiment(config: GridConfig, strategy: str, loss: str, seed: int) -> Experiment:
    """The experiment's phases with their commands; finetune after pretrain starts from its best.pth."""
    out_dir = config.output_dir / experiment_name(strategy, loss, seed)
    phases: list[Phase] = []
    for name in STRATEGIES[strategy]:
        run_dir = out_dir / name
        epochs = config.pretrain_epochs if name == "pretrain" and config.pretrain_epochs else config.epochs
        checkpoint = phases[-1].run_dir / BEST_CHECKPOINT if phases else None
        argv = _phase_argv(config, name, epochs, loss, seed, run_dir, checkpoint)
        phases.append(Phase(name, run_dir, epochs, tuple(argv)))
    return Experiment(strategy, loss, seed, out_dir, tuple(phases))


def build_plan(config: GridConfig) -> list[Experiment]:
    """Every strategy × loss × seed, in that nesting order."""
    return [
        build_experiment(config, strategy, loss, seed)
        for strategy in config.strategies
        for loss in config.losses
        for seed in config.seeds
    ]


def epoch_mismatches(experiments: Sequence[Experiment]) -> list[str]:
    """Finished phases trained for another number of epochs than planned: a rerun keeps (skips) them,
    so the user should know their table mixes settings."""
    notes = []
    for experiment in experiments:
        for phase in experiment.phases:
            if phase.state() is not PhaseState.FINISHED:
                continue
            try:
                saved = load_yaml(phase.run_dir / CONFIG_YAML, "run config")
            except UserError:  # unreadable, not UTF-8, not YAML: nothing to compare
                continue
            epochs = saved.get("epochs") if isinstance(saved, dict) else None
            if isinstance(epochs, int) and epochs != phase.epochs:
                notes.append(f"{phase.run_dir} finished with {epochs} epochs, not {phase.epochs}")
    return notes


def with_existing(config: GridConfig, planned: Sequence[Experiment]) -> list[Experiment]:
    """The planned experiments plus any other grid experiment already in the output folder.

    So results cover everything run into that folder, e.g. an earlier call with other ``--seeds``.
    """
    known = {e.name for e in planned}
    pattern = re.compile(rf"({'|'.join(STRATEGIES)})-({'|'.join(LOSSES)})-seed(\d+)")
    found = []
    if config.output_dir.is_dir():
        for folder in sorted(config.output_dir.iterdir()):
            match = pattern.fullmatch(folder.name)
            if match and folder.is_dir() and folder.name not in known:
                found.append(build_experiment(config, match[1], match[2], int(match[3])))
    return [*planned, *found]


def assign_devices(experiments: Sequence[Experiment], slots: Sequence[int | None]) -> dict[str, int | None]:
    """Spread unfinished experiments over device slots, longest first onto the least-loaded slot.

    Static (decided before anything runs) so ``--dry-run`` shows the device each experiment will use.
    """
    load = dict.fromkeys(range(len(slots)), 0)
    todo = [e for e in experiments if not e.is_finished()]
    assignment: dict[str, int | None] = {}
    for experiment in sorted(todo, key=lambda e: -e.remaining_epochs()):
        slot = min(load, key=lambda s: (load[s], s))
        load[slot] += experiment.remaining_epochs()
        assignment[experiment.name] = slots[slot]
    return assignment


def plural(number: int, noun: str) -> str:
    many = {"strategy": "strategies", "loss": "losses"}.get(noun, noun + "s")
    return f"{number} {noun if number == 1 else many}"


def device_label(gpu: int | None, default_device: str) -> str:
    return default_device if gpu is None else f"GPU {gpu}"


def format_plan(
    config: GridConfig,
    experiments: Sequence[Experiment],
    assignment: Mapping[str, int | None],
    default_device: str,
    notes: Mapping[str, Sequence[str]] | None = None,
    devices: str | None = None,
) -> str:
    """The human-readable plan: each experiment with loss weights, device, folder and phase commands
    (and its ``notes``, e.g. the sbatch parameters of its SLURM job); ``devices`` replaces the line on the
    local devices (for another launcher)."""
    counts = " × ".join(
        plural(len(items), noun)
        for items, noun in ((config.strategies, "strategy"), (config.losses, "loss"), (config.seeds, "seed"))
    )
    if devices is None and config.gpus:
        devices = f"GPUs {','.join(map(str, config.gpus))}, one experiment per GPU side by side"
    elif devices is None:
        devices = f"{default_device}, one experiment after another"
    lines = [
        f"Grid search: {plural(len(experiments), 'experiment')} ({counts}), output {config.output_dir}",
        f"Devices: {devices}",
    ]
    for index, experiment in enumerate(experiments, 1):
        circle, triplet = LOSSES[experiment.loss]
        finished = experiment.is_finished()
        device = "-" if finished else device_label(assignment[experiment.name], default_device)
        lines += [
            "",
            f"[{index}/{len(experiments)}] {experiment.name}" + ("  (finished: skipped)" if finished else ""),
            f"  strategy {experiment.strategy}, loss {experiment.loss} (circle weight {_number(circle)}, "
            f"triplet weight {_number(triplet)}), seed {experiment.seed}, device {device}",
            f"  folder {experiment.out_dir}",
            *(notes or {}).get(experiment.name, ()),
        ]
        for phase in experiment.phases:
            state = phase.state()
            gpu = None if finished else assignment[experiment.name]
            lines.append(f"  {phase.name}: {phase.epochs} epochs, {state.value}")
            if state is not PhaseState.FINISHED:
                lines.append(f"    $ {shlex.join(phase.command(gpu))}")
    return "\n".join(lines)
