"""WildlifeReID-10k validation: the official test split as queries against the train split as gallery.

One ranking of every test image against the whole train split gives the overall numbers; the
per-source-dataset numbers group those same per-query results by the query's dataset, so a
confusion with another dataset's animal counts against it (identities are dataset-prefixed).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from megastarid.core.files import atomic_write_all, csv_text, text_writer
from megastarid.core.runfiles import WILDLIFE_DATASET_CSV, WILDLIFE_SUMMARY_JSON
from megastarid.evaluation.embed import TTA
from megastarid.evaluation.embeddings import EmbeddingSet
from megastarid.evaluation.reports import (
    DEFAULT_KS,
    cmc_column,
    query_table,
    rank_stats,
    summary,
)
from megastarid.evaluation.star import TEST_SIDES, embed_catalogue, embedding_facts, rank_embeddings

log = logging.getLogger(__name__)


def dataset_table(queries: pd.DataFrame, ks: Sequence[int] = DEFAULT_KS) -> pd.DataFrame:
    """Per source dataset of the queries: scored and skipped query counts, mean rank, mAP, CMC@K."""
    stats, groups = rank_stats(queries, "dataset", ks)
    stats["num_identities"] = groups["identity"].nunique()
    everything = queries.groupby("dataset", sort=True)["scored"]
    stats = stats.reindex(everything.size().index)
    stats["num_queries"] = stats["num_queries"].fillna(0).astype(int)
    stats["num_identities"] = stats["num_identities"].fillna(0).astype(int)
    stats["num_skipped_queries"] = everything.agg(lambda scored: int((~scored).sum()))
    columns = ["num_identities", "num_queries", "num_skipped_queries", "mean_rank", "mAP"]
    return stats[columns + [cmc_column(k) for k in ks]].reset_index()


def evaluate_wildlife_embeddings(
    embeddings: EmbeddingSet,
    query_datasets: np.ndarray | Sequence[str],
    out_dir: Path | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    checkpoint: str | os.PathLike | None = None,
    options: dict | None = None,
    device: torch.device | str | None = None,
    **extra: object,
) -> dict:
    """Overall summary plus ``"per_dataset"`` (dataset -> its metrics); written to ``out_dir`` if given."""
    ks = sorted({int(k) for k in ks})
    results = rank_embeddings(embeddings, device)
    queries = query_table(embeddings, results)
    queries["dataset"] = np.asarray(query_datasets, dtype=str)
    table = dataset_table(queries, ks)
    per_dataset = {
        str(row["dataset"]): {key: _plain(value) for key, value in row.items() if key != "dataset"}
        for row in table.to_dict("records")
    }
    result = summary(
        results,
        embeddings.query_identities,
        embeddings.gallery_identities,
        ks,
        checkpoint,
        options,
        per_dataset=per_dataset,
        **extra,
    )
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        summary_text = json.dumps(result, indent=2, default=str) + "\n"
        atomic_write_all(  # both or neither
            {
                out_dir / WILDLIFE_SUMMARY_JSON: text_writer(summary_text),
                out_dir / WILDLIFE_DATASET_CSV: text_writer(csv_text(table)),
            }
        )
    log.info(
        "wildlife evaluation: mAP %s, CMC@1 %s over %d scored queries in %d datasets",
        result["mAP"],
        result.get(cmc_column(1)),
        results.num_scored,
        len(per_dataset),
    )
    return result


def _plain(value: object) -> object:
    """numpy scalars -> Python numbers, NaN -> None, for JSON."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def evaluate_wildlife(
    model: nn.Module,
    catalogue: pd.DataFrame,
    image_size: int,
    device: torch.device | str,
    ks: Sequence[int] = DEFAULT_KS,
    out_dir: Path | None = None,
    checkpoint: str | os.PathLike | None = None,
    options: dict | None = None,
    tta: TTA = "none",
    batch_size: int = 64,
    num_workers: int = 0,
    sides: tuple[tuple[str, ...], tuple[str, ...]] = TEST_SIDES,
) -> dict:
    """Embed a WildlifeReID-10k catalogue (official split) with ``model``; evaluate overall, per dataset:
    the official test split against the whole train split, or with ``sides=VALIDATION_SIDES`` the
    validation slice against the rest of the train split."""
    embeddings, queries, unreadable = embed_catalogue(
        model, catalogue, image_size, device, tta, batch_size, num_workers, sides
    )
    return evaluate_wildlife_embeddings(
        embeddings,
        queries["dataset"].to_numpy(),
        out_dir,
        ks,
        checkpoint,
        options,
        device,
        **embedding_facts(tta, image_size, unreadable),
    )
