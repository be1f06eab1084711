"""Issue 9, the option and config defects: run-control switches are not recorded, non-finite floats and
out-of-range seeds are refused by the one options mechanism, YAML files are read safely, the grid's dry run
checks what its real run checks, and no error echoes more than ~100 characters of a user's value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from megastarid import cli, data_cli, demo, evaluate, finetune, prepare, synth
from megastarid.core import errors
from megastarid.core.console import run_main
from megastarid.core.errors import UserError
from megastarid.data.check import export_split
from megastarid.experiments import grid_search
from megastarid.training.config import (
    parse_train_config,
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
