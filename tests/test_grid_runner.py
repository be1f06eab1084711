"""The grid runner with a stand-in trainer process: failures recorded, reruns skip and resume,
GPU slots side by side, interrupts reach the running phase.

The stand-in writes exactly the run-folder files the grid reads (the real trainer is exercised in
test_grid_real.py); it can be told to fail, to sleep, or to exit without finishing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from megastarid.experiments.plan import Experiment, GridConfig, build_plan
from megastarid.experiments.results import write_results
from megastarid.experiments.runner import run_grid

FAKE_TRAINER = textwrap.dedent(
    """
    import argparse, json, pathlib, signal, sys, time
    parser = argparse.ArgumentParser()
    parser.add_argument("--output-dir", type=pathlib.Path)
    parser.add_argument("--fail", default=None)
    parser.add_argument("--sleep", type=float, default=0)
    parser.add_argument("--unfinished", action="store_true")
    args, _ = parser.parse_known_args()
    run = args.output_dir
    run.mkdir(parents=True, exist_ok=True)
    with (run.parent / "calls.jsonl").open("a") as calls:
        calls.write(json.dumps(sys.argv[1:]) + "\\n")
    def stop(signum, frame):
        (run / "last.pth").write_bytes(b"saved on interrupt")
        sys.exit(130)
    signal.signal(signal.SIGINT, stop)
    print("epoch 1/1", flush=True)
    time.sleep(args.sleep)
    if args.fail:
        print("Traceback line that is not the point", file=sys.stderr)
        print("megastarid: error: " + args.fail, file=sys.stderr)
        sys.exit(2)
    (run / "last.pth").write_bytes(b"x")
    if args.unfinished:
        sys.exit(0)
    (run / "run_summary.json").write_text(json.dumps(
        {"status": "finished", "best_epoch": 1, "best_metric": 0.5, "epochs_completed": 1,
         "wall_time_s": 1.0}))
    (run / "star_evaluation_summary.json").write_text(json.dumps({"mAP": 0.5, "CMC@1": 0.75}))
    """
)


@pytest.fixture
def fake_trainer(tmp_path: Path) -> Path:
    path = tmp_path / "fake_trainer.py"
    path.write_text(FAKE_TRAINER)
    return path


def fake_plan(
    out: Path, trainer: Path, extra: dict[str, list[str]] | None = None, **config
) -> list[Experiment]:
    """The real plan's experiments and folders, each phase running the stand-in trainer instead."""
    experiments = build_plan(GridConfig(output_dir=out, losses=("circle",), **config))
    extra = extra or {}

    def fake(experiment: Experiment) -> Experiment:
        phases = tuple(
            dataclasses.replace(
                phase,
                argv=(
                    sys.executable,
                    str(trainer),
                    "--output-dir",
                    str(phase.run_dir),
                    *extra.get(experiment.name, []),
                ),
            )
            for phase in experiment.phases
        )
        return dataclasses.replace(experiment, phases=phases)

    return [fake(e) for e in experiments]


def calls(out: Path, name: str, phase: str) -> list[list[str]]:
    path = out / name / "calls.jsonl"
    if not path.exists():
        return []
    return [c for c in map(json.loads, path.read_text().splitlines()) if Path(c[1]).name == phase]


def run_all(experiments: list[Experiment], slots=(None,)) -> dict:
    from megastarid.experiments.plan import assign_devices

    return run_grid(experiments, assign_devices(experiments, list(slots)), list(slots), "CPU")


def test_one_failure_is_recorded_and_the_others_finish(tmp_path, fake_trainer, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "grid"
    bad = "cotrain-circle-seed0"
    error = "--star-batch-ratio must be between 0 and 1"
    experiments = fake_plan(out, fake_trainer, {bad: ["--fail", error]})
    outcomes = run_all(experiments)

    assert {name: o.status for name, o in outcomes.items()} == {
        "pretrain_finetune-circle-seed0": "finished",
        bad: "failed",
        "star_only-circle-seed0": "finished",
    }
    status = json.loads((out / bad / "grid_status.json").read_text())
    assert status["phase"] == "cotrain" and status["returncode"] == 2
    assert status["error"].splitlines()[-1] == "megastarid: error: --star-batch-ratio must be between 0 and 1"
    log_text = (out / bad / "logs" / "cotrain.log").read_text()
    assert "epoch 1/1" in log_text and "Traceback line" in log_text  # stdout and stderr both kept
    # a progress line per experiment as it starts and as it ends
    messages = [r.getMessage() for r in caplog.records]
    assert sum(" start " in m for m in messages) == 3
    assert any(m.startswith(f"[2/3] FAILED {bad}") and error in m for m in messages)
    assert any(m.startswith("[3/3] finished star_only-circle-seed0") and "mAP 0.500" in m for m in messages)
    # finetune after pretrain ran once the pretrain phase had finished
    assert len(calls(out, "pretrain_finetune-circle-seed0", "pretrain")) == 1

    results = write_results(experiments, out)
    assert list(results["status"]) == ["finished", "failed", "finished"]
    assert "--star-batch-ratio must be between 0 and 1" in results.loc[1, "error"]


def test_rerun_skips_finished_resumes_interrupted_and_retries_failed(tmp_path, fake_trainer, caplog):
    out = tmp_path / "grid"
    first = fake_plan(
        out,
        fake_trainer,
        {"cotrain-circle-seed0": ["--fail", "out of memory"], "star_only-circle-seed0": ["--unfinished"]},
    )
    outcomes = run_all(first)
    assert outcomes["star_only-circle-seed0"].status == "failed"  # exited 0 without run_summary.json
    assert "exited without a finished run" in outcomes["star_only-circle-seed0"].error

    caplog.set_level(logging.INFO)
    outcomes = run_all(fake_plan(out, fake_trainer))
    assert outcomes["pretrain_finetune-circle-seed0"].status == "skipped"
    assert "[1/3] skip pretrain_finetune-circle-seed0 (finished)" in caplog.messages
    assert len(calls(out, "pretrain_finetune-circle-seed0", "finetune")) == 1  # not trained again
    # the failed cotrain had no last.pth: started again with --overwrite; star_only resumed from last.pth
    assert calls(out, "cotrain-circle-seed0", "cotrain")[-1][-1] == "--overwrite"
    assert calls(out, "star_only-circle-seed0", "finetune")[-1][-1] == "--resume"
    assert not (out / "cotrain-circle-seed0" / "grid_status.json").exists()
    assert {o.status for o in outcomes.values()} == {"skipped", "finished"}
    assert list(write_results(fake_plan(out, fake_trainer), out)["status"]) == ["finished"] * 3


def test_gpu_slots_run_side_by_side(tmp_path, fake_trainer):
    out = tmp_path / "grid"
    sleep = {f"star_only-circle-seed{s}": ["--sleep", "2"] for s in (0, 1)}
    experiments = fake_plan(out, fake_trainer, sleep, strategies=("star_only",), seeds=(0, 1))
    start = time.monotonic()
    outcomes = run_all(experiments, slots=(0, 1))
    elapsed = time.monotonic() - start

    assert all(o.status == "finished" for o in outcomes.values())
    assert elapsed < 3.5  # two 2 s runs (plus start-up) overlapped
    gpus = {calls(out, f"star_only-circle-seed{s}", "finetune")[0][-1] for s in (0, 1)}
    assert gpus == {"0", "1"}


def test_sigterm_stops_the_running_phase_which_saves_for_resume(tmp_path, fake_trainer):
    out = tmp_path / "grid"
    experiments = fake_plan(
        out, fake_trainer, {"star_only-circle-seed0": ["--sleep", "30"]}, strategies=("star_only", "cotrain")
    )
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_all(experiments)
    timer.cancel()
    assert time.monotonic() - start < 15
    run_dir = out / "star_only-circle-seed0" / "finetune"
    assert (run_dir / "last.pth").read_bytes() == b"saved on interrupt"
    assert not (out / "cotrain-circle-seed0").exists()  # nothing new started after the interrupt
    assert list(write_results(experiments, out)["status"]) == ["interrupted", "not run"]
