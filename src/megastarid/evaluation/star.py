"""Star evaluation (DESIGN §3): query side vs gallery side of the temporal split, with every report file."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from megastarid.core.errors import UserError
from megastarid.core.runfiles import STAR_EMBEDDINGS_NPZ
from megastarid.data.catalogue import examples
from megastarid.evaluation.embed import embed_images
from megastarid.evaluation.embeddings import EmbeddingSet, save_embeddings
from megastarid.evaluation.metrics import QueryResults, rank_queries, rank_score_matrix
from megastarid.evaluation.reports import (
    DEFAULT_KS,
    cmc_column,
    query_table,
    summary,
    write_reports,
)
from megastarid.evaluation.rerank import k_reciprocal_scores

log = logging.getLogger(__name__)

#: Catalogue split values: "train" rows form the gallery, "test" rows the queries.
GALLERY_SPLIT, QUERY_SPLIT = "train", "test"


def split_sides(catalogue: pd.DataFrame, what: str = "catalogue") -> tuple[pd.DataFrame, pd.DataFrame]:
    """The (query, gallery) rows of a split catalogue; a side with no image is a one-line error."""
    queries = catalogue[catalogue["split"] == QUERY_SPLIT]
    gallery = catalogue[catalogue["split"] == GALLERY_SPLIT]
    for name, side, split in (("query", queries, QUERY_SPLIT), ("gallery", gallery, GALLERY_SPLIT)):
        if side.empty:
            raise UserError(f"{what}: no {name} images (rows with split == {split!r}); nothing to evaluate")
    return queries, gallery


def embed_catalogue(
    model: nn.Module,
    catalogue: pd.DataFrame,
    image_size: int,
    device: torch.device | str,
    tta: bool = False,
    batch_size: int = 64,
    num_workers: int = 0,
) -> tuple[EmbeddingSet, pd.DataFrame, list[str]]:
    """Embed the query and gallery images of a split catalogue.

    Returns the embeddings, the catalogue rows of the embedded queries (aligned with the
    ``query_*`` arrays) and the paths of the unreadable images that were dropped.
    """
    queries, gallery = split_sides(catalogue)
    both = pd.concat([queries, gallery], ignore_index=True)
    emb = embed_images(model, both["path"].tolist(), image_size, device, batch_size, tta, num_workers)
    readable = ~np.isnan(emb).any(axis=1)
    is_query = np.arange(len(both)) < len(queries)
    keep_q, keep_g = readable & is_query, readable & ~is_query
    embeddings = EmbeddingSet.from_arrays(
        query_embeddings=emb[keep_q],
        gallery_embeddings=emb[keep_g],
        query_identities=both["identity"].to_numpy()[keep_q],
        gallery_identities=both["identity"].to_numpy()[keep_g],
        query_paths=both["path"].to_numpy()[keep_q],
        gallery_paths=both["path"].to_numpy()[keep_g],
        query_folders=both["folder"].to_numpy()[keep_q],
        gallery_folders=both["folder"].to_numpy()[keep_g],
    )
    kept_queries = both[keep_q].reset_index(drop=True)
    return embeddings, kept_queries, both["path"].to_numpy()[~readable].tolist()


def embedding_facts(tta: bool, image_size: int, unreadable: Sequence[str]) -> dict[str, object]:
    """The summary keys that say how a catalogue was embedded (for star and wildlife summaries alike)."""
    return {
        "tta": tta,
        "image_size": image_size,
        "num_unreadable_images": len(unreadable),
        "unreadable_images": unreadable,
    }


def rank_embeddings(
    embeddings: EmbeddingSet, device: torch.device | str | None = None, rerank: bool = False
) -> QueryResults:
    """Rank the queries by cosine similarity, or by k-reciprocal re-ranked distance with ``rerank``."""
    if not rerank:
        return rank_queries(
            embeddings.query_embeddings,
            embeddings.query_identities,
            embeddings.gallery_embeddings,
            embeddings.gallery_identities,
            device=device,
        )
    query = torch.as_tensor(embeddings.query_embeddings, device=device)
    gallery = torch.as_tensor(embeddings.gallery_embeddings, device=device)
    scores = k_reciprocal_scores(query, gallery)
    return rank_score_matrix(scores, embeddings.query_identities, embeddings.gallery_identities)


def evaluate_embeddings(
    embeddings: EmbeddingSet,
    out_dir: Path | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    checkpoint: str | os.PathLike | None = None,
    options: dict | None = None,
    rerank: bool = False,
    device: torch.device | str | None = None,
    **extra: object,
) -> dict:
    """Compute every metric from embeddings; with ``out_dir``, also write the report files there.

    Returns the summary dict (the content of ``star_evaluation_summary.json``); ``extra`` adds keys.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise UserError(f"--ks: ranks must be positive integers, got {ks}")
    start = time.perf_counter()
    results = rank_embeddings(embeddings, device, rerank)
    result = summary(
        results,
        embeddings.query_identities,
        embeddings.gallery_identities,
        ks,
        checkpoint,
        options,
        rerank=rerank,
        embedding_dim=int(embeddings.query_embeddings.shape[1]),
        ranking_time_s=round(time.perf_counter() - start, 3),
        **extra,
    )
    if results.num_skipped:
        skipped = np.unique(embeddings.query_identities[~results.scored]).tolist()
        log.warning(
            "%d of %d queries not scored: their identity has no gallery image (%s)",
            results.num_skipped,
            results.num_queries,
            examples(skipped, 5),
        )
    if out_dir is not None:
        queries = query_table(embeddings, results)
        write_reports(Path(out_dir), queries, results, result, ks)
    log.info(
        "star evaluation: mAP %s, %s over %d scored queries",
        _fmt(result["mAP"]),
        ", ".join(f"{cmc_column(k)} {_fmt(result[cmc_column(k)])}" for k in ks),
        results.num_scored,
    )
    return result


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def evaluate_star(
    model: nn.Module,
    catalogue: pd.DataFrame,
    out_dir: Path | None,
    image_size: int,
    device: torch.device | str,
    ks: Sequence[int] = DEFAULT_KS,
    checkpoint: str | os.PathLike | None = None,
    options: dict | None = None,
    tta: bool = False,
    rerank: bool = False,
    batch_size: int = 64,
    num_workers: int = 0,
) -> dict:
    """Embed the split star catalogue with ``model`` and evaluate it (DESIGN §3).

    With ``out_dir`` every report file of DESIGN §2 and ``star_embeddings.npz`` are (re)written
    there; with ``out_dir=None`` nothing is written (the trainer's periodic evaluations). Unreadable
    images are dropped, logged and counted in the summary. Returns the summary dict.
    """
    embeddings, _, unreadable = embed_catalogue(
        model, catalogue, image_size, device, tta, batch_size, num_workers
    )
    result = evaluate_embeddings(
        embeddings,
        out_dir,
        ks,
        checkpoint,
        options,
        rerank,
        device,
        **embedding_facts(tta, image_size, unreadable),
    )
    if out_dir is not None:  # after the reports: an evaluation that fails writes no part of its files
        save_embeddings(Path(out_dir) / STAR_EMBEDDINGS_NPZ, embeddings)
    return result
