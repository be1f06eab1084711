"""Every command's options through the one mechanism: ``--config FILE.yaml`` under the flags, and a bad
value as exactly one stderr line naming the option (exit code 2). Nothing is trained: each command's one
run function is replaced by a recorder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from megastarid import cli, cotrain, data_cli, demo, evaluate, finetune, prepare, pretrain, synth
from megastarid.core.parsing import error_line
from megastarid.experiments import grid_search

#: command argv prefix -> (module, name of its one run function)
COMMANDS: dict[str, tuple[Any, str]] = {
    "pretrain": (pretrain, "run_pretrain"),
    "finetune": (finetune, "run_finetune"),
    "cotrain": (cotrain, "run_cotrain"),
    "evaluate": (evaluate, "run"),
    "grid-search": (grid_search, "run"),
    "synth": (synth, "synth"),
    "prepare": (prepare, "prepare"),
    "data check": (data_cli, "check"),
    "data show-augmentations": (data_cli, "show_augmentations"),
    "demo": (demo, "demo"),
}

#: command -> (YAML file content, flags, expected field values: flag over YAML over default)
CONFIGS: dict[str, tuple[dict[str, Any], list[str], dict[str, Any]]] = {
    "pretrain": (
        {"epochs": 7, "lr": 0.01, "wildlife-datasets": "A,B"},
        ["--epochs", "3"],
        {"epochs": 3, "lr": 0.01, "wildlife_datasets": ("A", "B"), "batch_size": 32},
    ),
    "finetune": (
        {"epochs": 7, "circle_weight": 0.5, "gpus": [0, 1]},
        ["--circle-weight", "0.9"],
        {"epochs": 7, "circle_weight": 0.9, "gpus": (0, 1), "lr": 5e-5},
    ),
    "cotrain": (
        {"star-batch-ratio": 0.5, "precision": 32, "pretrained": True},
        ["--no-pretrained"],
        {"star_batch_ratio": 0.5, "precision": "32", "pretrained": False, "epochs": 100},
    ),
    "evaluate": (
        {
            "checkpoint": "b.pth",
            "ks": [10, 1],
            "wildlife-root": "w",
            "wildlife-species": ["cat"],
            "device": "cuda",
        },
        ["--device", "cpu"],
        {"ks": (1, 10), "device": "cpu", "wildlife_species": ("cat",), "checkpoint": Path("b.pth")},
    ),
    "grid-search": (
        {"epochs": 2, "seeds": "0,1", "losses": ["combined"], "dry_run": True},
        ["--seeds", "4"],
        {"epochs": 2, "seeds": (4,), "losses": ("combined",), "dry_run": True},
    ),
    "synth": (
        {"out": "stars", "kind": "wildlife", "identities": 3},
        ["--identities", "5"],
        {"out": Path("stars"), "kind": "wildlife", "identities": 5, "seed": 0},
    ),
    "prepare": (
        {"src": "a", "dst": "b", "size": 300},
        ["--quality", "80"],
        {"src": Path("a"), "dst": Path("b"), "size": 300, "quality": 80},
    ),
    "data check": (
        {"star_csv": "x.csv", "open": False, "gallery_fraction": 0.5},
        ["--star-csv", "y.csv"],
        {"star_csv": Path("y.csv"), "open": False, "gallery_fraction": 0.5},
    ),
    "data show-augmentations": (
        {"out": "grid.png", "n": 3, "variants": 2},
        ["--variants", "4"],
        {"out": Path("grid.png"), "n": 3, "variants": 4, "image_size": 224},
    ),
    "demo": (
        {"backbone": "test_resnet", "finetune-epochs": 2},
        ["--finetune-epochs", "3"],
        {"backbone": "test_resnet", "finetune_epochs": 3, "pretrain_epochs": 5},
    ),
}

#: command -> (flags with one bad value, the option the error must name)
BAD_VALUES: dict[str, tuple[list[str], str]] = {
    "pretrain": (["--circle-weight", "abc"], "--circle-weight"),
    "finetune": (["--epochs", "0"], "--epochs"),
    "cotrain": (["--star-batch-ratio", "1.5"], "--star-batch-ratio"),
    "evaluate": (["--embeddings", "e.npz", "--ks", "1,x"], "--ks"),
    "grid-search": (["--seeds", "0,x"], "--seeds"),
    "synth": (["--out", "o", "--kind", "fish"], "--kind"),
    "prepare": (["--src", "a", "--dst", "b", "--size", "big"], "--size"),
    "data check": (["--star-root", "s", "--gallery-fraction", "most"], "--gallery-fraction"),
    "data show-augmentations": (["--out", "g.png", "--n", "0"], "--n"),
    "demo": (["--lr", "fast"], "--lr"),
}


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Replace every command's run function by one that records the options it is given."""
    seen: list[Any] = []
    for module, name in COMMANDS.values():
        monkeypatch.setattr(module, name, lambda options, *rest: seen.append(options) or 0)
    return seen


def run_cli(command: str, argv: list[str]) -> int:
    return cli.main([*command.split(), *argv])


@pytest.mark.parametrize("command", list(COMMANDS))
def test_config_file_under_the_flags(command: str, tmp_path: Path, recorded: list[Any], monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    content, flags, expected = CONFIGS[command]
    (tmp_path / "options.yaml").write_text(yaml.safe_dump(content))
    assert run_cli(command, ["--config", "options.yaml", *flags]) == 0
    (options,) = recorded
    assert {name: getattr(options, name) for name in expected} == expected


@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_value_is_one_line_naming_the_option(command: str, recorded: list[Any], capsys) -> None:
    flags, option = BAD_VALUES[command]
    assert run_cli(command, flags) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"megastarid: error: {option}"), lines[0]
    assert recorded == [] and captured.out == ""


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_mentions_the_config_file(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(command, ["--help"])
    assert exit_info.value.code == 0
    assert "--config FILE.yaml" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("nonsense_option: 3\n", "unknown option 'nonsense_option'"),
        ("image_size: three\n", "image_size: expected int, got 'three'"),
        ("[1, 2]\n", "expected a mapping"),
        ("seed: [\n", "not valid YAML"),
    ],
)
@pytest.mark.parametrize("command", ["synth", "data show-augmentations", "demo", "finetune"])
def test_bad_config_file_is_one_line_naming_the_file(
    command: str, content: str, message: str, tmp_path: Path, recorded: list[Any], capsys
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    assert run_cli(command, ["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and err.startswith(f"megastarid: error: --config {config}: ") and message in err
    )


def test_missing_config_file_and_missing_required_option(tmp_path: Path, recorded, capsys) -> None:
    assert run_cli("synth", ["--config", str(tmp_path / "none.yaml")]) == 2
    assert "cannot read it" in capsys.readouterr().err
    assert run_cli("prepare", ["--size", "100"]) == 2
    assert capsys.readouterr().err == "megastarid: error: --src and --dst are required\n"
    assert run_cli("synth", ["--config"]) == 2
    assert "--config needs a file" in capsys.readouterr().err


def test_a_narrow_terminal_does_not_wrap_the_error(monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    assert run_cli("pretrain", ["--lr", "x" * 200]) == 2
    err = capsys.readouterr().err
    assert err == f"megastarid: error: --lr must be a number, got '{'x' * 100}…' (200 characters)\n"


def test_error_line_reads_both_box_styles() -> None:
    unicode_box = (
        "╭─ Value error ──────╮\n│ Error parsing --seed: bad │\n│ ──────── │\n│ For full helptext │\n╰────╯\n"
    )
    ascii_box = (
        " Unrecognized options \n ------------------- \n  Unrecognized options: --x\n  -----\n  more\n"
    )
    assert error_line(unicode_box) == "--seed: bad"
    assert error_line(ascii_box) == "unrecognized options: --x"
    assert error_line("plain words\n") == "plain words"
