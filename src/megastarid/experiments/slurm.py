"""Run the grid on a SLURM cluster through submitit: one array task per experiment.

submitit writes the sbatch script, submits the array, keeps each job's stdout/stderr and result, tells its
state and cancels it; we keep what carries our semantics: a job runs ``runner.run_experiment`` (finished
phases skipped, interrupted ones resumed from ``last.pth``, failures recorded in the experiment folder),
and the results table is rebuilt from the run folders.

Pre-emption and time limits: SLURM signals every process of the job, SIGTERM on pre-emption (and
``scancel --signal=TERM``), submitit's SIGUSR2 shortly before the time limit. The phase answers SIGTERM
(and the SIGINT the job forwards) by saving ``last.pth`` mid-epoch and exiting; it ignores SIGUSR2. The
job then hands over to submitit's own requeue handler, which resubmits the same experiment
(``checkpoint()``) with ``scontrol requeue``; the requeued job resumes the phase from ``last.pth``, so no
epoch is lost or repeated. SLURM counts the requeues (``SLURM_RESTART_COUNT``), and the experiment's
``grid_job.json`` keeps them for the results table and ``--status``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import submitit

# submitit's own sbatch writer, so the dry run shows exactly the lines a submission writes (no executor
# needed: SlurmExecutor refuses to exist where there is no srun)
from submitit.slurm.slurm import _convert_mem, _make_sbatch_string

from megastarid.core.errors import UserError, quoted
from megastarid.core.files import write_json
from megastarid.core.runfiles import GRID_JOB_JSON, GRID_STATUS_JSON
from megastarid.experiments.plan import Experiment
from megastarid.experiments.results import format_metrics, read_job, star_metrics
from megastarid.experiments.runner import (
    Outcome,
    Processes,
    log_tail,
    run_experiment,
    stop_signals_as_interrupt,
    write_status,
)

log = logging.getLogger(__name__)

#: seconds between looks at the jobs while the grid waits for them
POLL_S = 5.0
#: what the phases never answer themselves: the job's own checkpoint signal (see the module docstring)
PREEMPT_SIGNAL: signal.Signals = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)


@dataclass(frozen=True)
class SlurmSettings:
    """The sbatch resources of every experiment's job (one array task each)."""

    partition: str | None = None
    time_min: int = 24 * 60
    gpus_per_experiment: int = 1
    cpus_per_gpu: int = 8
    mem_gb: float | None = None
    account: str | None = None
    qos: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
    max_parallel: int | None = None

    def parameters(self) -> dict[str, Any]:
        """submitit's ``SlurmExecutor.update_parameters`` arguments."""
        params: dict[str, Any] = {
            "job_name": "megastarid-grid",
            "time": self.time_min,
            "cpus_per_task": self.cpus_per_gpu * max(1, self.gpus_per_experiment),
        }
        optional = {
            "partition": self.partition,
            "gpus_per_node": self.gpus_per_experiment or None,
            "mem": self.mem_gb,
            "account": self.account,
            "qos": self.qos,
            "array_parallelism": self.max_parallel,
            "additional_parameters": dict(self.extra) or None,
        }
        return params | {key: value for key, value in optional.items() if value is not None}

    def device_args(self) -> tuple[str, ...]:
        """Phase options that train on all of the job's GPUs (SLURM shows the job only its own)."""
        if self.gpus_per_experiment > 1:
            return ("--accelerator", "gpu", "--devices", str(self.gpus_per_experiment))
        return ()


def parse_time(text: str) -> int:
    """sbatch's ``--time`` forms (MINUTES, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in whole minutes,
    rounded up."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise UserError(f"--time {quoted(text)}: use minutes or [D-]HH:MM[:SS], e.g. 90, 12:00:00, 2-00:00")
    days, first, second, third = (int(part) if part else None for part in match.groups())
    assert first is not None  # the pattern's one mandatory group
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = days * 86400 + first * 3600 + (second or 0) * 60 + (third or 0)
    elif third is not None:  # HH:MM:SS
        seconds = first * 3600 + (second or 0) * 60 + third
    elif second is not None:  # MM:SS
        seconds = first * 60 + second
    else:
        seconds = first * 60
    if seconds <= 0:
        raise UserError(f"--time {quoted(text)}: must be more than 0")
    return -(-seconds // 60)


def parse_mem(text: str) -> float:
    """sbatch's ``--mem`` (a number with K, M, G or T; M when none) in GB, as submitit takes it."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)B?", text.strip(), re.IGNORECASE)
    if not match or float(match[1]) <= 0:
        raise UserError(f"--mem {quoted(text)}: use a size such as 64G or 16000M")
    scale = {"K": 1 / 1024**2, "M": 1 / 1024, "G": 1.0, "T": 1024.0}[(match[2] or "M").upper()]
    return float(match[1]) * scale


def parse_extra(items: Sequence[str]) -> dict[str, str]:
    """``--slurm-extra KEY=VALUE`` pairs: any further sbatch option (``constraint=a100``)."""
    extra = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key):
            raise UserError(f"--slurm-extra {quoted(item)}: use KEY=VALUE, e.g. constraint=a100")
        extra[key.replace("_", "-")] = value
    return extra


def partition_gres(partition: str | None) -> tuple[str, list[str]] | None:
    """The name of ``partition`` (None: the cluster's default one) and the generic resources of its nodes
    (``sinfo``'s ``%G``, e.g. ``gpu:a100:4``); None when sinfo cannot tell (no sinfo, no cluster, no such
    partition)."""
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%P|%G"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    found: dict[str, list[str]] = {}
    for line in out.stdout.splitlines():
        name, _, resources = line.strip().partition("|")
        if name.rstrip("*") == partition or (partition is None and name.endswith("*")):
            found.setdefault(name.rstrip("*"), []).append(resources)
    return next(iter(found.items()), None)


def check_partition_gpus(settings: SlurmSettings) -> None:
    """Before anything is submitted (and in the dry run): GPUs asked of a partition whose nodes have none is
    one line saying so, instead of sbatch's "Invalid generic resource (gres) specification"."""
    if not settings.gpus_per_experiment:
        return
    found = partition_gres(settings.partition)
    if found is None or any("gpu" in resources for resources in found[1]):
        return
    name = found[0] if settings.partition else f"{found[0]} (the default)"
    raise UserError(
        f"SLURM partition {name} has no GPUs: pass --gpus-per-experiment 0 to train on its CPUs, or "
        "--partition with one that has GPUs (see sinfo -o '%P %G')"
    )


def sbatch_lines(settings: SlurmSettings, folder: Path, array_size: int) -> list[str]:
    """The ``#SBATCH`` lines submitit writes for the grid's array job (the dry run shows them)."""
    params = settings.parameters()
    params.pop("array_parallelism", None)
    if "mem" in params:
        params["mem"] = _convert_mem(params["mem"])  # as the executor converts it
    text = _make_sbatch_string(
        command="",
        folder=folder / "%j",
        map_count=array_size if array_size > 1 else None,
        array_parallelism=settings.max_parallel or 256,
        **params,
    )
    return [line for line in text.splitlines() if line.startswith("#SBATCH")]


# ----------------------------------------------------------------- the job (runs on the cluster)


def record_job(experiment: Experiment, job_id: str, restarts: int = 0, **fields: Any) -> None:
    """Update ``grid_job.json`` with the job running the experiment; ``requeues`` keeps, per job id, how
    often SLURM restarted it, so the count spans every invocation of the grid."""
    record = read_job(experiment)
    counts = record.get("requeues")
    counts = dict(counts) if isinstance(counts, dict) else {}
    counts[job_id] = max(int(counts.get(job_id, 0)), restarts)
    write_json(experiment.out_dir / GRID_JOB_JSON, record | fields | {"job_id": job_id, "requeues": counts})


class ExperimentJob(submitit.helpers.Checkpointable):
    """One experiment as a submitit job: its unfinished phases, in order, as in the local runner.

    ``checkpoint()`` (inherited) resubmits this same object: the rerun reads the phase states from the run
    folders, so it resumes the interrupted phase from ``last.pth`` and skips the finished ones.
    """

    def __init__(self, experiment: Experiment, label: str, devices: Sequence[str] = ()) -> None:
        self.experiment, self.label, self.devices = experiment, label, tuple(devices)

    def __call__(self) -> Outcome:
        record_job(
            self.experiment,
            submitit.JobEnvironment().job_id,
            restarts=int(os.environ.get("SLURM_RESTART_COUNT", "0")),
            node=socket.gethostname(),
            started=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        requeue = signal.getsignal(PREEMPT_SIGNAL)  # submitit's checkpoint-and-requeue handler
        processes = Processes(ignore=(PREEMPT_SIGNAL,))
        received: list[int] = []

        def stop(signum: int, frame: Any) -> None:
            received.append(signum)
            processes.stop()  # the phase saves last.pth and exits

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, PREEMPT_SIGNAL)}
        try:
            outcome = run_experiment(self.experiment, None, self.label, processes, self.devices)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if received and outcome.status == "interrupted" and callable(requeue):
            log.info("%s saved after %s: requeuing", self.experiment.name, signal.Signals(received[0]).name)
            try:
                requeue(received[0], None)  # calls checkpoint(), runs scontrol requeue and exits
            except subprocess.CalledProcessError:  # SLURM itself is ending (or requeuing) the job
                raise SystemExit(1) from None
        return outcome


# ----------------------------------------------------------------- the grid's side (submits and waits)


def queued(job_ids: Sequence[str]) -> dict[str, tuple[str, str]] | None:
    """job id -> (state, node or pending reason) for the jobs still in SLURM's queue; None when squeue
    cannot be asked."""
    if not job_ids:
        return {}
    base_ids = sorted({job_id.split("_")[0] for job_id in job_ids})
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i|%T|%N|%r", "-j", ",".join(base_ids)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        # squeue refuses ids that have left the queue ("Invalid job id specified"): none are queued
        return {} if "Invalid job id" in out.stderr else None
    jobs = {}
    for line in out.stdout.splitlines():
        job_id, state, node, reason = [*line.split("|"), "", "", ""][:4]
        jobs[job_id] = (state, node if node else reason)
    return jobs


def _outcome(job: submitit.Job, experiment: Experiment) -> Outcome:
    """How a job that has left the queue ended: its result, or its error recorded in the folder."""
    try:
        result = job.result()
    except Exception as err:  # the job died outside our code (killed, out of memory, node failure)
        text = log_tail(str(err))
        stderr = job.paths.stderr
        error = f"{text}\n(job {job.job_id}; log {stderr})".strip()
        write_status(experiment, status="failed", phase="", returncode=None, error=error, log=str(stderr))
        return Outcome(experiment.name, "failed", error=error)
    if isinstance(result, Outcome):
        return result
    return Outcome(experiment.name, "failed", error=f"job {job.job_id} returned {result!r}")


def _announce(label: str, experiment: Experiment, outcome: Outcome, job_id: str) -> None:
    if outcome.status == "finished":
        metrics = format_metrics(star_metrics(experiment.final_phase.run_dir))
        log.info("%s finished %s (job %s): %s", label, experiment.name, job_id, metrics)
    elif outcome.status == "failed":
        last = outcome.error.splitlines()[-1] if outcome.error else "no output"
        log.info("%s FAILED %s (job %s): %s", label, experiment.name, job_id, last)
    else:
        log.info("%s %s %s (job %s); rerun to resume", label, outcome.status, experiment.name, job_id)


def run_slurm_grid(
    experiments: Sequence[Experiment], todo: Sequence[str], settings: SlurmSettings, folder: Path
) -> dict[str, Outcome]:
    """Submit the unfinished experiments (``todo``) as one array job, wait for every task to leave the
    queue and return how each ended. Ctrl-C / SIGTERM cancel the jobs (each phase saves ``last.pth``
    first) and raise KeyboardInterrupt: a rerun resumes them."""
    total = len(experiments)
    outcomes: dict[str, Outcome] = {}
    labelled = []
    for index, experiment in enumerate(experiments, 1):
        label = f"[{index}/{total}]"
        if experiment.name in todo:
            labelled.append((label, experiment))
        else:
            log.info("%s skip %s (finished)", label, experiment.name)
            outcomes[experiment.name] = Outcome(experiment.name, "skipped")
    if not labelled:
        return outcomes
    executor = submitit.SlurmExecutor(folder=folder / "%j")
    executor.update_parameters(**settings.parameters())
    with executor.batch():
        delayed = [executor.submit(ExperimentJob(e, label, settings.device_args())) for label, e in labelled]
    jobs = {e.name: (label, e, job) for (label, e), job in zip(labelled, delayed, strict=True)}
    for label, experiment, job in jobs.values():
        experiment.out_dir.mkdir(parents=True, exist_ok=True)
        (experiment.out_dir / GRID_STATUS_JSON).unlink(missing_ok=True)  # an earlier failure: retried now
        record_job(
            experiment,
            job.job_id,
            launcher="slurm",
            node="",
            stdout=str(job.paths.stdout),
            stderr=str(job.paths.stderr),
            submitted=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        log.info(
            "%s submitted %s as SLURM job %s (log %s)", label, experiment.name, job.job_id, job.paths.stdout
        )
    try:
        _wait_for(jobs, outcomes)
    except KeyboardInterrupt:
        log.info("interrupt: cancelling the grid's jobs (their phases save last.pth); rerun to resume")
        for _, _, job in jobs.values():
            if not job.done():
                with contextlib.suppress(OSError, subprocess.CalledProcessError):
                    job.cancel(check=False)
        raise
    return outcomes


def _wait_for(jobs: Mapping[str, tuple[str, Experiment, submitit.Job]], outcomes: dict[str, Outcome]) -> None:
    """Poll until every job is done: submitit's result file or its state from sacct, or, where the cluster
    keeps no accounting, the job having left squeue."""
    pending = dict(jobs)
    with stop_signals_as_interrupt():
        while pending:
            in_queue = queued([job.job_id for _, _, job in pending.values()])
            for name, (label, experiment, job) in list(pending.items()):
                gone = in_queue is not None and job.job_id not in in_queue
                if job.done() or gone:
                    outcomes[name] = _outcome(job, experiment)
                    _announce(label, experiment, outcomes[name], job.job_id)
                    del pending[name]
            if pending:
                time.sleep(POLL_S)
