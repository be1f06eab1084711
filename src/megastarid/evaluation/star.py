"""Star evaluation (DESIGN §3): the test side against the gallery (the whole train side, validation
included), with every report file; the validation side against the train rows, for the trainer's
choices; and the open-set report with its calibration, fitted on validation only."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from megastarid.core.errors import UserError
from megastarid.core.files import write_json
from megastarid.core.runfiles import CALIBRATION_JSON, STAR_EMBEDDINGS_NPZ
from megastarid.data.catalogue import examples
from megastarid.evaluation.embed import TTA, embed_images
from megastarid.evaluation.embeddings import EmbeddingSet, save_embeddings
from megastarid.evaluation.metrics import QueryResults, rank_queries, rank_score_matrix
from megastarid.evaluation.openset import OpenSetAnswers, answer_queries, concat_answers, fit_calibration
from megastarid.evaluation.openset_report import write_openset_reports
from megastarid.evaluation.reports import (
    DEFAULT_KS,
    cmc_column,
    query_table,
    summary,
    write_reports,
)
from megastarid.evaluation.rerank import k_reciprocal_scores

log = logging.getLogger(__name__)

#: Catalogue split values: the test side is queried against the gallery, the whole train side
#: (validation included: its photos are earlier than every test photo of their identity).
TEST_SIDES: tuple[tuple[str, ...], tuple[str, ...]] = (("test",), ("train", "val"))
#: Validation is queried against the train rows alone (what the model trains on).
VALIDATION_SIDES: tuple[tuple[str, ...], tuple[str, ...]] = (("val",), ("train",))


def split_sides(
    catalogue: pd.DataFrame,
    what: str = "catalogue",
    sides: tuple[tuple[str, ...], tuple[str, ...]] = TEST_SIDES,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The (query, gallery) rows of a split catalogue; a side with no image is a one-line error."""
    queries = catalogue[catalogue["split"].isin(sides[0])]
    gallery = catalogue[catalogue["split"].isin(sides[1])]
    for name, side, splits in (("query", queries, sides[0]), ("gallery", gallery, sides[1])):
        if side.empty:
            wanted = " or ".join(repr(split) for split in splits)
            raise UserError(f"{what}: no {name} images (rows with split == {wanted}); nothing to evaluate")
    return queries, gallery


def embed_catalogue(
    model: nn.Module,
    catalogue: pd.DataFrame,
    image_size: int,
    device: torch.device | str,
    tta: TTA = "none",
    batch_size: int = 64,
    num_workers: int = 0,
    sides: tuple[tuple[str, ...], tuple[str, ...]] = TEST_SIDES,
) -> tuple[EmbeddingSet, pd.DataFrame, list[str]]:
    """Embed the query and gallery images of a split catalogue (``sides``: which split values are the
    queries and which the gallery).

    Returns the embeddings, the catalogue rows of the embedded queries (aligned with the
    ``query_*`` arrays) and the paths of the unreadable images that were dropped.
    """
    queries, gallery = split_sides(catalogue, sides=sides)
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
        gallery_splits=both["split"].to_numpy()[keep_g],
        protocol=catalogue.attrs.get("protocol") or "temporal",
    )
    kept_queries = both[keep_q].reset_index(drop=True)
    return embeddings, kept_queries, both["path"].to_numpy()[~readable].tolist()


#: the ``embedding_facts`` that say how embeddings were made (a calibration records them)
EMBEDDED_KEYS = ("tta", "image_size")


def embedding_facts(tta: TTA, image_size: int, unreadable: Sequence[str]) -> dict[str, object]:
    """The summary keys that say how a catalogue was embedded (for star and wildlife summaries alike);
    ``tta`` is the mode's name (summaries written before the modes hold true/false)."""
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
    openset: OpenSetSettings | None = None,
    **extra: object,
) -> dict:
    """Compute every metric from embeddings; with ``out_dir``, also write the report files there (and,
    with ``openset``, the calibration fitted on validation and the test side's open-set report).

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
    if out_dir is not None and openset is not None:
        embedded = {key: extra[key] for key in EMBEDDED_KEYS if key in extra}
        result["openset"] = openset_report(embeddings, Path(out_dir), openset, embedded)
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
    tta: TTA = "none",
    rerank: bool = False,
    batch_size: int = 64,
    num_workers: int = 0,
    sides: tuple[tuple[str, ...], tuple[str, ...]] = TEST_SIDES,
    openset: OpenSetSettings | None = None,
) -> dict:
    """Embed the split star catalogue with ``model`` and evaluate it (DESIGN §3): by default the test side
    against the gallery; ``sides=VALIDATION_SIDES`` scores validation against the train rows instead.

    With ``out_dir`` every report file of DESIGN §2 and ``star_embeddings.npz`` are (re)written
    there (with ``openset``, also ``calibration.json`` and the open-set report); with ``out_dir=None``
    nothing is written (the trainer's periodic evaluations). Unreadable images are dropped, logged and
    counted in the summary. Returns the summary dict.
    """
    embeddings, _, unreadable = embed_catalogue(
        model, catalogue, image_size, device, tta, batch_size, num_workers, sides
    )
    result = evaluate_embeddings(
        embeddings,
        out_dir,
        ks,
        checkpoint,
        options,
        rerank,
        device,
        openset,
        **embedding_facts(tta, image_size, unreadable),
    )
    if out_dir is not None:  # after the reports: an evaluation that fails writes no part of its files
        save_embeddings(Path(out_dir) / STAR_EMBEDDINGS_NPZ, embeddings)
    return result


@dataclass(frozen=True)
class OpenSetSettings:
    """How the open-set decision is calibrated on validation (``--calibration``, ``--max-false-new``)."""

    method: str = "isotonic"
    max_false_new: float | None = None
    accept: float = 0.5


def validation_view(embeddings: EmbeddingSet) -> EmbeddingSet | None:
    """The validation rows of the gallery as queries against its train rows; None without both."""
    val = embeddings.is_val
    if not val.any() or val.all():
        return None
    pick = {"query": val, "gallery": ~val}
    arrays = {
        f"{side}_{name}": getattr(embeddings, f"gallery_{name}")[rows]
        for side, rows in pick.items()
        for name in ("embeddings", "identities", "paths", "folders")
    }
    return EmbeddingSet.from_arrays(**arrays, protocol=embeddings.protocol)


def validation_answers(view: EmbeddingSet) -> OpenSetAnswers:
    """Validation's open-set answers: known queries as they are, and new ones. Under the open protocols
    the pseudo-new identities held out of training are the new ones; under ``temporal`` every validation
    query is also scored with its own identity's photos left out of the gallery (the weaker stand-in for
    a new individual: the same photo conditions, an identity the model has seen)."""
    args = (view.query_embeddings, view.query_identities, view.gallery_embeddings, view.gallery_identities)
    known = answer_queries(*args)
    if view.protocol != "temporal":
        return known
    return concat_answers([known, answer_queries(*args, leave_own_out=True)])


def openset_report(
    embeddings: EmbeddingSet,
    out_dir: Path,
    settings: OpenSetSettings,
    embedded: Mapping[str, object] | None = None,
) -> dict:
    """Fit the calibration on validation (``calibration.json``), then score the test side at its τ and
    write the open-set report; returns the open-set summary, or why it was not written (too few
    validation queries is one line in the log and in the summary, never a silent default). ``embedded``
    (``EMBEDDED_KEYS``: the TTA and image size) goes into the calibration's ``fitted_on``: its τ holds
    only for embeddings made the same way, which the catalogue checks."""
    view = validation_view(embeddings)
    try:
        if view is None:
            raise UserError("no validation side (--val-fraction 0, or the set is too small to spare one)")
        calibration, _ = fit_calibration(
            validation_answers(view),
            settings.method,
            settings.max_false_new,
            settings.accept,
            fitted_on={"side": "validation", "protocol": embeddings.protocol, **(embedded or {})},
        )
    except UserError as err:
        log.warning("no calibration.json and no open-set report: %s", err)
        return {"written": False, "reason": str(err)}
    write_json(out_dir / CALIBRATION_JSON, calibration.to_dict())
    test = answer_queries(
        embeddings.query_embeddings,
        embeddings.query_identities,
        embeddings.gallery_embeddings,
        embeddings.gallery_identities,
    )
    report = write_openset_reports(
        test, embeddings.query_paths, calibration, out_dir, {"protocol": embeddings.protocol}
    )
    log.info(
        "open set (test side, %s): BAKS %s, BAUS %s, geometric mean %s, AUROC %s, ECE %s at tau %.4f",
        embeddings.protocol,
        *(_fmt(report[key]) for key in ("BAKS", "BAUS", "geometric_mean", "AUROC", "ECE")),
        calibration.threshold,
    )
    keys = ("threshold", "BAKS", "BAUS", "geometric_mean", "AUROC", "ECE", "num_new_queries", "threshold_gap")
    return {"written": True, **{key: report[key] for key in keys}}
