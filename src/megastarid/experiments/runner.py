"""Run the grid: each phase a separate process, one worker per GPU (or one on the default device).

A failing experiment is recorded in its folder (``grid_status.json`` + the phase log) and the
others carry on. Ctrl-C / SIGTERM / SIGHUP stop scheduling, pass one SIGINT to each running phase (which
saves ``last.pth``), wait for it and write the results, so the same command resumes later.

A phase never outlives its grid: on Linux each phase asks the kernel (``prctl(PR_SET_PDEATHSIG)``) for a
SIGTERM when the grid dies, however it dies (``kill -9`` included); the phase then saves ``last.pth`` and
stops, so a rerun resumes it instead of racing an orphan that still writes the same folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from megastarid.core.files import write_json
from megastarid.core.runfiles import GRID_LOG_DIR, GRID_STATUS_JSON
from megastarid.experiments.plan import Experiment, Phase, PhaseState
from megastarid.experiments.results import format_metrics, star_metrics

log = logging.getLogger(__name__)

ERROR_LINES = 5
#: signals that stop the grid the way Ctrl-C does (the phases save, the results are written)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
#: what a phase receives when its grid dies: SIGTERM, which it answers by saving last.pth and stopping
PARENT_DEATH_SIGNAL = signal.SIGTERM
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(ignore: Sequence[int] = ()) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get ``PARENT_DEATH_SIGNAL`` when this process dies (Linux),
    else None. The kernel sends it when the *thread* that started the child ends: the grid's worker thread
    waits for its phase, so that is when the grid process dies. The child also ignores the ``ignore``
    signals (an ignored signal stays ignored across exec): a SLURM job's own signals, which reach every
    process of the job, are the job's to answer.

    The libc functions are looked up here, in the parent: the child, forked from a threaded program, only
    makes system calls (and exits at once if the grid died before it could)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl, set_handler = libc.prctl, libc.signal
    except (OSError, AttributeError):
        return None
    set_handler.argtypes, set_handler.restype = [ctypes.c_int, ctypes.c_void_p], ctypes.c_void_p
    parent = os.getpid()
    signum = int(PARENT_DEATH_SIGNAL)
    ignored = [int(sig) for sig in ignore]

    def preexec() -> None:
        for sig in ignored:
            set_handler(sig, int(signal.SIG_IGN))
        prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:  # the grid died between the fork and the prctl
            os._exit(1)

    return preexec


@dataclass(frozen=True)
class Outcome:
    """How one experiment ended in this invocation."""

    name: str
    status: str  # finished | skipped | failed | interrupted
    seconds: float = 0.0
    error: str = ""


class Processes:
    """The phase processes running now, so an interrupt can reach each one exactly once."""

    def __init__(self, ignore: Sequence[int] = ()) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self.stopping = threading.Event()
        self._ignore = tuple(ignore)  # signals the phases ignore (see die_with_parent)

    @contextlib.contextmanager
    def start(self, command: Sequence[str], log_file: IO[str]) -> Iterator[subprocess.Popen]:
        with self._lock:
            if self.stopping.is_set():
                raise InterruptedError
            # Own session: a terminal Ctrl-C (or hang-up) reaches only the grid, which forwards it once;
            # and the phase dies with the grid (die_with_parent), so it can never be left orphaned.
            process = subprocess.Popen(
                command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(self._ignore),
            )
            self._running.add(process)
        try:
            yield process
        finally:
            with self._lock:
                self._running.discard(process)

    def stop(self) -> None:
        with self._lock:
            self.stopping.set()
            for process in self._running:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGINT)


def log_tail(text: str, lines: int = ERROR_LINES) -> str:
    """The last non-empty lines of a log (progress-bar carriage returns count as line breaks)."""
    kept = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def write_status(experiment: Experiment, **fields: object) -> None:
    write_json(experiment.out_dir / GRID_STATUS_JSON, fields)


def run_phase(
    phase: Phase, gpu: int | None, log_path: Path, processes: Processes, devices: Sequence[str] = ()
) -> tuple[int, str]:
    """Run one phase, appending its stdout and stderr to ``log_path``; returns (exit code, error tail)."""
    command = [*phase.command(gpu), *devices]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as log_file:
        log_file.write(f"=== {datetime.now(UTC).isoformat(timespec='seconds')} $ {shlex.join(command)}\n")
        log_file.flush()
        start = log_file.tell()
        with processes.start(command, log_file) as process:
            code = process.wait()
    with log_path.open(encoding="utf-8", errors="replace") as log_file:
        log_file.seek(start)
        return code, log_tail(log_file.read())


def run_experiment(
    experiment: Experiment, gpu: int | None, label: str, processes: Processes, devices: Sequence[str] = ()
) -> Outcome:
    """Run the experiment's unfinished phases in order; the first failure ends it and is recorded.
    ``devices`` are device options added to every phase (a SLURM job's ``--accelerator gpu --devices N``)."""
    experiment.out_dir.mkdir(parents=True, exist_ok=True)
    (experiment.out_dir / GRID_STATUS_JSON).unlink(missing_ok=True)
    started = time.monotonic()
    for phase in experiment.phases:
        state = phase.state()
        if state is PhaseState.FINISHED:
            continue
        log_path = experiment.out_dir / GRID_LOG_DIR / f"{phase.name}.log"
        log.info("%s   %s: %s, %d epochs (log %s)", label, phase.name, state.value, phase.epochs, log_path)
        try:
            code, tail = run_phase(phase, gpu, log_path, processes, devices)
        except InterruptedError:
            return Outcome(experiment.name, "interrupted", time.monotonic() - started)
        if processes.stopping.is_set():
            return Outcome(experiment.name, "interrupted", time.monotonic() - started)
        if code == 0 and phase.state() is not PhaseState.FINISHED:
            code, tail = 1, f"{phase.name} exited without a finished run in {phase.run_dir}\n{tail}".strip()
        if code != 0:
            seconds = time.monotonic() - started
            write_status(
                experiment,
                status="failed",
                phase=phase.name,
                returncode=code,
                error=tail,
                log=str(log_path),
                command=shlex.join([*phase.command(gpu), *devices]),
                seconds=round(seconds, 1),
            )
            return Outcome(experiment.name, "failed", seconds, tail)
    return Outcome(experiment.name, "finished", time.monotonic() - started)


def _announce_end(label: str, experiment: Experiment, outcome: Outcome) -> None:
    if outcome.status == "finished":
        metrics = format_metrics(star_metrics(experiment.final_phase.run_dir))
        log.info("%s finished %s in %.1f s: %s", label, experiment.name, outcome.seconds, metrics)
    elif outcome.status == "failed":
        last = outcome.error.splitlines()[-1] if outcome.error else "no output"
        log.info("%s FAILED %s after %.1f s: %s", label, experiment.name, outcome.seconds, last)
    else:
        log.info("%s interrupted %s after %.1f s (rerun to resume)", label, experiment.name, outcome.seconds)


def _worker(
    queue: Sequence[tuple[str, Experiment]],
    gpu: int | None,
    device: str,
    processes: Processes,
    outcomes: dict[str, Outcome],
    done: threading.Event,
) -> None:
    try:
        for label, experiment in queue:
            if processes.stopping.is_set():
                return
            log.info("%s start %s on %s", label, experiment.name, device)
            try:
                outcome = run_experiment(experiment, gpu, label, processes)
            except OSError as err:  # e.g. the output folder cannot be written: record it, go on
                outcome = Outcome(experiment.name, "failed", error=f"{type(err).__name__}: {err}")
                with contextlib.suppress(OSError):
                    write_status(experiment, status="failed", phase="", returncode=None, error=outcome.error)
            outcomes[experiment.name] = outcome
            _announce_end(label, experiment, outcome)
    finally:
        done.set()


def _wait(events: Sequence[threading.Event]) -> None:
    """Wait for the workers by polling their events: an interrupted ``Thread.join`` can wrongly mark a
    running thread as stopped (CPython gh-90882), and then the grid would not wait for its phases."""
    while not all(event.is_set() for event in events):
        time.sleep(0.2)


@contextlib.contextmanager
def stop_signals_as_interrupt() -> Iterator[None]:
    """SIGTERM (a cluster pre-emption) and SIGHUP (the terminal or ssh session closed) are handled like
    Ctrl-C: the running phases save and stop, and the results are written, instead of the grid dying
    at once and leaving its phases running."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_grid(
    experiments: Sequence[Experiment],
    assignment: Mapping[str, int | None],
    slots: Sequence[int | None],
    default_device: str,
) -> dict[str, Outcome]:
    """Run every unfinished experiment on its assigned slot; slots run side by side.

    Raises KeyboardInterrupt after the running phases have saved and stopped.
    """
    total = len(experiments)
    outcomes: dict[str, Outcome] = {}
    queues: dict[int | None, list[tuple[str, Experiment]]] = {slot: [] for slot in slots}
    for index, experiment in enumerate(experiments, 1):
        label = f"[{index}/{total}]"
        if experiment.name not in assignment:
            log.info("%s skip %s (finished)", label, experiment.name)
            outcomes[experiment.name] = Outcome(experiment.name, "skipped")
        else:
            queues[assignment[experiment.name]].append((label, experiment))
    processes = Processes()
    workers = [(slot, queue, threading.Event()) for slot, queue in queues.items() if queue]
    threads = [
        threading.Thread(
            target=_worker,
            args=(queue, slot, default_device if slot is None else f"GPU {slot}", processes, outcomes, done),
            name=f"grid-{slot}",
        )
        for slot, queue, done in workers
    ]
    events = [done for _, _, done in workers]
    with stop_signals_as_interrupt():
        for thread in threads:
            thread.start()
        try:
            _wait(events)
        except KeyboardInterrupt:
            log.info("interrupt: stopping the running phases (they save last.pth); rerun to resume")
            processes.stop()
            _wait(events)
            raise
    for thread in threads:
        thread.join()
    return outcomes
