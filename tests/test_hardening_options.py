"""Issue 9, the option and config defects: run-control switches are not recorded, non-finite floats and
out-of-range seeds are refused by the one options mechanism, YAML files are read safely, the grid's dry run
checks what its real run checks, and no error echoes more than ~100 characters of a user's value."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from megastarid import catalogue, cli, data_cli, demo, evaluate, finetune, identify, prepare, synth
from megastarid.core import errors, options, parsing, yaml_config
from megastarid.core.console import run_main
from megastarid.core.errors import UserError
from megastarid.core.options import flag
from megastarid.core.parsing import parse_options
from megastarid.data.check import export_split
from megastarid.experiments import grid_search
from megastarid.experiments.plan import GridConfig, PhaseState, build_plan
from megastarid.models.checkpoints import load_checkpoint
from megastarid.training.config import (
    CotrainConfig,
    FinetuneConfig,
    PretrainConfig,
    parse_train_config,
    save_config,
)

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

    from megastarid.training.loop import INTERRUPTED, fit
    from megastarid.training.strategies import finetune_task

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


# -- 2. non-finite floats are refused for every float option of every command ------------------------------


def _option_classes() -> list[type]:
    return [
        PretrainConfig,
        FinetuneConfig,
        CotrainConfig,
        evaluate.EvaluateOptions,
        grid_search.GridSearchOptions,
        synth.SynthOptions,
        prepare.PrepareOptions,
        data_cli.CheckOptions,
        data_cli.PreviewOptions,
        demo.DemoOptions,
        identify.IdentifyOptions,
        catalogue.BuildOptions,
        catalogue.InfoOptions,
    ]


def _float_fields(cls: type) -> list[str]:
    hints = typing.get_type_hints(cls, include_extras=True)
    names = []
    for field in dataclasses.fields(cls):
        kind, _ = yaml_config.unwrap(hints[field.name])
        union = typing.get_origin(kind) in (typing.Union, types.UnionType)
        if float in (typing.get_args(kind) if union else (kind,)):
            names.append(field.name)
    return names


#: the float options, (options class, field) for every command
FLOAT_OPTIONS = [(cls, name) for cls in _option_classes() for name in _float_fields(cls)]


def test_the_float_options_are_found() -> None:
    found = {(cls.__name__, name) for cls, name in FLOAT_OPTIONS}
    assert {("FinetuneConfig", "lr"), ("CotrainConfig", "star_batch_ratio"), ("DemoOptions", "lr")} <= found


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "1e999"])
@pytest.mark.parametrize(("cls", "name"), FLOAT_OPTIONS, ids=lambda x: getattr(x, "__name__", x))
def test_every_float_option_refuses_a_non_finite_value(cls: type, name: str, value: str) -> None:
    with pytest.raises(UserError) as err:
        parse_options(cls, [flag(name), value], "test", "test")
    message = str(err.value)
    assert "\n" not in message
    # a command with a required option may name that first; the float itself must never get through
    assert message.startswith(f"{flag(name)} must be a finite number") or message.endswith("is required")


@pytest.mark.parametrize(
    ("command", "argv", "option"),
    [
        ("finetune", ["--lr", "inf"], "--lr"),
        ("pretrain", ["--weight-decay", "nan"], "--weight-decay"),
        ("finetune", ["--circle-weight", "nan"], "--circle-weight"),
        ("cotrain", ["--triplet-margin", "inf"], "--triplet-margin"),
        ("cotrain", ["--star-batch-ratio", "nan"], "--star-batch-ratio"),
        ("demo", ["--lr", "inf"], "--lr"),
        ("data check", ["--star-root", ".", "--gallery-fraction", "nan"], "--gallery-fraction"),
        ("catalogue build", ["--catalogue", "c.sqlite", "--accept", "nan"], "--accept"),
    ],
)
def test_a_non_finite_flag_is_one_line_naming_it(command, argv, option, nothing_runs, capsys) -> None:
    line = one_line_error(command, argv, capsys)
    assert line.startswith(f"megastarid: error: {option} must be a finite number"), line
    assert nothing_runs == []


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "'nan'", "1e999"])
def test_a_non_finite_yaml_value_is_one_line_naming_file_and_key(tmp_path: Path, value: str, capsys) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(f"lr: {value}\n")
    line = one_line_error("finetune", ["--config", str(config)], capsys)
    assert (
        line
        == f"megastarid: error: --config {config}: lr: must be a finite number, got {line.split('got ')[-1]}"
    )
    assert "finite" in line


# -- 3. YAML files: not UTF-8, alias bombs, deep nesting, 1e-4 --------------------------------------------


def _alias_bomb(depth: int) -> str:
    """The "billion laughs": each level lists the previous one 9 times, 9**depth strings in all."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, depth):
        lines.append(f"a{level}: &a{level} [" + ",".join([f"*a{level - 1}"] * 9) + "]")
    return "\n".join(lines) + f"\nepochs: *a{depth - 1}\n"


@pytest.mark.parametrize("depth", [5, 9])
@pytest.mark.parametrize("command", ["finetune", "synth", "grid-search"])
def test_an_alias_bomb_is_refused_in_one_short_line(tmp_path, depth, command, nothing_runs, capsys) -> None:
    config = tmp_path / "bomb.yaml"
    config.write_text(_alias_bomb(depth))
    assert depth < 9 or config.stat().st_size < 500  # the 9-level one: 444 bytes, 387M strings
    line = one_line_error(command, ["--config", str(config)], capsys)
    assert line.startswith(f"megastarid: error: --config {config}: line 2: aliases such as *a0")
    assert len(line) < SHORT_LINE


def test_an_alias_bomb_passed_through_the_grid_is_refused(tmp_path: Path, capsys) -> None:
    config = tmp_path / "bomb.yaml"
    config.write_text(_alias_bomb(5))
    argv = ["--dry-run", "--output-dir", str(tmp_path), "--", "--config", str(config)]
    assert run_main(grid_search.main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "aliases" in err and len(err) < SHORT_LINE


@pytest.mark.parametrize("where", ["command", "grid pass-through"])
def test_a_config_that_is_not_utf8_is_one_line_naming_the_file(tmp_path: Path, where: str, capsys) -> None:
    config = tmp_path / "latin1.yaml"
    config.write_bytes("epochs: 3\nbackbone: café\n".encode("latin-1"))
    if where == "command":
        assert run_main(finetune.main, ["--config", str(config)]) == 2
    else:
        assert (
            run_main(
                grid_search.main, ["--dry-run", "--output-dir", str(tmp_path), "--", "--config", str(config)]
            )
            == 2
        )
    err = capsys.readouterr().err
    reason = "not UTF-8 text (byte 0xe9 at position 23); save it as UTF-8"
    assert err == f"megastarid: error: --config {config}: {reason}\n"


def test_deeply_nested_yaml_is_one_line(tmp_path: Path, capsys) -> None:
    config = tmp_path / "deep.yaml"
    config.write_text("epochs: " + "[" * 50_000 + "]" * 50_000 + "\n")
    line = one_line_error("finetune", ["--config", str(config)], capsys)
    assert line.startswith(f"megastarid: error: --config {config}: not valid YAML")


def test_a_huge_config_file_is_refused_unread(tmp_path: Path, capsys) -> None:
    config = tmp_path / "huge.yaml"
    config.write_text("# padding\n" * 200_000)
    line = one_line_error("finetune", ["--config", str(config)], capsys)
    assert line.startswith(f"megastarid: error: --config {config}: larger than")


@pytest.mark.parametrize(("text", "value"), [("1e-4", 1e-4), ("'2e-3'", 2e-3), ("5E-5", 5e-5), ("3", 3.0)])
def test_yaml_numbers_without_a_dot_count_as_floats(tmp_path: Path, text: str, value: float) -> None:
    """YAML 1.1 reads 1e-4 (no dot) as a string; for a float option it is the number it looks like."""
    config = tmp_path / "run.yaml"
    config.write_text(f"lr: {text}\nweight_decay: 1e-5\n")
    cfg = parse(FinetuneConfig, ["--config", str(config)])
    assert (cfg.lr, cfg.weight_decay) == (value, 1e-5) and isinstance(cfg.lr, float)


def test_a_yaml_string_that_is_no_number_is_still_refused(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("lr: fast\n")
    with pytest.raises(UserError, match=r"lr: must be a number, got 'fast'"):
        parse(FinetuneConfig, ["--config", str(config)])


def test_the_help_and_readme_say_numbers_may_be_written_plain_or_quoted() -> None:
    assert "1e-4" in parsing.CONFIG_HELP
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "lr: 1e-4" in readme


# -- 4. seeds: 0 ... 2**32-1, one rule next to the field ----------------------------------------------------


@pytest.mark.parametrize(
    ("command", "argv", "option"),
    [
        ("finetune", ["--seed", str(10**30)], "--seed"),
        ("finetune", ["--seed", "-1"], "--seed"),
        ("pretrain", ["--seed", str(2**32)], "--seed"),
        ("cotrain", ["--seed", "-7"], "--seed"),
        ("synth", ["--out", "o", "--seed", "-1"], "--seed"),
        ("data show-augmentations", ["--out", "g.png", "--seed", str(2**64)], "--seed"),
        ("grid-search", ["--seeds", "0,-1"], "--seeds"),
        ("grid-search", ["--seeds", str(10**30)], "--seeds"),
    ],
)
def test_a_seed_out_of_range_is_one_line(command, argv, option, nothing_runs, capsys) -> None:
    line = one_line_error(command, argv, capsys)
    assert line.startswith(f"megastarid: error: {option} must be an integer from 0 to 4294967295"), line
    assert nothing_runs == []


def test_a_yaml_seed_follows_the_same_rule(tmp_path: Path, nothing_runs, capsys) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("seed: -1\n")
    line = one_line_error("finetune", ["--config", str(config)], capsys)
    rule = "must be an integer from 0 to 4294967295 (2**32-1)"
    assert line == f"megastarid: error: --config {config}: seed: {rule}, got '-1'"
    config.write_text("seeds: [0, 4294967296]\n")
    line = one_line_error("grid-search", ["--config", str(config)], capsys)
    assert "seeds: must be an integer from 0 to 4294967295" in line


def test_the_seed_range_ends_are_accepted() -> None:
    assert parse(FinetuneConfig, ["--seed", str(2**32 - 1)]).seed == 2**32 - 1
    assert parse(FinetuneConfig, ["--seed", "0"]).seed == 0


# -- 5. the grid's dry run validates what the real run validates -------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "-1"], "--seeds must be an integer from 0 to 4294967295"),
        (["--seeds", "1,99999999999"], "--seeds must be an integer from 0 to 4294967295"),
        (["--", "--lr", "nan"], "options for the pretrain phase: --lr must be a finite number"),
        (["--", "--lr", "inf"], "options for the pretrain phase: --lr must be a finite number"),
        (["--", "--weight-decay", "nan"], "--weight-decay must be a finite number"),
        (["--cotrain-args", "--star-batch-ratio nan"], "cotrain phase: --star-batch-ratio must be a finite"),
        (["--finetune-args=--triplet-margin inf"], "finetune phase: --triplet-margin must be a finite"),
    ],
)
def test_the_dry_run_refuses_what_the_real_run_refuses(argv, message, tmp_path, capsys) -> None:
    assert run_main(grid_search.main, ["--dry-run", "--output-dir", str(tmp_path), *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and message in captured.err, captured.err
    assert captured.out == ""  # no plan printed


def test_the_dry_run_reads_a_passed_through_config_file_like_the_phases(tmp_path: Path, capsys) -> None:
    config = tmp_path / "phase.yaml"
    config.write_text("lr: .nan\n")
    argv = ["--dry-run", "--output-dir", str(tmp_path / "g"), "--", "--config", str(config)]
    assert run_main(grid_search.main, argv) == 2
    assert "lr: must be a finite number" in capsys.readouterr().err


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


@pytest.mark.parametrize("column", ["date", "split"])
def test_a_csv_value_in_an_error_is_cut_too(star_tree: Path, column: str, capsys) -> None:
    """A photo table's cell is a user's value as much as an option is: a bad 500-character date or split
    value is named in one line without being echoed whole."""
    values = {"date": "2024-03-23", "split": "train"}
    rows = [f"identity,path,{column}"]
    for i, path in enumerate(sorted(star_tree.rglob("*.jpg"))[:4]):
        value = "x" * 500 if i == 2 else values[column]
        rows.append(f"a{i % 2},{path.relative_to(star_tree)},{value}")
    (star_tree / "m.csv").write_text("\n".join(rows) + "\n")
    argv = ["check", "--star-root", str(star_tree), "--star-csv", str(star_tree / "m.csv"), "--no-open"]
    assert run_main(data_cli.main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "(500 characters)" in err
    assert len(err) < SHORT_LINE + len(str(star_tree)), err


def test_quoted_cuts_strings_and_nested_values() -> None:
    assert errors.quoted("abc") == "'abc'"
    assert errors.quoted("x" * 500) == "'" + "x" * 100 + "…' (500 characters)"
    assert len(errors.quoted([[1] * 1000] * 1000)) <= 101
    assert errors.quoted(2.5) == "2.5"
