"""Evaluation engine speed: ours vs a naive per-query numpy sort in the same run, plus WildlifeReID-10k scale.

1. Star scale (default 2,000 queries x 6,000 gallery, 512-d): ``rank_queries`` against plain
   numpy implementations of the same definition: per query a full ``np.lexsort`` by score with
   wrong matches first among ties, rank of the first hit, AP. The naive one computes each query's
   score vector in the loop; the second computes all scores first with one BLAS matrix product.
   All must give identical ranks and APs; the script fails otherwise.
2. WildlifeReID-10k scale (30,561 x 109,927, 512-d, 10,772 identities): ``rank_queries`` alone,
   run in a child process so its peak resident memory (``ru_maxrss``) is measured on its own.
   ``--skip-wildlife`` leaves it out (it takes minutes on 2 CPU cores).

Timings are given per wall-clock second and per CPU second of the process (steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from megastarid.evaluation.metrics import auto_chunk_size, cmc, mean_ap, rank_queries

WILDLIFE = {"queries": 30_561, "gallery": 109_927, "identities": 10_772}


def make_data(
    queries: int, gallery: int, identities: int, dim: int, seed: int, flip: float = 0.28
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Clustered unit embeddings whose cosines every implementation computes exactly.

    Each identity is a pattern of ``4**j`` entries of +-2**-j (unit norm, the largest such support
    that fits in half of ``dim``); each image flips the sign of a random ``flip`` fraction of its
    identity's entries. Dot products are then multiples of 4**-j, exact in float32 in any summation
    order, so the compared implementations see identical scores, with many exact ties.
    ``flip`` 0.28 gives an mAP near 0.8 at star scale, like a useful model. Every identity but
    the last 2 % has a gallery image; those 2 % appear only as queries, which are then skipped.
    """
    rng = np.random.default_rng(seed)
    power = int(np.log(dim / 2) / np.log(4))
    support, value = 4**power, np.float32(2.0**-power)
    centres = np.zeros((identities, dim), dtype=np.float32)
    columns = np.argsort(rng.random((identities, dim)), axis=1)[:, :support]
    signs = rng.choice(np.array([-value, value], dtype=np.float32), size=(identities, support))
    np.put_along_axis(centres, columns, signs, axis=1)
    in_gallery = max(1, int(identities * 0.98))
    gallery_ids = np.concatenate([np.arange(in_gallery), rng.integers(0, in_gallery, gallery - in_gallery)])
    query_ids = rng.integers(0, identities, queries)

    def images(ids: np.ndarray) -> np.ndarray:
        out = centres[ids]
        out[rng.random(out.shape, dtype=np.float32) < flip] *= -1
        return out

    return images(query_ids), query_ids, images(gallery_ids), gallery_ids


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _rank_one(scores: np.ndarray, matches: np.ndarray) -> tuple[int, float]:
    """Full sort of one query's gallery scores, wrong matches first among ties; first rank and AP."""
    hits = np.flatnonzero(matches[np.lexsort((matches, -scores))]) + 1
    return int(hits[0]), float(np.mean(np.arange(1, hits.size + 1) / hits))


def naive_per_query(
    query: np.ndarray, query_ids: np.ndarray, gallery: np.ndarray, gallery_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The textbook loop: per query, its score vector, a full sort, rank and AP."""
    query, gallery = _normalise(query), _normalise(gallery)
    ranks = np.zeros(len(query), dtype=np.int64)
    aps = np.full(len(query), np.nan)
    for i in range(len(query)):
        matches = gallery_ids == query_ids[i]
        if matches.any():
            ranks[i], aps[i] = _rank_one(gallery @ query[i], matches)
    return ranks, aps


def naive_matrix(
    query: np.ndarray, query_ids: np.ndarray, gallery: np.ndarray, gallery_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The same loop after one BLAS matrix product for all scores (torchreid-style)."""
    scores = _normalise(query) @ _normalise(gallery).T
    ranks = np.zeros(len(query), dtype=np.int64)
    aps = np.full(len(query), np.nan)
    for i in range(len(query)):
        matches = gallery_ids == query_ids[i]
        if matches.any():
            ranks[i], aps[i] = _rank_one(scores[i], matches)
    return ranks, aps


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[Any, float, float]:
    """Result, best wall seconds and best CPU seconds over ``repeat`` runs."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return out, best_wall, best_cpu


def star_case(args: argparse.Namespace) -> None:
    q, qi, g, gi = make_data(args.queries, args.gallery, args.identities, args.dim, args.seed, args.flip)
    rank_queries(q[:8], qi[:8], g, gi)  # warm-up: first-call allocations, thread pool
    ours, ours_wall, ours_cpu = timed(lambda: rank_queries(q, qi, g, gi), args.repeat)
    rows = [(f"ours: rank_queries (torch, chunked, no sort), best of {args.repeat}", ours_wall, ours_cpu)]
    baselines = [
        ("naive numpy per query: score vector + full lexsort, 1 run", naive_per_query, 1),
        (f"numpy: BLAS score matrix + per-query lexsort, best of {args.repeat}", naive_matrix, args.repeat),
    ]
    for name, fn, repeat in baselines:
        (ranks, aps), wall, cpu = timed(lambda fn=fn: fn(q, qi, g, gi), repeat)
        if not np.array_equal(ours.first_rank, ranks):
            raise SystemExit(f"{name}: ranks differ for {int((ours.first_rank != ranks).sum())} queries")
        if not np.allclose(ours.average_precision, aps, rtol=1e-9, atol=0, equal_nan=True):
            raise SystemExit(f"{name}: average precisions differ")
        rows.append((name, wall, cpu))
    print(
        f"star scale: {args.queries:,} queries x {args.gallery:,} gallery, {args.dim}-d, {args.identities} "
        f"identities, {ours.num_skipped} skipped queries, {torch.get_num_threads()} torch threads"
    )
    print(
        f"  results equal for every implementation: ranks identical, APs within 1e-9 "
        f"(mAP {mean_ap(ours):.4f}, CMC@1 {cmc(ours, [1])[1]:.4f})"
    )
    print("  | implementation | wall s | CPU s | ours faster (wall) | ours faster (CPU) |")
    print("  |---|---|---|---|---|")
    for name, wall, cpu in rows:
        print(f"  | {name} | {wall:.3f} | {cpu:.3f} | {wall / ours_wall:.1f}x | {cpu / ours_cpu:.1f}x |")


def wildlife_child(args: argparse.Namespace) -> None:
    """Child-process body: build the data, rank, print one JSON line for the parent."""
    sizes = WILDLIFE
    start = time.perf_counter()
    q, qi, g, gi = make_data(
        sizes["queries"], sizes["gallery"], sizes["identities"], args.dim, args.seed, args.flip
    )
    data_s = time.perf_counter() - start
    results, wall, cpu = timed(lambda: rank_queries(q, qi, g, gi))
    stats = {
        "data_s": data_s,
        "rank_wall_s": wall,
        "rank_cpu_s": cpu,
        "mAP": mean_ap(results),
        "scored": results.num_scored,
        "skipped": results.num_skipped,
        "chunk": auto_chunk_size(len(g)),
        "inputs_mib": (q.nbytes + g.nbytes) / 2**20,
    }
    print(json.dumps(stats))


def wildlife_case(args: argparse.Namespace) -> None:
    cmd = [sys.executable, __file__, "--wildlife-child", "--dim", str(args.dim), "--seed", str(args.seed)]
    cmd += ["--flip", str(args.flip)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"wildlife-scale child failed:\n{proc.stderr}")
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
    print(
        f"WildlifeReID-10k scale: {WILDLIFE['queries']:,} queries x {WILDLIFE['gallery']:,} gallery, "
        f"{args.dim}-d, {WILDLIFE['identities']:,} identities ({stats['skipped']} skipped queries)"
    )
    print(
        f"  ranking: {stats['rank_wall_s']:.1f} s wall, {stats['rank_cpu_s']:.1f} s CPU, "
        f"mAP {stats['mAP']:.4f} ({stats['chunk']} queries per chunk, {torch.get_num_threads()} threads)"
    )
    print(
        f"  peak RSS of the whole child process: {peak_mib:,.0f} MiB "
        f"(of which input embeddings {stats['inputs_mib']:,.0f} MiB); limit 4096 MiB: "
        f"{'met' if peak_mib < 4096 else 'NOT MET'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--gallery", type=int, default=6_000)
    parser.add_argument("--identities", type=int, default=500)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs (not for the slow naive loop)")
    parser.add_argument("--flip", type=float, default=0.28, help="sign-flip rate; lower = better model")
    parser.add_argument("--skip-wildlife", action="store_true", help="leave out the 30k x 110k case")
    parser.add_argument("--wildlife-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.wildlife_child:
        wildlife_child(args)
        return
    star_case(args)
    if not args.skip_wildlife:
        wildlife_case(args)


if __name__ == "__main__":
    main()
