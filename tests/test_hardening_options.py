"""Issue 9, the option and config defects: run-control switches are not recorded, non-finite floats and
out-of-range seeds are refused by the one options mechanism, YAML files are read safely, the grid's dry run
checks what its real run checks, and no error echoes more than ~100 characters of a user's value."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from megastarid import cli, data_cli, demo, evaluate, finetune, prepare, synth
from megastarid.core import errors, options
from megastarid.core.console import run_main
from megastarid.core.errors import UserError
from megastarid.data.check import export_split
from megastarid.experiments import grid_search
from megastarid.experiments.plan import GridConfig, PhaseState, build_plan
from megastarid.training.config import (
    FinetuneConfig,
    parse_train_config,
    save_config,
)
from megastarid.training.models import load_checkpoint

#: most characters an error line may spend on a quoted value, plus the words around it
SHORT_LINE = 260

TINY = [
    "--backbone", "test_resnet", "--image-size", "32", "--batch-size", "8", "--num-instances", "2",
    "--workers", "0", "--epochs", "1", "--warmup-epochs", "0", "--lr", "1e-3", "--eval-batch-size", "32",
]  # fmt: skip


def parse(cls, argv):
    return parse_train_config(cls, argv, "test", "test")


def one_line_error(command: str, argv: list[str], capsys) -> str:
    """Run ``megastarid <command> argv``; it must fail with exit code 2 and exactly one stderr line."""
    assert cli.main([*command.split(), *argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err[:2000]
    assert lines[0].startswith("megastarid: error: "), lines[0][:2000]
    return lines[0]


@pytest.fixture
def nothing_runs(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every command's one run function replaced by a recorder: only the options are parsed."""
    seen: list[Any] = []
    targets = [
        (finetune, "run_finetune"), (grid_search, "run"), (synth, "synth"), (data_cli, "check"),
        (data_cli, "show_augmentations"), (demo, "demo"), (evaluate, "run"), (prepare, "prepare"),
    ]  # fmt: skip
    from megastarid import cotrain, pretrain

    targets += [(pretrain, "run_pretrain"), (cotrain, "run_cotrain")]
    for module, name in targets:
        monkeypatch.setattr(module, name, lambda given, *rest: seen.append(given) or 0)
    return seen


# -- 1. run-control switches (--resume, --overwrite) are not part of a run's recorded configuration ---------


def test_the_switches_are_neither_recorded_nor_read_back(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = parse(FinetuneConfig, ["--output-dir", str(run), "--overwrite", "--epochs", "4"])
    assert cfg.overwrite and {"resume", "overwrite"}.isdisjoint(cfg.to_dict())
    assert {"resume", "overwrite"}.isdisjoint(options.recorded(cfg))
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    assert {"resume", "overwrite"}.isdisjoint(yaml.safe_load((run / "config.yaml").read_text()))
    resumed = parse(FinetuneConfig, ["--output-dir", str(run), "--resume"])
    assert (resumed.resume, resumed.overwrite, resumed.epochs) == (True, False, 4)


def test_an_older_config_yaml_holding_the_switches_still_resumes(tmp_path: Path) -> None:
    """Runs saved before the fix wrote ``resume``/``overwrite`` into config.yaml: they are ignored."""
    run = tmp_path / "run"
    run.mkdir()
    saved = {**FinetuneConfig(output_dir=run, epochs=4).to_dict(), "resume": True, "overwrite": True}
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    resumed = parse(FinetuneConfig, ["--output-dir", str(run), "--resume"])
    assert (resumed.resume, resumed.overwrite, resumed.epochs) == (True, False, 4)
    # and as a --config for a new run it starts a new run, neither resuming nor overwriting anything
    fresh = parse(FinetuneConfig, ["--config", str(run / "config.yaml"), "--output-dir", str(tmp_path / "b")])
    assert (fresh.resume, fresh.overwrite, fresh.epochs) == (False, False, 4)


def test_a_grid_phase_started_with_overwrite_resumes_after_a_crash(tmp_path: Path) -> None:
    """The grid's commands as the phase parses them: --overwrite into a folder without last.pth, then
    (the crash left last.pth) --resume, which reads back the config.yaml the first start wrote."""
    (phase,) = build_plan(GridConfig(strategies=("star_only",), losses=("circle",), output_dir=tmp_path))[
        0
    ].phases
    phase.run_dir.mkdir(parents=True)  # a folder without last.pth, e.g. a phase that died at once
    assert phase.state() is PhaseState.OVERWRITE and phase.command()[-1] == "--overwrite"
    started = parse(FinetuneConfig, phase.command()[3:])
    save_config(started, phase.run_dir / "config.yaml")  # what the trainer writes when it starts
    (phase.run_dir / "last.pth").write_bytes(b"saved before the crash")
    assert phase.state() is PhaseState.RESUME and phase.command()[-1] == "--resume"
    again = parse(FinetuneConfig, phase.command()[3:])
    assert (again.resume, again.overwrite) == (True, False)


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_a_run_started_with_overwrite_resumes_with_the_printed_command(
    tmp_path: Path, synthetic_stars: Path, capsys
) -> None:
    """The user's path: an --overwrite run, interrupted, continued with the command the tool printed; and a
    finished --overwrite run continued for more epochs with --resume."""
    import signal

    from megastarid.training.strategies import finetune_task
    from megastarid.training.trainer import INTERRUPTED, fit

    run = tmp_path / "run"
    run.mkdir()
    (run / "old.txt").write_text("an earlier run")
    cfg = parse(
        FinetuneConfig, ["--output-dir", str(run), "--star-root", str(synthetic_stars), *TINY, "--overwrite"]
    )

    class Tripwire:
        """The real dataset, sending this process SIGINT when its 10th image is read."""

        def __init__(self, dataset) -> None:
            self.dataset, self.reads = dataset, 0

        def __len__(self) -> int:
            return len(self.dataset)

        def __getitem__(self, index: int):
            self.reads += 1
            if self.reads == 10:
                os.kill(os.getpid(), signal.SIGINT)
            return self.dataset[index]

    def tripped():
        task = finetune_task(cfg)
        task.dataset = Tripwire(task.dataset)
        return task

    assert fit(cfg, tripped) == INTERRUPTED
    out = capsys.readouterr().out
    printed = re.search(r"python -m megastarid\.finetune (.*--resume)", out)
    assert printed, out
    assert {"resume", "overwrite"}.isdisjoint(yaml.safe_load((run / "config.yaml").read_text()))
    assert {"resume", "overwrite"}.isdisjoint(load_checkpoint(run / "last.pth")["config"])

    assert run_main(finetune.main, shlex.split(printed[1])) == 0, capsys.readouterr().err
    assert pd.read_csv(run / "history.csv")["epoch"].max() == 1
    assert run_main(finetune.main, ["--output-dir", str(run), "--resume", "--epochs", "2"]) == 0
    assert pd.read_csv(run / "history.csv")["epoch"].max() == 2
    assert {"resume", "overwrite"}.isdisjoint(load_checkpoint(run / "best.pth")["config"])


@pytest.mark.slow
def test_the_grid_reruns_a_phase_it_had_started_with_overwrite(tmp_path: Path, synthetic_stars: Path) -> None:
    """The real grid: its phase folder exists without last.pth, so the phase gets --overwrite; the run then
    dies after its last checkpoint (last.pth, no summary); every rerun of the grid used to fail it with
    "--resume and --overwrite contradict each other"."""
    out = tmp_path / "grid"
    phase = out / "star_only-circle-seed0" / "finetune"
    phase.mkdir(parents=True)
    command = [
        sys.executable, "-m", "megastarid.experiments.grid_search", "--strategies", "star_only",
        "--losses", "circle", "--epochs", "1", "--output-dir", str(out), "--star-root", str(synthetic_stars),
        "--", "--backbone", "test_resnet", "--no-pretrained", "--embedding-dim", "32", "--image-size", "32",
        "--batch-size", "8", "--num-instances", "2", "--workers", "0",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MEGASTARID_CACHE": str(tmp_path / "cache")}

    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=540)
    assert first.returncode == 0, first.stderr[-3000:]
    log = out / "star_only-circle-seed0" / "logs" / "finetune.log"
    assert log.read_text().splitlines()[0].endswith(" --overwrite")  # the folder existed without last.pth
    assert {"resume", "overwrite"}.isdisjoint(yaml.safe_load((phase / "config.yaml").read_text()))
    for name in ("run_summary.json", "star_evaluation_summary.json"):  # the crash: last.pth, no summary
        (phase / name).unlink()

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=540)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "contradict" not in rerun.stderr + rerun.stdout
    assert any(line.endswith(" --resume") for line in log.read_text().splitlines() if " $ " in line)
    table = pd.read_csv(out / "grid_results.csv")
    assert list(table["status"]) == ["finished"]


# -- 6. small: the split export is atomic, and errors quote at most ~100 characters of a value --------------


class _FailsToPrint:
    """A value whose text cannot be made: the CSV writer fails on it, as on a full disk mid-file."""

    def __str__(self) -> str:
        raise OSError(28, "No space left on device")


def test_export_split_never_leaves_half_a_file(tmp_path: Path) -> None:
    rows = 30_000  # more than pandas' chunk, so a direct writer has flushed rows before the bad one
    df = pd.DataFrame(
        {
            "path": [f"/data/p{i}.jpg" for i in range(rows)],
            "identity": "star",
            "folder": "2024-01-01",
            "date": pd.Timestamp("2024-01-01"),
            "dataset": "Site",
            "species": "Pycnopodia",
            "split": "train",
        }
    )
    df["identity"] = df["identity"].astype(object)
    df.loc[rows - 1, "identity"] = _FailsToPrint()
    from megastarid.data.catalogue import CATALOGUE_COLUMNS

    for column in CATALOGUE_COLUMNS:
        if column not in df:
            df[column] = ""
    out = tmp_path / "split.csv"
    out.write_text("the previous export\n")
    with pytest.raises((UserError, OSError)):
        export_split(df, None, out)
    assert out.read_text() == "the previous export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split.csv"]  # no temp file left behind


def test_export_split_writes_the_whole_table(tmp_path: Path, star_tree: Path, capsys) -> None:
    out = tmp_path / "out" / "split.csv"
    assert run_main(data_cli.main, ["check", "--star-root", str(star_tree), "--export-split", str(out)]) == 0
    table = pd.read_csv(out)
    assert len(table) > 0 and "identity" in table and "readable" in table


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("finetune", ["--precision", "x" * 500]),
        ("finetune", ["--gpus", "a" * 500]),
        ("finetune", ["--epochs", "9" * 300 + "x"]),
        ("finetune", ["--lr", "1" * 500 + "x"]),
        ("finetune", ["--" + "b" * 500]),
        ("grid-search", ["--strategies", "y" * 500]),
        ("grid-search", ["--seeds", "z" * 500]),
        ("evaluate", ["--embeddings", "e.npz", "--ks", "k" * 500]),
        ("synth", ["--out", "o", "--kind", "w" * 500]),
    ],
)
def test_an_error_quotes_at_most_about_100_characters_of_a_value(command, argv, nothing_runs, capsys) -> None:
    line = one_line_error(command, argv, capsys)
    assert len(line) < SHORT_LINE, line
    assert "characters)" in line  # says how long the value was


def test_the_grid_quotes_at_most_about_100_characters_of_a_value(tmp_path: Path, capsys) -> None:
    argv = ["--dry-run", "--output-dir", str(tmp_path), "--cotrain-args", "'" + "q" * 500]
    assert run_main(grid_search.main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot split" in err and len(err) < SHORT_LINE


@pytest.mark.parametrize(
    "content",
    [
        "precision: " + "p" * 500 + "\n",
        "k" * 500 + ": 1\n",
        "epochs: [" + ", ".join(["1"] * 5000) + "]\n",
        "epochs: {" + ", ".join(f"k{i}: {i}" for i in range(5000)) + "}\n",
        "epochs: '" + "e" * 5000 + "'\n",
    ],
)
def test_a_yaml_error_quotes_at_most_about_100_characters_of_a_value(tmp_path, content, capsys) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(content)
    line = one_line_error("finetune", ["--config", str(config)], capsys)
    assert len(line) < SHORT_LINE + len(str(config)), line


def test_quoted_cuts_strings_and_nested_values() -> None:
    assert errors.quoted("abc") == "'abc'"
    assert errors.quoted("x" * 500) == "'" + "x" * 100 + "…' (500 characters)"
    assert len(errors.quoted([[1] * 1000] * 1000)) <= 101
    assert errors.quoted(2.5) == "2.5"
