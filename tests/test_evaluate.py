"""``megastarid evaluate``: from a checkpoint or from saved embeddings, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import write_image
from megastarid.core.console import run_main
from megastarid.core.runfiles import STAR_EMBEDDINGS_NPZ as EMBEDDINGS_NPZ
from megastarid.core.runfiles import STAR_IDENTITY_CSV as IDENTITY_CSV
from megastarid.core.runfiles import STAR_SUMMARY_JSON as SUMMARY_JSON
from megastarid.core.runfiles import WILDLIFE_DATASET_CSV
from megastarid.data.sources import load_star_catalogue, load_wildlife_catalogue
from megastarid.evaluate import main
from megastarid.evaluation.embeddings import (
    NPZ_ARRAYS,
    OPTIONAL_ARRAYS,
    EmbeddingSet,
    load_embeddings,
    save_embeddings,
)
from megastarid.evaluation.star import evaluate_embeddings, evaluate_star
from megastarid.evaluation.wildlife import evaluate_wildlife
from megastarid.models.checkpoints import save_checkpoint
from megastarid.models.network import build_model

REPORTS = {
    "star_query_metrics.csv",
    IDENTITY_CSV,
    "star_folder_metrics.csv",
    SUMMARY_JSON,
    "cmc_curve.png",
    "folder_metrics.png",
}


def embedding_arrays(seed: int = 0, queries: int = 12, gallery: int = 30, dim: int = 8) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "query_embeddings": rng.normal(size=(queries, dim)).astype(np.float32),
        "gallery_embeddings": rng.normal(size=(gallery, dim)).astype(np.float32),
        "query_identities": np.array([f"A/s{i % 5}" for i in range(queries)]),
        "gallery_identities": np.array([f"A/s{i % 6}" for i in range(gallery)]),
        "query_paths": np.array([f"/d/q{i}.jpg" for i in range(queries)]),
        "gallery_paths": np.array([f"/d/g{i}.jpg" for i in range(gallery)]),
        "query_folders": np.array(["2024-05-01"] * queries),
        "gallery_folders": np.array(["2024-01-01"] * gallery),
    }


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = run_main(main, args)
    return code, capsys.readouterr().err


def test_embeddings_round_trip_recomputes_the_same_numbers(tmp_path: Path, capsys) -> None:
    arrays = embedding_arrays()
    npz = save_embeddings(tmp_path / "run" / EMBEDDINGS_NPZ, EmbeddingSet.from_arrays(**arrays))
    direct = evaluate_embeddings(load_embeddings(npz), None, ks=(1, 3))

    code, _ = run_cli(["--embeddings", str(npz), "--ks", "3,1"], capsys)

    assert code == 0
    assert {p.name for p in (tmp_path / "run").iterdir()} >= REPORTS  # default: the npz's folder
    written = json.loads((tmp_path / "run" / SUMMARY_JSON).read_text())
    assert written["mAP"] == pytest.approx(direct["mAP"])
    assert written["CMC@1"] == pytest.approx(direct["CMC@1"]) and "CMC@3" in written
    assert written["num_queries"] == 12 and written["num_skipped_queries"] == 0
    assert written["embeddings_file"] == str(npz)


def test_rerank_from_embeddings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    npz = save_embeddings(tmp_path / "e.npz", EmbeddingSet.from_arrays(**embedding_arrays()))
    code, _ = run_cli(["--embeddings", str(npz), "--rerank", "--output-dir", str(tmp_path / "rr")], capsys)
    assert code == 0
    assert json.loads((tmp_path / "rr" / SUMMARY_JSON).read_text())["rerank"] is True


def _broken(arrays: dict[str, np.ndarray], case: str) -> dict[str, np.ndarray]:
    if case == "missing":
        del arrays["gallery_paths"]
    elif case == "length":
        arrays["query_identities"] = arrays["query_identities"][:-1]
    elif case == "nonfinite":
        arrays["gallery_embeddings"][3, 2] = np.nan
    elif case == "flat":
        arrays["query_embeddings"] = arrays["query_embeddings"].ravel()
    elif case == "dims":
        arrays["gallery_embeddings"] = arrays["gallery_embeddings"][:, :5]
    elif case == "objects":
        arrays["query_paths"] = np.array(list(arrays["query_paths"]), dtype=object)
    return arrays


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "missing array(s) gallery_paths"),
        ("length", "query_identities has shape (11,) but query_embeddings has 12 rows"),
        ("nonfinite", "gallery_embeddings has 1 row(s) with NaN or infinite values"),
        ("flat", "query_embeddings must be 2-D"),
        ("dims", "query_embeddings have dimension 8, gallery_embeddings 5"),
        ("objects", "not a readable .npz embeddings file"),
    ],
)
def test_bad_embeddings_file_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture, case: str, expected: str
) -> None:
    npz = tmp_path / "bad.npz"
    np.savez(npz, **_broken(embedding_arrays(), case))
    code, err = run_cli(["--embeddings", str(npz)], capsys)
    assert code == 2
    assert err.startswith(f"megastarid: error: {npz}: ") and expected in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / SUMMARY_JSON).exists()


def test_module_entry_point_exit_code_and_stderr(tmp_path: Path) -> None:
    not_npz = tmp_path / "notes.npz"
    not_npz.write_text("hello")
    proc = subprocess.run(
        [sys.executable, "-m", "megastarid.evaluate", "--embeddings", str(not_npz)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"megastarid: error: {not_npz}: not an .npz embeddings file (expected a zip archive of named arrays)"
    ]


def test_option_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    npz = save_embeddings(tmp_path / "e.npz", EmbeddingSet.from_arrays(**embedding_arrays()))
    code, err = run_cli(["--embeddings", str(npz), "--tta", "flip"], capsys)
    assert code == 2
    assert err == "megastarid: error: --tta needs --checkpoint: saved embeddings cannot be re-embedded\n"
    code, err = run_cli(["--embeddings", str(npz), "--ks", "0,5"], capsys)
    assert code == 2
    assert "--ks: ranks must be positive integers" in err


def test_rerank_refuses_a_gallery_above_the_limit(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    arrays = embedding_arrays(queries=2, gallery=12_000, dim=4)
    npz = save_embeddings(tmp_path / "big.npz", EmbeddingSet.from_arrays(**arrays))
    code, err = run_cli(["--embeddings", str(npz), "--rerank"], capsys)
    assert code == 2
    assert err.startswith("megastarid: error: --rerank: 2 queries + 12000 gallery images exceed")
    assert err.count("\n") == 1


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("test_resnet", embedding_dim=16)
    path = tmp_path / "run" / "best.pth"
    save_checkpoint(path, model, {"backbone": "test_resnet", "embedding_dim": 16, "image_size": 32})
    return path


def test_checkpoint_evaluation_writes_reports_and_embeddings(
    checkpoint: Path, star_tree: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    bad = star_tree / "SiteA" / "star2" / "2024-05-01" / "zero.jpg"  # a query-side outing
    bad.write_bytes(b"")
    code, err = run_cli(
        ["--checkpoint", str(checkpoint), "--star-root", str(star_tree), "--tta", "flip"], capsys
    )
    assert code == 0, err
    run = checkpoint.parent
    assert {p.name for p in run.iterdir()} >= REPORTS | {EMBEDDINGS_NPZ}
    summary = json.loads((run / SUMMARY_JSON).read_text())
    catalogue = load_star_catalogue(star_tree)
    assert summary["num_queries"] == int((catalogue["split"] == "test").sum()) - 1
    assert summary["gallery_size"] == int((catalogue["split"] == "train").sum())
    assert summary["num_unreadable_images"] == 1 and summary["unreadable_images"] == [str(bad)]
    assert summary["checkpoint"] == str(checkpoint) and summary["tta"] == "flip"
    assert summary["options"]["train_config"]["backbone"] == "test_resnet"
    assert "skipped 1 unreadable image(s)" in caplog.text and str(bad) in caplog.text

    embeddings = load_embeddings(run / EMBEDDINGS_NPZ)
    assert embeddings.query_embeddings.shape == (summary["num_queries"], 16)
    assert {*NPZ_ARRAYS, *OPTIONAL_ARRAYS} == set(np.load(run / EMBEDDINGS_NPZ).files)
    assert set(embeddings.query_folders) <= set(catalogue["folder"])

    code, _ = run_cli(["--embeddings", str(run / EMBEDDINGS_NPZ), "--output-dir", str(run / "again")], capsys)
    assert code == 0
    again = json.loads((run / "again" / SUMMARY_JSON).read_text())
    assert again["mAP"] == pytest.approx(summary["mAP"]) and again["CMC@5"] == summary["CMC@5"]
    identities = pd.read_csv(run / IDENTITY_CSV)
    pd.testing.assert_frame_equal(identities, pd.read_csv(run / "again" / IDENTITY_CSV))


def test_evaluate_star_without_out_dir_writes_nothing(tmp_path: Path, star_tree: Path) -> None:
    model = build_model("test_resnet", embedding_dim=8).train()
    before = sorted(tmp_path.rglob("*"))
    summary = evaluate_star(model, load_star_catalogue(star_tree), None, 32, "cpu", ks=(1, 2))
    assert sorted(tmp_path.rglob("*")) == before
    assert {"mAP", "CMC@1", "CMC@2"} <= set(summary) and summary["num_unreadable_images"] == 0
    assert model.training  # the trainer's mode is restored


def test_wildlife_validation_overall_and_per_dataset(tmp_path: Path) -> None:
    root = tmp_path / "wildlife"
    rows = []
    for dataset in ("Cows", "Turtles"):
        for animal in range(3):
            for shot in range(3):
                rel = f"images/{dataset}/{animal}/{shot}.png"
                write_image(root / rel, (40, 40), seed=len(rows))
                split = "test" if shot == 2 else "train"
                identity = f"{dataset}_{animal}"
                rows.append({"identity": identity, "path": rel, "dataset": dataset, "split": split})
    write_image(root / "images/Turtles/new/0.png", (40, 40), seed=len(rows))  # its own photo, no gallery one
    rows.append(
        {"identity": "Turtles_new", "path": "images/Turtles/new/0.png", "dataset": "Turtles", "split": "test"}
    )
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    model = build_model("test_resnet", embedding_dim=8)

    result = evaluate_wildlife(model, load_wildlife_catalogue(root), 32, "cpu", out_dir=tmp_path / "out")

    assert result["num_queries"] == 7 and result["num_skipped_queries"] == 1 and result["gallery_size"] == 12
    per = result["per_dataset"]
    assert set(per) == {"Cows", "Turtles"}
    assert (per["Turtles"]["num_queries"], per["Turtles"]["num_skipped_queries"]) == (3, 1)
    assert (per["Cows"]["num_queries"] + per["Turtles"]["num_queries"]) == result["num_scored_queries"]
    weighted = sum(p["mAP"] * p["num_queries"] for p in per.values()) / result["num_scored_queries"]
    assert weighted == pytest.approx(result["mAP"])
    assert len(pd.read_csv(tmp_path / "out" / WILDLIFE_DATASET_CSV)) == 2
