"""The three training commands end to end on tiny synthetic data, through their real ``main``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from megastarid import cotrain, finetune, pretrain
from megastarid.core.console import run_main
from megastarid.data.sources import load_star_catalogue
from megastarid.models.checkpoints import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = [
    "--backbone",
    "test_resnet",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--num-instances",
    "2",
    "--workers",
    "0",
    "--epochs",
    "1",
    "--warmup-epochs",
    "0",
    "--lr",
    "1e-3",
    "--eval-batch-size",
    "32",
]
STAR_REPORTS = ("star_identity_metrics.csv", "star_folder_metrics.csv", "star_evaluation_summary.json")


def read_summary(run: Path) -> dict:
    return json.loads((run / "run_summary.json").read_text())


@pytest.mark.slow
def test_pretrain_then_finetune_from_its_checkpoint(tmp_path: Path, tiny_sets: dict[str, Path]) -> None:
    pre, fine = tmp_path / "pre", tmp_path / "fine"
    assert (
        pretrain.main(["--output-dir", str(pre), "--wildlife-root", str(tiny_sets["wildlife"]), *TINY]) == 0
    )
    history = pd.read_csv(pre / "history.csv")
    assert history["epoch"].tolist() == [0, 1] and "val_wildlife_mAP" in history  # chosen by validation
    assert read_summary(pre)["status"] == "finished"
    assert (pre / "wildlife_evaluation_summary.json").is_file()  # validation report of best.pth
    assert yaml.safe_load((pre / "config.yaml").read_text())["backbone"] == "test_resnet"

    argv = [
        "--output-dir",
        str(fine),
        "--star-root",
        str(tiny_sets["stars"]),
        "--checkpoint",
        str(pre / "best.pth"),
        *TINY[2:],
    ]  # the backbone comes from the checkpoint
    assert finetune.main(argv) == 0
    assert yaml.safe_load((fine / "config.yaml").read_text())["backbone"] == "test_resnet"
    summary = read_summary(fine)
    assert summary["status"] == "finished" and summary["epochs_completed"] == 1
    assert set(summary) >= {"best_epoch", "best_metric", "epochs_completed", "wall_time_s"}
    for name in (*STAR_REPORTS, "best.pth", "last.pth", "history.csv", "training_curves.png"):
        assert (fine / name).is_file(), name
    columns = pd.read_csv(fine / "star_identity_metrics.csv").columns.tolist()
    assert columns[:2] == ["identity", "folder"] and "CMC@20" in columns
    report = json.loads((fine / "star_evaluation_summary.json").read_text())
    history = pd.read_csv(fine / "history.csv").set_index("epoch")
    assert summary["metric"] == "val_star_mAP"  # validation chose best.pth, the test side was scored once
    assert history.loc[summary["best_epoch"], "val_star_mAP"] == pytest.approx(summary["best_metric"])
    assert report["checkpoint"].endswith("best.pth") and report["mAP"] is not None
    assert not any(column.startswith("test_") for column in history.columns)  # no --monitor-test


@pytest.mark.slow
def test_cotrain_mixes_both_sets(tmp_path: Path, tiny_sets: dict[str, Path]) -> None:
    run = tmp_path / "co"
    argv = [
        "--output-dir",
        str(run),
        "--star-root",
        str(tiny_sets["stars"]),
        "--wildlife-root",
        str(tiny_sets["wildlife"]),
        "--star-batch-ratio",
        "0.5",
        *TINY,
    ]
    assert cotrain.main(argv) == 0
    history = pd.read_csv(run / "history.csv")
    assert history["epoch"].tolist() == [0, 1] and history["val_star_mAP"].notna().all()
    assert (run / "star_evaluation_summary.json").is_file()
    assert load_checkpoint(run / "last.pth")["config"]["star_batch_ratio"] == 0.5


@pytest.mark.slow
def test_a_corrupt_photo_is_skipped_logged_and_counted(tmp_path: Path, tiny_sets: dict[str, Path]) -> None:
    import shutil

    stars = shutil.copytree(tiny_sets["stars"], tmp_path / "stars")
    catalogue = load_star_catalogue(stars)
    broken = Path(catalogue.loc[catalogue["split"] == "train", "path"].iloc[0])
    broken.write_bytes(broken.read_bytes()[:200])  # truncated JPEG
    run = tmp_path / "run"
    assert finetune.main(["--output-dir", str(run), "--star-root", str(stars), *TINY]) == 0
    assert (run / "bad_images.txt").read_text().splitlines() == [str(broken)]
    assert read_summary(run)["bad_images"] == 1
    assert pd.read_csv(run / "history.csv")["bad_images"].iloc[1] >= 1


@pytest.mark.slow
def test_cotrain_logs_corrupt_wildlife_photos_by_their_path(
    tmp_path: Path, tiny_sets: dict[str, Path]
) -> None:
    import shutil

    wildlife = shutil.copytree(tiny_sets["wildlife"], tmp_path / "wildlife")
    for photo in (wildlife / "images").rglob("*.*"):
        photo.write_bytes(b"")  # every wildlife photo unreadable: the star part still trains
    run = tmp_path / "co"
    roots = ["--star-root", str(tiny_sets["stars"]), "--wildlife-root", str(wildlife)]
    assert cotrain.main(["--output-dir", str(run), *roots, *TINY]) == 0
    logged = (run / "bad_images.txt").read_text().splitlines()
    assert logged and all(line.startswith(str(wildlife / "images")) for line in logged)
    assert read_summary(run)["bad_images"] == len(logged)


def test_bad_options_fail_in_one_line_before_any_work(
    tmp_path: Path, tiny_sets: dict[str, Path], capsys
) -> None:
    cases = [
        (["--epochs", "-3"], "--epochs must be at least 1"),
        (["--num-instances", "64", "--batch-size", "128"], "--num-instances 64: no identity"),
        (["--circle-weight", "0", "--triplet-weight", "0"], "both 0"),
        (["--star-root", str(tmp_path / "nowhere")], "does not exist"),
    ]
    for extra, message in cases:
        argv = ["--output-dir", str(tmp_path / "run"), "--star-root", str(tiny_sets["stars"]), *TINY, *extra]
        assert run_main(finetune.main, argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("megastarid: error: ") and message in err and err.count("\n") == 1, err
        assert not (tmp_path / "run").exists()
    assert run_main(cotrain.main, ["--star-batch-ratio", "1.5"]) == 2
    assert "--star-batch-ratio" in capsys.readouterr().err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the machine without CUDA")
def test_gpus_without_cuda_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    assert run_main(finetune.main, ["--gpus", "0,1", "--output-dir", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == (
        "megastarid: error: --gpus 0,1: no CUDA GPU on this machine (leave out --gpus to use the CPU)\n"
    )
    assert not (tmp_path / "run").exists()


def test_offline_pretrained_fails_before_the_run_folder_is_made(
    tmp_path: Path, tiny_sets, capsys, monkeypatch
) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    run = tmp_path / "run"
    argv = ["--output-dir", str(run), "--star-root", str(tiny_sets["stars"]), *TINY, "--backbone", "resnet18"]
    assert run_main(finetune.main, [*argv, "--pretrained"]) == 2
    assert "--backbone-weights FILE" in capsys.readouterr().err
    assert not run.exists()


def test_checkpoint_and_backbone_must_agree(tmp_path: Path, tiny_sets: dict[str, Path], capsys) -> None:
    from megastarid.models.checkpoints import save_checkpoint
    from megastarid.models.network import build_model

    ckpt = tmp_path / "pre.pth"
    save_checkpoint(ckpt, build_model("test_resnet", 16), {"backbone": "test_resnet", "embedding_dim": 16})
    argv = ["--output-dir", str(tmp_path / "run"), "--checkpoint", str(ckpt), "--backbone", "resnet18"]
    assert run_main(finetune.main, argv) == 2
    assert "differs from the --checkpoint's test_resnet" in capsys.readouterr().err
