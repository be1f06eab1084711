"""The grid and multi-process training on a real SLURM cluster (ci/slurm-up.sh starts a single-node one here).

- a tiny grid (2 experiments, 1 epoch) submitted with ``--launcher slurm`` finishes with every result file,
  and ``--status`` reports it;
- a job sent SIGTERM mid-epoch (``scancel --signal=TERM``, what SLURM sends on pre-emption) saves, is
  requeued through submitit and resumes to exactly the history of an uninterrupted run;
- ``srun`` with two tasks runs one 2-process CPU DDP finetune through Fabric's SLURM detection.

Without a reachable cluster these tests skip with one line; with ``MEGASTARID_REQUIRE_SLURM=1`` (set by
.ci/run, which starts the cluster) they fail instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TIMING = ["images_per_s"]
TRAIN_ARGS = [
    "--backbone",
    "test_resnet",
    "--embedding-dim",
    "32",
    "--batch-size",
    "8",
    "--num-instances",
    "2",
    "--workers",
    "0",
]
#: each job gets one of this machine's two cores, and its torch one thread
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _slurm_problem() -> str | None:
    if shutil.which("sbatch") is None:
        return "no sbatch on PATH"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"sinfo failed: {err}"
    if states.returncode != 0:
        return (states.stderr.strip().splitlines() or ["sinfo failed"])[-1]
    if not any(state.rstrip("*~#") in ("idle", "mix", "alloc") for state in states.stdout.split()):
        return f"no node is up (sinfo: {states.stdout.split()})"
    return None


@pytest.fixture(scope="module", autouse=True)
def slurm() -> None:
    problem = _slurm_problem()
    if problem is None:
        return
    message = f"SLURM not reachable ({problem}); start one with: sudo ci/slurm-up.sh"
    if os.environ.get("MEGASTARID_REQUIRE_SLURM") == "1":
        pytest.fail(message)
    pytest.skip(message)


def grid_command(
    out: Path, stars: Path, wildlife: Path, *options: str, epochs: int = 1, image_size: int = 32
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "megastarid.experiments.grid_search",
        "--losses",
        "circle",
        "--epochs",
        str(epochs),
        "--output-dir",
        str(out),
        "--star-root",
        str(stars),
        "--wildlife-root",
        str(wildlife),
        *options,
        "--",
        *TRAIN_ARGS,
        "--image-size",
        str(image_size),
    ]


SLURM_OPTIONS = ("--launcher", "slurm", "--gpus-per-experiment", "0", "--cpus-per-gpu", "1", "--time", "20")


def status(out: Path) -> str:
    command = [
        sys.executable,
        "-m",
        "megastarid.experiments.grid_search",
        "--status",
        "--output-dir",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=ENV)
    assert done.returncode == 0, done.stderr
    return done.stdout


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_tiny_grid_on_slurm_finishes_with_all_result_files(
    tmp_path: Path, synthetic_stars: Path, synthetic_wildlife: Path
) -> None:
    out = tmp_path / "grid"
    options = ("--strategies", "star_only,cotrain", *SLURM_OPTIONS)
    dry_run = grid_command(out, synthetic_stars, synthetic_wildlife, *options, "--dry-run")
    dry = subprocess.run(dry_run, capture_output=True, text=True, env=ENV)
    assert dry.returncode == 0, dry.stderr
    assert "array task 1: sbatch --array=0-1%2 --cpus-per-task=1" in dry.stdout and "--time=20" in dry.stdout

    start = time.perf_counter()
    done = subprocess.run(
        grid_command(out, synthetic_stars, synthetic_wildlife, *options),
        capture_output=True,
        text=True,
        timeout=540,
        env=ENV,
    )
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    assert "submitted star_only-circle-seed0 as SLURM job" in done.stderr
    table = pd.read_csv(out / "grid_results.csv")
    assert list(table["status"]) == ["finished", "finished"]
    assert table["mAP"].between(0, 1).all() and (table["requeues"] == 0).all()
    for name in ("grid_summary.md", "grid_results.png"):
        assert (out / name).stat().st_size > 0
    for folder in table["run_folder"]:
        assert {"best.pth", "history.csv", "star_evaluation_summary.json"} <= {
            p.name for p in Path(folder).iterdir()
        }
    job = json.loads((out / "star_only-circle-seed0" / "grid_job.json").read_text())
    assert Path(job["stdout"]).is_file() and job["node"]  # submitit's log, the node that ran it
    report = status(out)
    assert "star_only-circle-seed0  finished" in report and "finetune epoch 1/1" in report
    print(f"tiny SLURM grid (2 experiments, 1 epoch): {seconds:.1f} s")


def _history_rows(run_dir: Path) -> int:
    try:
        return len(pd.read_csv(run_dir / "history.csv"))
    except (OSError, pd.errors.EmptyDataError):
        return 0


def _job_state(job_id: str) -> tuple[str, str]:
    out = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%T|%r", "-j", job_id.split("_")[0]], capture_output=True, text=True
    )
    line = out.stdout.strip().splitlines()
    return tuple(line[0].split("|")) if line else ("", "")  # type: ignore[return-value]


def test_a_job_signalled_mid_epoch_is_requeued_and_resumes_to_the_same_history(
    tmp_path: Path, synthetic_stars: Path, synthetic_wildlife: Path
) -> None:
    epochs = 2
    slurm_out, local_out = tmp_path / "slurm", tmp_path / "local"
    options = ("--strategies", "star_only")
    size = 64  # an epoch long enough to be cut in the middle
    grid = subprocess.Popen(
        grid_command(
            slurm_out,
            synthetic_stars,
            synthetic_wildlife,
            *options,
            *SLURM_OPTIONS,
            epochs=epochs,
            image_size=size,
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
    )
    # the uninterrupted reference: the same experiment with the local launcher, on the other core
    reference = subprocess.Popen(
        grid_command(
            local_out, synthetic_stars, synthetic_wildlife, *options, epochs=epochs, image_size=size
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    experiment = slurm_out / "star_only-circle-seed0"
    run_dir = experiment / "finetune"
    try:
        wait_for(lambda: _history_rows(run_dir) >= 2, 300, "epoch 1 of the SLURM job")  # epochs 0 and 1
        job_id = json.loads((experiment / "grid_job.json").read_text())["job_id"]
        subprocess.run(["scancel", "--signal=TERM", job_id], check=True)  # early in epoch 2
        # a requeued job waits SLURM's fixed 2 minutes (BeginTime) before it may start: start it now
        wait_for(lambda: _job_state(job_id) == ("PENDING", "BeginTime"), 120, "the requeued job")
        row = next(line for line in status(slurm_out).splitlines() if line.startswith(experiment.name))
        assert re.split(r"\s{2,}", row)[1:4] == [
            "pending",
            f"job {job_id} (BeginTime)",
            f"finetune epoch 1/{epochs}",
        ]
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
        output, _ = grid.communicate(timeout=400)
        assert reference.wait(timeout=400) == 0
    finally:
        for process in (grid, reference):
            if process.poll() is None:
                process.kill()
    assert grid.returncode == 0, output[-3000:]
    log = (experiment / "logs" / "finetune.log").read_text()
    assert f"interrupted in epoch {epochs}" in log  # saved mid-epoch ...
    assert f"at epoch {epochs}, batch" in log  # ... and resumed from that batch
    table = pd.read_csv(slurm_out / "grid_results.csv")
    assert table.loc[0, "status"] == "finished" and table.loc[0, "requeues"] == 1
    resumed = pd.read_csv(run_dir / "history.csv").drop(columns=TIMING)
    whole = pd.read_csv(local_out / "star_only-circle-seed0" / "finetune" / "history.csv").drop(
        columns=TIMING
    )
    pd.testing.assert_frame_equal(resumed, whole)
    assert "requeued 1x" in status(slurm_out)


def test_srun_two_tasks_run_one_ddp_finetune(tmp_path: Path, synthetic_stars: Path) -> None:
    run = tmp_path / "run"
    finetune = [sys.executable, "-m", "megastarid.finetune", "--output-dir", str(run)]
    finetune += ["--star-root", str(synthetic_stars), "--epochs", "1", "--accelerator", "cpu", *TRAIN_ARGS]
    finetune += ["--image-size", "32"]
    plain = subprocess.run(
        ["srun", "--ntasks", "2", *finetune, "--devices", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    assert plain.returncode != 0 and "give the tasks per node instead" in plain.stderr
    assert not run.exists()

    done = subprocess.run(
        ["srun", "--nodes", "1", "--ntasks-per-node", "2", *finetune, "--devices", "2"],
        capture_output=True,
        text=True,
        timeout=400,
        env=ENV,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("done: best val_star_mAP") == 1  # rank 0 alone reports and writes
    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_completed"] == 1
    history = pd.read_csv(run / "history.csv")
    assert history["epoch"].tolist() == [0, 1] and history["loss"].iloc[1:].notna().all()
    assert (run / "star_evaluation_summary.json").is_file() and (run / "best.pth").is_file()
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".tmp")]


def test_gpus_asked_of_this_cpu_only_cluster_are_one_line_in_the_dry_run(tmp_path: Path) -> None:
    """Issue 20 #18: this cluster's partitions have no GPUs, so the default --gpus-per-experiment 1 is
    refused by name before anything is submitted (sbatch would fail on the gres)."""
    command = [
        sys.executable, "-m", "megastarid.experiments.grid_search", "--launcher", "slurm", "--dry-run",
        "--strategies", "star_only", "--losses", "circle", "--output-dir", str(tmp_path / "grid"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=ENV)
    assert done.returncode == 2, done.stdout
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "has no GPUs: pass --gpus-per-experiment 0" in done.stderr
