"""Report tables, summary and plots built from per-query results (DESIGN §2 file names and columns).

Every table aggregates the scored queries only (queries whose identity has a gallery image);
skipped queries are counted in the summary. ``std_rank`` is the population standard deviation
(ddof=0) of the first ranks, so a folder with a single query has ``std_rank`` 0.0.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from pandas.api.typing import DataFrameGroupBy

from megastarid.core.files import (
    atomic_write,
    atomic_write_all,
    bytes_writer,
    csv_text,
    display_text,
    text_writer,
)
from megastarid.core.runfiles import (
    CMC_PNG,
    FOLDER_PNG,
    STAR_FOLDER_CSV,
    STAR_IDENTITY_CSV,
    STAR_QUERY_CSV,
    STAR_SUMMARY_JSON,
)
from megastarid.evaluation.embeddings import EmbeddingSet
from megastarid.evaluation.metrics import QueryResults, cmc, mean_ap

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 20)
#: The CMC curve always spans at least ranks 1..20.
CMC_CURVE_MAX_K = 20


def cmc_column(k: int) -> str:
    return f"CMC@{k}"


def query_table(embeddings: EmbeddingSet, results: QueryResults) -> pd.DataFrame:
    """One row per query image: where its first correct match ranked and its AP (scored or not)."""
    return pd.DataFrame(
        {
            "path": embeddings.query_paths,
            "identity": embeddings.query_identities,
            "folder": embeddings.query_folders,
            "scored": results.scored,
            "rank": pd.Series(results.first_rank, dtype="Int64").mask(~results.scored),
            "AP": results.average_precision,
            "num_gallery_matches": results.num_positives,
        }
    )


def rank_stats(queries: pd.DataFrame, by: str, ks: Sequence[int]) -> tuple[pd.DataFrame, DataFrameGroupBy]:
    """Mean rank, query count, mAP and CMC@K of the scored queries grouped by column ``by``.

    Also returns the groups, for callers that add their own columns.
    """
    scored = queries[queries["scored"]]
    hits = {cmc_column(k): (scored["rank"] <= k).astype(float) for k in ks}
    groups = scored.assign(**hits).groupby(by, sort=True)
    stats = groups.agg(
        mean_rank=("rank", "mean"),
        num_queries=("rank", "size"),
        mAP=("AP", "mean"),
        **{column: (column, "mean") for column in hits},
    )
    return stats, groups


def identity_table(queries: pd.DataFrame, ks: Sequence[int] = DEFAULT_KS) -> pd.DataFrame:
    """Per identity: its query folders (``;``-joined), mean/best/worst rank, query count, mAP, CMC@K."""
    stats, groups = rank_stats(queries, "identity", ks)
    stats["folder"] = groups["folder"].agg(lambda f: ";".join(sorted(set(f))))
    stats["best_rank"] = groups["rank"].min().astype(int)
    stats["worst_rank"] = groups["rank"].max().astype(int)
    columns = ["folder", "mean_rank", "best_rank", "worst_rank", "num_queries", "mAP"]
    return stats[columns + [cmc_column(k) for k in ks]].reset_index()


def folder_table(queries: pd.DataFrame, ks: Sequence[int] = DEFAULT_KS) -> pd.DataFrame:
    """Per query outing folder: identities seen, mean and std (ddof=0) rank, query count, mAP, CMC@K."""
    stats, groups = rank_stats(queries, "folder", ks)
    stats["num_identities"] = groups["identity"].nunique()
    stats["std_rank"] = groups["rank"].std(ddof=0)
    columns = ["num_identities", "mean_rank", "std_rank", "num_queries", "mAP"]
    return stats[columns + [cmc_column(k) for k in ks]].reset_index()


def summary(
    results: QueryResults,
    query_identities: np.ndarray | Sequence[str],
    gallery_identities: np.ndarray | Sequence[str],
    ks: Sequence[int] = DEFAULT_KS,
    checkpoint: str | os.PathLike | None = None,
    options: dict | None = None,
    **extra: object,
) -> dict:
    """The summary dict: overall mAP and CMC@K, counts, the checkpoint, the options and ``extra`` keys."""
    query_ids = np.asarray(query_identities, dtype=str)
    gallery_ids = np.asarray(gallery_identities, dtype=str)
    out: dict = {"mAP": _finite_or_none(mean_ap(results))}
    out.update({cmc_column(k): _finite_or_none(v) for k, v in cmc(results, ks).items()})
    out.update(
        num_queries=results.num_queries,
        num_scored_queries=results.num_scored,
        num_skipped_queries=results.num_skipped,
        num_skipped_identities=int(np.unique(query_ids[~results.scored]).size),
        gallery_size=int(gallery_ids.size),
        num_identities=int(np.union1d(query_ids, gallery_ids).size),
        num_query_identities=int(np.unique(query_ids).size),
        num_gallery_identities=int(np.unique(gallery_ids).size),
        checkpoint=None if checkpoint is None else str(checkpoint),
        options=dict(options or {}),
    )
    out.update(extra)
    return out


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN: a metric that is undefined (no scored query) is written as null."""
    return None if math.isnan(value) else value


def plot_cmc(results: QueryResults, path: Path, max_k: int = CMC_CURVE_MAX_K) -> Path:
    """CMC@1..max_k as a step curve."""
    return _save_figure(cmc_figure(results, max_k), path)


def cmc_figure(results: QueryResults, max_k: int = CMC_CURVE_MAX_K) -> Figure:
    """The CMC curve's figure (``plot_cmc`` without the file)."""
    ks = list(range(1, max_k + 1))
    curve = cmc(results, ks)
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    ax.plot(ks, [curve[k] for k in ks], marker="o", markersize=3)
    ax.set(xlabel="rank K", ylabel="CMC@K", ylim=(0, 1.02), xlim=(0.5, max_k + 0.5))
    ax.set_title(f"CMC (mAP {mean_ap(results):.3f}, {results.num_scored} scored queries)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return fig


def plot_folders(folders: pd.DataFrame, path: Path) -> Path:
    """Horizontal bars of mAP and CMC@1 per outing folder, sorted by mAP (worst at the bottom)."""
    return _save_figure(folders_figure(folders), path)


def folders_figure(folders: pd.DataFrame) -> Figure:
    """The per-folder figure (``plot_folders`` without the file); ``folders`` needs a CMC@1 column.
    Folder names that are not UTF-8 (a Linux name may hold any bytes) are drawn with U+FFFD."""
    table = folders.sort_values(["mAP", "folder"], ascending=[True, False])
    height = min(80.0, 1.5 + 0.28 * max(1, len(table)))
    fig = Figure(figsize=(8, height), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(table))
    ax.barh(y + 0.2, table["mAP"], height=0.4, label="mAP")
    ax.barh(y - 0.2, table[cmc_column(1)], height=0.4, label="CMC@1")
    ax.set_yticks(y, [display_text(str(folder)) for folder in table["folder"]], fontsize=7)
    ax.set(xlim=(0, 1), xlabel="score")
    fig.legend(loc="outside upper right", ncols=2, title="per query outing folder, sorted by mAP")
    return fig


def _save_figure(fig: Figure, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))


def png_bytes(fig: Figure) -> bytes:
    """The figure rendered as a PNG in memory (so a failing plot fails before any file is written)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format="png")
    return buffer.getvalue()


def write_reports(
    out_dir: Path,
    queries: pd.DataFrame,
    results: QueryResults,
    summary_dict: dict,
    ks: Sequence[int],
    extra: Mapping[str, Callable[[Path], object]] | None = None,
) -> list[Path]:
    """Write the per-query/identity/folder CSVs, the summary JSON and both plots (and ``extra``: file name
    -> writer, e.g. the embeddings) as one set; return their paths.

    Everything is computed and rendered first, then written with ``atomic_write_all``: the set is written
    whole or not at all, for any ``ks`` (the folder plot's CMC@1 is computed even when ``ks`` lacks 1).
    """
    out_dir = Path(out_dir)
    folders = folder_table(queries, ks)
    plotted = folders if 1 in ks else folder_table(queries, sorted({1, *ks}))
    files: dict[Path, Callable[[Path], object]] = {
        out_dir / STAR_QUERY_CSV: text_writer(csv_text(queries)),
        out_dir / STAR_IDENTITY_CSV: text_writer(csv_text(identity_table(queries, ks))),
        out_dir / STAR_FOLDER_CSV: text_writer(csv_text(folders)),
        out_dir / STAR_SUMMARY_JSON: text_writer(json.dumps(summary_dict, indent=2, default=str) + "\n"),
        out_dir / CMC_PNG: bytes_writer(png_bytes(cmc_figure(results, max(CMC_CURVE_MAX_K, *ks)))),
        out_dir / FOLDER_PNG: bytes_writer(png_bytes(folders_figure(plotted))),
    }
    files.update({out_dir / name: write for name, write in (extra or {}).items()})
    out_dir.mkdir(parents=True, exist_ok=True)
    return atomic_write_all(files)
