"""Training configs: flags from the dataclasses (tyro), YAML under flags, one-line errors before work."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from megastarid.core.errors import UserError
from megastarid.training.config import (
    CotrainConfig,
    FinetuneConfig,
    PretrainConfig,
    parse_train_config,
    save_config,
)


def parse(cls, argv):
    return parse_train_config(cls, argv, "test", "test")


def test_defaults_match_the_original_tool() -> None:
    pre, fine, co = parse(PretrainConfig, []), parse(FinetuneConfig, []), parse(CotrainConfig, [])
    assert (pre.epochs, fine.epochs, co.epochs) == (50, 100, 100)
    assert (pre.lr, fine.lr) == (1e-4, 5e-5)
    assert pre.batch_size == fine.batch_size == 32
    assert (fine.circle_weight, fine.triplet_weight, co.star_batch_ratio) == (0.7, 0.3, 0.3)
    assert pre.output_dir == Path("checkpoints/megastarid/pretrain")
    assert fine.output_dir == Path("checkpoints/megastarid/finetune")
    assert co.output_dir == Path("checkpoints/megastarid/cotrain")


def test_every_field_has_a_flag(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(CotrainConfig, ["--help"])
    assert exit_info.value.code == 0
    flags = set(re.findall(r"--[a-z][a-z0-9-]*", capsys.readouterr().out))
    for name in CotrainConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in flags
    assert {"--pretrained", "--no-pretrained", "--config"} <= flags


def test_flags_override_the_yaml_file(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump({"epochs": 7, "lr": 0.01, "star-batch-ratio": 0.5, "backbone": "resnet18"})
    )
    cfg = parse(CotrainConfig, ["--config", str(config), "--epochs", "3"])
    assert (cfg.epochs, cfg.lr, cfg.star_batch_ratio, cfg.backbone) == (3, 0.01, 0.5, "resnet18")


def test_saved_config_reads_back(tmp_path: Path) -> None:
    cfg = parse(FinetuneConfig, ["--epochs", "4", "--star-root", str(tmp_path), "--no-pretrained"])
    save_config(cfg, tmp_path / "config.yaml")
    again = parse(FinetuneConfig, ["--config", str(tmp_path / "config.yaml")])
    assert again == cfg


def test_resume_alone_reuses_the_run_folder_config(tmp_path: Path) -> None:
    cfg = parse(FinetuneConfig, ["--output-dir", str(tmp_path), "--epochs", "4", "--lr", "0.002"])
    save_config(cfg, tmp_path / "config.yaml")
    resumed = parse(FinetuneConfig, ["--output-dir", str(tmp_path), "--resume", "--epochs", "6"])
    assert (resumed.resume, resumed.lr, resumed.epochs) == (True, 0.002, 6)


@pytest.mark.parametrize(
    ("cls", "argv", "message"),
    [
        (FinetuneConfig, ["--epochs", "-1"], "--epochs must be at least 1"),
        (FinetuneConfig, ["--epochs", "two"], r"--epochs: invalid literal for int\(\) with base 10: 'two'"),
        (CotrainConfig, ["--star-batch-ratio", "1.2"], "--star-batch-ratio must be between 0 and 1"),
        (CotrainConfig, ["--star-batch-ratio", "0"], "--star-batch-ratio must be between 0 and 1"),
        (FinetuneConfig, ["--circle-weight", "0", "--triplet-weight", "0"], "both 0"),
        (FinetuneConfig, ["--batch-size", "30", "--num-instances", "4"], "multiple of --num-instances"),
        (FinetuneConfig, ["--lr", "0"], "--lr must be positive"),
        (FinetuneConfig, ["--precision", "fp8"], "invalid choice"),
        (FinetuneConfig, ["--gpus", "a,b"], "--gpus must be comma-separated"),
        (FinetuneConfig, ["--star-root", "/no/such/folder"], "--star-root: /no/such/folder does not exist"),
        (FinetuneConfig, ["--resume", "--overwrite"], "contradict"),
        (PretrainConfig, ["--bogus"], "unrecognized options: --bogus"),
    ],
)
def test_bad_values_are_one_line_errors(cls, argv, message) -> None:
    with pytest.raises(UserError, match=message) as err:
        parse(cls, argv)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("epochs: [1, 2]\n", "epochs: expected int"),
        ("nonsense_option: 3\n", "unknown option 'nonsense_option'"),
        ("precision: fp8\n", "must be one of"),
        ("- just\n- a list\n", "expected a mapping"),
        ("epochs: [\n", "not valid YAML"),
    ],
)
def test_bad_yaml_is_a_one_line_error(tmp_path: Path, content: str, message: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    with pytest.raises(UserError, match=message) as err:
        parse(FinetuneConfig, ["--config", str(config)])
    assert str(config) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("cls", [PretrainConfig, CotrainConfig])
def test_both_wildlife_commands_filter_the_wildlife_set(cls, synthetic_wildlife: Path) -> None:
    from megastarid.training.tasks import wildlife_catalogue

    argv = ["--wildlife-root", str(synthetic_wildlife), "--wildlife-datasets", "WhaleSharkID,StripeSpotter"]
    catalogue = wildlife_catalogue(parse(cls, argv))
    assert set(catalogue["dataset"]) == {"WhaleSharkID", "StripeSpotter"}
