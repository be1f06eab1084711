"""The SLURM launcher's options, its dry run and the grid's --status, all without a cluster (test_slurm.py
runs the launcher on one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megastarid.core.errors import UserError
from megastarid.core.parsing import parse_options
from megastarid.experiments.grid_search import GridSearchOptions, run
from megastarid.experiments.plan import GridConfig, build_plan
from megastarid.experiments.results import write_results
from megastarid.experiments.slurm import parse_mem, parse_time, record_job
from megastarid.experiments.status import format_status, grid_status
from megastarid.training.runfolder import lock_run_folder


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("90", 90), ("12:00:00", 720), ("2-00:00:00", 2880), ("1-12", 2160), ("0:30", 1), ("00:01:01", 2)],
)
def test_time_in_sbatch_forms(text: str, minutes: int) -> None:
    assert parse_time(text) == minutes


@pytest.mark.parametrize(
    ("text", "gb"), [("64G", 64.0), ("16000M", 16000 / 1024), ("2048", 2.0), ("1T", 1024)]
)
def test_memory_in_sbatch_forms(text: str, gb: float) -> None:
    assert parse_mem(text) == pytest.approx(gb)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--time", "soon"], "--time 'soon': use minutes or [D-]HH:MM[:SS]"),
        (["--time", "0"], "--time '0': must be more than 0"),
        (["--mem", "lots"], "--mem 'lots': use a size such as 64G"),
        (["--slurm-extra", "constraint"], "--slurm-extra 'constraint': use KEY=VALUE"),
        (["--gpus-per-experiment", "-1"], "--gpus-per-experiment must be at least 0"),
        (["--max-parallel", "0"], "--max-parallel must be at least 1"),
        (["--launcher", "slurm", "--gpus", "0"], "--gpus is for --launcher local"),
    ],
)
def test_bad_slurm_options_are_one_line_naming_the_option(argv: list[str], message: str) -> None:
    with pytest.raises(UserError) as error:
        parse_options(GridSearchOptions, argv, "megastarid grid-search", "")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_dry_run_shows_each_experiments_sbatch_parameters_without_a_cluster(tmp_path: Path) -> None:
    argv = ["--launcher", "slurm", "--strategies", "star_only,cotrain", "--losses", "circle", "--dry-run"]
    argv += [
        "--partition",
        "gpu",
        "--time",
        "2-00:00:00",
        "--gpus-per-experiment",
        "2",
        "--cpus-per-gpu",
        "6",
    ]
    argv += ["--mem", "64G", "--account", "reef", "--qos", "high", "--slurm-extra", "constraint=a100"]
    argv += ["--max-parallel", "1", "--output-dir", str(tmp_path / "grid")]
    command = [sys.executable, "-m", "megastarid.experiments.grid_search", *argv]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    tasks = [line for line in done.stdout.splitlines() if line.startswith("  array task")]
    assert [line.split(":")[0].strip() for line in tasks] == ["array task 0", "array task 1"]
    for flag in (
        "--partition=gpu",
        "--time=2880",
        "--gpus-per-node=2",
        "--cpus-per-task=12",
        "--mem=64GB",
        "--account=reef",
        "--qos=high",
        "--constraint=a100",
        "--array=0-1%1",
        "--signal=USR2@90",
    ):
        assert all(flag in line for line in tasks), flag
    assert "one array task per unfinished experiment (SLURM job, 2 GPUs)" in done.stdout
    assert not (tmp_path / "grid").exists()  # nothing submitted, nothing written


def _finished(run_dir: Path, epochs: int, val: float, m_ap: float) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(f"epochs: {epochs}\n")
    (run_dir / "history.csv").write_text("epoch,loss\n" + "".join(f"{e},1.0\n" for e in range(epochs + 1)))
    summary = {"status": "finished", "best_epoch": epochs, "best_metric": val, "wall_time_s": 1.0}
    (run_dir / "run_summary.json").write_text(json.dumps(summary))
    (run_dir / "star_evaluation_summary.json").write_text(json.dumps({"mAP": m_ap, "CMC@1": 0.5}))


def test_status_reads_each_experiments_state_from_its_folders(tmp_path: Path) -> None:
    out = tmp_path / "grid"
    config = GridConfig(
        strategies=("star_only", "cotrain", "pretrain_finetune"), losses=("circle", "triplet")
    )
    experiments = {e.name: e for e in build_plan(GridConfig(**{**config.__dict__, "output_dir": out}))}
    # finished after one requeue; running (a local phase holds its folder); failed; interrupted; not run
    done = experiments["star_only-circle-seed0"]
    _finished(done.final_phase.run_dir, 3, 0.61, 0.52)
    record_job(done, "41_0", restarts=1, launcher="slurm", node="gpu07")
    running = experiments["star_only-triplet-seed0"].final_phase.run_dir
    _finished(running, 1, 0.1, 0.1)
    (running / "run_summary.json").unlink()
    (running / "config.yaml").write_text("epochs: 4\n")
    failed = experiments["cotrain-circle-seed0"]
    failed.out_dir.mkdir(parents=True)
    error = "Traceback ...\nmegastarid: error: --star-root /x: no such folder"
    (failed.out_dir / "grid_status.json").write_text(json.dumps({"status": "failed", "error": error}))
    interrupted = experiments["pretrain_finetune-circle-seed0"].phases[0].run_dir
    interrupted.mkdir(parents=True)
    (interrupted / "last.pth").write_bytes(b"x")
    lock = lock_run_folder(running)
    try:
        rows = {row["experiment"]: row for row in grid_status(out)}
    finally:
        os.close(lock)
    assert rows["star_only-circle-seed0"]["state"] == "finished"
    assert (
        rows["star_only-circle-seed0"]["result"]
        == "val mAP 0.610, star mAP 0.520, star CMC@1 0.500, requeued 1x"
    )
    running_row = rows["star_only-triplet-seed0"]
    assert running_row["state"] == "running" and running_row["where"] == f"pid {os.getpid()}"
    assert running_row["progress"] == "finetune epoch 1/4" and running_row["result"] == "-"
    assert rows["cotrain-circle-seed0"]["state"] == "failed"
    assert rows["cotrain-circle-seed0"]["result"] == "megastarid: error: --star-root /x: no such folder"
    assert rows["pretrain_finetune-circle-seed0"]["state"] == "interrupted"
    assert rows["pretrain_finetune-circle-seed0"]["progress"] == "pretrain epoch -/?"
    assert set(rows) == {
        "star_only-circle-seed0",
        "star_only-triplet-seed0",
        "cotrain-circle-seed0",
        "pretrain_finetune-circle-seed0",
    }
    text = format_status(list(rows.values()), out)
    assert text.splitlines()[-1].endswith("1 failed, 1 interrupted, 1 finished, 1 running")

    results = write_results(list(experiments.values()), out)
    assert results.set_index("strategy").loc["star_only"].set_index("loss").loc["circle", "requeues"] == 1


def test_status_of_a_folder_without_experiments_starts_nothing(tmp_path: Path, capsys) -> None:
    options = parse_options(GridSearchOptions, ["--status", "--output-dir", str(tmp_path / "none")], "g", "")
    assert run(options) == 0
    assert capsys.readouterr().out.strip() == f"{tmp_path / 'none'}: no grid experiment folders yet"
    assert not (tmp_path / "none").exists()


def test_a_partition_without_gpus_is_one_line_before_anything_is_submitted(tmp_path: Path) -> None:
    """Issue 20 #18: sbatch's own "Invalid generic resource (gres) specification" says nothing useful; the
    grid asks sinfo first (here a stand-in: a default partition without GPUs and a GPU one)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sinfo = bin_dir / "sinfo"
    sinfo.write_text('#!/bin/sh\necho "debug*|(null)"\necho "gpu|gpu:a100:4(S:0-1)"\necho "gpu|(null)"\n')
    sinfo.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    base = [sys.executable, "-m", "megastarid.experiments.grid_search", "--launcher", "slurm", "--dry-run"]
    base += ["--strategies", "star_only", "--losses", "circle", "--output-dir", str(tmp_path / "grid")]
    for extra, message in (
        ([], "SLURM partition debug (the default) has no GPUs: pass --gpus-per-experiment 0"),
        (["--partition", "debug", "--gpus-per-experiment", "2"], "SLURM partition debug has no GPUs"),
    ):
        done = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 2, done.stdout
        assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr, done.stderr
    for extra in (["--gpus-per-experiment", "0"], ["--partition", "gpu"], ["--partition", "elsewhere"]):
        done = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr
    assert not (tmp_path / "grid").exists()
