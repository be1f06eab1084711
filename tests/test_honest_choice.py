"""Issue 10: the test side never chooses anything, validation never trains, and a checkpoint is not scored
open-set on individuals it trained on without saying so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import write_image
from megastarid import evaluate, finetune
from megastarid.core.console import run_main
from megastarid.data.sources import load_star_catalogue
from megastarid.data.splits import SplitPlan
from megastarid.data.synth import generate_stars
from megastarid.models.checkpoints import load_checkpoint
from megastarid.training.config import FinetuneConfig
from megastarid.training.strategies import finetune_task

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = [
    *("--backbone", "test_resnet", "--image-size", "32", "--batch-size", "8", "--num-instances", "2"),
    *("--workers", "0", "--warmup-epochs", "0", "--lr", "1e-3", "--eval-batch-size", "32"),
]
PROTOCOL = ["--split", "time-cut", "--val-fraction", "0.2"]


@pytest.fixture(scope="module")
def stars(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_stars(tmp_path_factory.mktemp("honest") / "stars", identities=10, image_size=40)


def test_validation_photos_never_reach_a_training_batch(stars: Path) -> None:
    cfg = FinetuneConfig(
        star_root=stars, backbone="test_resnet", image_size=32, split="time-cut", val_fraction=0.2
    )
    catalogue = load_star_catalogue(stars, None, cfg.split_plan())
    task = finetune_task(cfg)
    val = set(catalogue.loc[catalogue["split"] == "val", "path"])
    test = set(catalogue.loc[catalogue["split"] == "test", "path"])
    assert val and test and task.metric == "val_star_mAP"
    assert not (set(task.paths) & (val | test))  # every index a batch can draw is a train photo
    sampler = task.make_sampler(0, 1)
    sampler.set_epoch(1)
    drawn = {task.paths[i] for batch in sampler for i in batch}
    assert drawn <= set(catalogue.loc[catalogue["split"] == "train", "path"])


@pytest.mark.slow
def test_noise_on_the_test_side_changes_no_choice(stars: Path, tmp_path: Path) -> None:
    noisy = shutil.copytree(stars, tmp_path / "noisy")
    catalogue = load_star_catalogue(noisy, None, SplitPlan("time-cut", val_fraction=0.2))
    rng = np.random.default_rng(0)
    for i, path in enumerate(catalogue.loc[catalogue["split"] == "test", "path"]):
        write_image(Path(path), (40, 40), seed=int(rng.integers(1 << 30)) + i)  # pure noise, same name
    runs = {}
    for name, root in (("clean", stars), ("noisy", noisy)):
        run = tmp_path / name
        argv = ["--output-dir", str(run), "--star-root", str(root), *TINY, *PROTOCOL]
        assert finetune.main([*argv, "--epochs", "4", "--patience", "2", "--monitor-test"]) == 0
        runs[name] = run
    clean, noise = (pd.read_csv(runs[n] / "history.csv") for n in ("clean", "noisy"))
    validation = [c for c in clean.columns if c.startswith("val_")]
    assert validation and clean[validation].equals(noise[validation])  # validation never saw the change
    assert not clean["test_star_mAP"].equals(noise["test_star_mAP"])  # while the test side did
    summaries = [json.loads((runs[n] / "run_summary.json").read_text()) for n in ("clean", "noisy")]
    for key in ("best_epoch", "best_metric", "stopped_early", "epochs_completed"):
        assert summaries[0][key] == summaries[1][key], key
    weights = [load_checkpoint(runs[n] / "best.pth")["model"] for n in ("clean", "noisy")]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    calibrations = [json.loads((runs[n] / "calibration.json").read_text()) for n in ("clean", "noisy")]
    assert calibrations[0] == calibrations[1] and calibrations[0]["fitted_on"]["side"] == "validation"
    assert calibrations[0]["fitted_on"]["tta"] == "rot4"  # fitted on embeddings made as the report's are
    assert calibrations[0]["fitted_on"]["image_size"] == int(TINY[TINY.index("--image-size") + 1])
    opened = [json.loads((runs[n] / "star_openset_summary.json").read_text()) for n in ("clean", "noisy")]
    assert opened[0]["threshold"] == opened[1]["threshold"]


@pytest.mark.slow
def test_an_open_split_over_identities_the_checkpoint_trained_on_is_refused(
    stars: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "temporal"
    assert finetune.main(["--output-dir", str(run), "--star-root", str(stars), *TINY, "--epochs", "1"]) == 0
    argv = [
        "--checkpoint",
        str(run / "best.pth"),
        "--star-root",
        str(stars),
        "--output-dir",
        str(tmp_path / "e"),
    ]
    holdout = [*argv, "--split", "identity-holdout"]
    assert run_main(evaluate.main, holdout) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"megastarid: error: --checkpoint {run / 'best.pth'} trained on")
    assert "--allow-seen-identities" in err and len(err.splitlines()) == 1
    assert run_main(evaluate.main, [*holdout, "--allow-seen-identities"]) == 0
    summary = json.loads((tmp_path / "e" / "star_evaluation_summary.json").read_text())
    assert summary["options"]["seen_new_identities"] > 0
    assert run_main(evaluate.main, argv) == 0  # the split it was trained with: nothing to refuse
    opened = json.loads((tmp_path / "e" / "star_openset_summary.json").read_text())
    assert opened["protocol"] == "temporal" and opened["num_new_queries"] == 0 and opened["BAUS"] is None
