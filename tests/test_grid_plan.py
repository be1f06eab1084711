"""Grid-search planning: the dry-run plan, exact phase commands, option checks and resume states."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

from megastarid.core.console import run_main
from megastarid.core.errors import UserError
from megastarid.experiments import grid_search
from megastarid.experiments.plan import (
    GridConfig,
    PhaseState,
    assign_devices,
    build_plan,
    phase_state,
    with_existing,
)


def dry_run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert run_main(grid_search.main, ["--dry-run", *argv]) == 0
    return capsys.readouterr().out


def commands(plan_text: str) -> list[list[str]]:
    return [shlex.split(line.split("$ ", 1)[1]) for line in plan_text.splitlines() if "$ " in line]


def test_dry_run_prints_every_experiment_and_trains_nothing(tmp_path, capsys):
    out_dir = tmp_path / "grid"
    text = dry_run(capsys, "--epochs", "3", "--output-dir", str(out_dir), "--", "--backbone", "resnet18")

    assert "6 experiments (3 strategies × 2 losses × 1 seed)" in text
    for strategy in ("pretrain_finetune", "cotrain", "star_only"):
        for loss, weights in (
            ("circle", "circle weight 1, triplet weight 0"),
            ("triplet", "circle weight 0, triplet weight 1"),
        ):
            name = f"{strategy}-{loss}-seed0"
            assert f"] {name}" in text
            assert f"strategy {strategy}, loss {loss} ({weights}), seed 0, device CPU" in text
            assert f"folder {out_dir / name}" in text
    assert text.count("pretrain: 3 epochs, new") == 2
    assert text.count("finetune: 3 epochs, new") == 4
    assert text.count("cotrain: 3 epochs, new") == 2
    cmds = commands(text)
    assert len(cmds) == 8  # pretrain_finetune has two phases
    assert all(cmd[:2] == [sys.executable, "-m"] and cmd[-2:] == ["--backbone", "resnet18"] for cmd in cmds)
    assert "nothing was trained" in text
    assert not out_dir.exists()


def test_phase_commands_carry_loss_seed_checkpoint_and_data_roots(tmp_path, capsys):
    stars, wildlife = tmp_path / "stars", tmp_path / "wild"
    stars.mkdir()
    wildlife.mkdir()
    out = tmp_path / "g"
    text = dry_run(
        capsys,
        "--losses",
        "combined",
        "--seeds",
        "4",
        "--epochs",
        "2",
        "--pretrain-epochs",
        "5",
        "--output-dir",
        str(out),
        "--star-root",
        str(stars),
        "--wildlife-root",
        str(wildlife),
        "--cotrain-args",
        "--star-batch-ratio 0.5",
    )
    by_module = {cmd[2]: cmd for cmd in commands(text)}
    pretrain, cotrain = by_module["megastarid.pretrain"], by_module["megastarid.cotrain"]
    finetunes = [cmd for cmd in commands(text) if cmd[2] == "megastarid.finetune"]

    def option(cmd: list[str], name: str) -> str | None:
        return cmd[cmd.index(name) + 1] if name in cmd else None

    for cmd in (pretrain, cotrain, *finetunes):
        assert (option(cmd, "--circle-weight"), option(cmd, "--triplet-weight")) == ("0.7", "0.3")
        assert option(cmd, "--seed") == "4"
    assert option(pretrain, "--epochs") == "5" and option(cotrain, "--epochs") == "2"
    # data roots only where the phase reads that data set; phase args only to their phase
    assert option(pretrain, "--wildlife-root") == str(wildlife) and "--star-root" not in pretrain
    assert option(cotrain, "--star-root") == str(stars)
    assert option(cotrain, "--wildlife-root") == str(wildlife)
    assert option(cotrain, "--star-batch-ratio") == "0.5" and "--star-batch-ratio" not in pretrain
    after_pretrain, star_only = finetunes
    experiment = out / "pretrain_finetune-combined-seed4"
    assert option(after_pretrain, "--output-dir") == str(experiment / "finetune")
    assert option(after_pretrain, "--checkpoint") == str(experiment / "pretrain" / "best.pth")
    assert "--checkpoint" not in star_only and "--wildlife-root" not in star_only


def test_gpus_spread_experiments_one_per_gpu(tmp_path, capsys):
    text = dry_run(
        capsys,
        "--gpus",
        "0,1",
        "--strategies",
        "star_only,cotrain",
        "--losses",
        "circle",
        "--seeds",
        "0,1",
        "--output-dir",
        str(tmp_path),
    )
    assert "GPUs 0,1, one experiment per GPU side by side" in text
    gpus = [cmd[cmd.index("--gpus") + 1] for cmd in commands(text)]
    assert sorted(gpus) == ["0", "0", "1", "1"]
    assert text.count("device GPU 0") == 2 and text.count("device GPU 1") == 2


def test_longest_experiments_are_balanced_over_slots(tmp_path):
    config = GridConfig(
        strategies=("pretrain_finetune", "star_only"),
        losses=("circle",),
        seeds=(0, 1),
        epochs=10,
        output_dir=tmp_path,
    )
    assignment = assign_devices(build_plan(config), [0, 1])
    # each GPU gets one two-phase and one one-phase experiment: 30 epochs each
    for strategy in ("pretrain_finetune", "star_only"):
        assert {assignment[f"{strategy}-circle-seed{seed}"] for seed in (0, 1)} == {0, 1}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--strategies", "star_only,finetune"], "--strategies: unknown strategy 'finetune' (choose from"),
        (["--losses", "arcface"], "--losses: unknown loss 'arcface' (choose from"),
        (["--losses", ","], "--losses: give at least one of circle, triplet, combined"),
        (["--seeds", ""], "--seeds: give at least one value"),
        (["--seeds", "0,one"], "--seeds must be an integer from 0 to 4294967295 (2**32-1), got 'one'"),
        (["--gpus", "0,-1"], "--gpus: GPU ids are 0 or more"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--star-root", "/no/such/stars"], "--star-root /no/such/stars: no such folder"),
        (["--", "--seed", "3"], "options after --: --seed is set by the grid for each experiment"),
        (["--", "--epoch=3"], "options after --: --epochs is set by the grid"),
        (["--finetune-args=--checkpoint x.pth"], "--finetune-args: --checkpoint is set by the grid"),
        (["--cotrain-args", "--star-batch-ratio 'x"], "--cotrain-args: cannot split"),
        (["--", "--no-such-option"], "options for the pretrain phase: unrecognized options: --no-such"),
        (["--cotrain-args=--star-batch-ratio x"], "options for the cotrain phase: --star-batch-ratio must"),
    ],
)
def test_bad_options_are_one_line_errors(argv, message, tmp_path, capsys):
    assert run_main(grid_search.main, ["--dry-run", "--output-dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("megastarid: error: ") and message in err
    assert len(err.splitlines()) == 1


def test_config_file_may_not_set_grid_options(tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text("image_size: 64\nseed: 3\n")
    assert run_main(grid_search.main, ["--dry-run", "--", "--config", str(config)]) == 2
    assert "seed is set by the grid for each experiment; remove it and use --seeds" in capsys.readouterr().err


def test_gpus_are_checked_against_the_machine_before_training():
    grid_search.check_gpus((), lambda: 0)
    grid_search.check_gpus((0, 1), lambda: 2)
    with pytest.raises(UserError, match="no CUDA GPU is visible here; leave --gpus out"):
        grid_search.check_gpus((0,), lambda: 0)
    with pytest.raises(UserError, match=r"GPU 2 does not exist \(this machine has 2\)"):
        grid_search.check_gpus((0, 2), lambda: 2)


def write_run(run_dir: Path, *, finished: bool, star: bool, last: bool) -> None:
    """A run folder as the trainer leaves it: finished, interrupted or never checkpointed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if finished:
        summary = {
            "status": "finished",
            "best_epoch": 1,
            "best_metric": 0.5,
            "epochs_completed": 1,
            "wall_time_s": 3.0,
        }
        (run_dir / "run_summary.json").write_text(json.dumps(summary))
    if star:
        (run_dir / "star_evaluation_summary.json").write_text(json.dumps({"mAP": 0.5, "CMC@1": 0.6}))
    if last:
        (run_dir / "last.pth").write_bytes(b"checkpoint")


def test_phase_state_is_read_from_the_run_folder(tmp_path):
    assert phase_state("finetune", tmp_path / "absent") is PhaseState.NEW
    write_run(tmp_path / "empty", finished=False, star=False, last=False)
    assert phase_state("finetune", tmp_path / "empty") is PhaseState.OVERWRITE
    write_run(tmp_path / "cut", finished=False, star=False, last=True)
    assert phase_state("finetune", tmp_path / "cut") is PhaseState.RESUME
    # a finetune/cotrain run counts as finished only with its star evaluation
    write_run(tmp_path / "noeval", finished=True, star=False, last=True)
    assert phase_state("finetune", tmp_path / "noeval") is PhaseState.RESUME
    assert phase_state("pretrain", tmp_path / "noeval") is PhaseState.FINISHED
    write_run(tmp_path / "done", finished=True, star=True, last=True)
    assert phase_state("cotrain", tmp_path / "done") is PhaseState.FINISHED
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "run_summary.json").write_text('{"status": "fini')
    assert phase_state("pretrain", tmp_path / "torn") is PhaseState.OVERWRITE


def test_dry_run_shows_what_a_rerun_will_do(tmp_path, capsys, caplog):
    out = tmp_path / "grid"
    write_run(out / "star_only-circle-seed0" / "finetune", finished=True, star=True, last=True)
    (out / "star_only-circle-seed0" / "finetune" / "config.yaml").write_text("epochs: 7\nseed: 0\n")
    write_run(out / "pretrain_finetune-circle-seed0" / "pretrain", finished=True, star=False, last=True)
    write_run(out / "pretrain_finetune-circle-seed0" / "finetune", finished=False, star=False, last=True)
    write_run(out / "cotrain-circle-seed0" / "cotrain", finished=False, star=False, last=False)
    text = dry_run(capsys, "--losses", "circle", "--output-dir", str(out))

    assert "star_only-circle-seed0  (finished: skipped)" in text
    assert "pretrain: 25 epochs, finished" in text and "finetune: 25 epochs, resume" in text
    cmds = {cmd[2]: cmd for cmd in commands(text)}
    assert set(cmds) == {"megastarid.finetune", "megastarid.cotrain"}  # nothing for finished phases
    assert cmds["megastarid.finetune"][-1] == "--resume"
    assert cmds["megastarid.cotrain"][-1] == "--overwrite"
    # a finished run kept from an earlier call with other epochs is pointed out
    assert "star_only-circle-seed0/finetune finished with 7 epochs, not 25" in caplog.text


def test_results_also_cover_experiments_found_in_the_output_folder(tmp_path):
    config = GridConfig(strategies=("star_only",), losses=("circle",), seeds=(0,), output_dir=tmp_path)
    for name in ("cotrain-triplet-seed2", "notes", "star_only-arcface-seed0"):
        (tmp_path / name).mkdir()
    names = [e.name for e in with_existing(config, build_plan(config))]
    assert names == ["star_only-circle-seed0", "cotrain-triplet-seed2"]
