"""identify's outputs: ``matches.json`` (nested, self-describing: the lineup page's input), ``matches.csv``
(the same, one row per query and candidate rank) and a short table for the terminal.

``matches.json`` (``format`` "megastarid-matches", ``version`` 1; fields are only ever added):

- ``catalogue``: path, root, individuals, photos, model fingerprint, calibration (τ, accept level,
  method, where it came from) or null;
- ``options``: top_k, encounter_by, the pooling rule; ``verdicts``: what each verdict means; ``counts``;
- ``queries``: one per encounter (a single photo with ``--encounter-by none``), sorted by encounter, each
  with ``id`` (1, 2, ...), ``encounter``, ``verdict``, ``photos`` [{path, sha256}] and ``candidates``
  [{rank, identity, score, probability, photo_scores (one per photo), first_seen, last_seen, num_photos,
  best_photo {path, relative_path, outing, date, score, query_photo}, other_photos [{path, relative_path,
  outing, date}, ...] (latest first)}]; a ``known-photo`` query has no candidates but ``known``
  [{identity, path, relative_path, outing, date, last_seen}] (the catalogue's photos with the same bytes);
- ``unreadable``: [{path, encounter}].

Paths are absolute; dates ISO 8601 (``YYYY-MM-DD``) or null; scores are cosines, probabilities in [0, 1] or
null without a calibration.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import pandas as pd

from megastarid.core.files import csv_text
from megastarid.core.runfiles import MATCHES_CSV, MATCHES_JSON
from megastarid.identification.calibrate import SOURCES
from megastarid.identification.identify import POOLING, VERDICTS, IdentifyResult
from megastarid.identification.index import CatalogueIndex
from megastarid.identification.store import CatalogueStore, now
from megastarid.identification.store_schema import CALIBRATION

FORMAT = "megastarid-matches"
VERSION = 1
#: other photos of each candidate shown beside its best one
OTHER_PHOTOS = 4
CSV_COLUMNS = (
    "encounter",
    "query",
    "num_photos",
    "rank",
    "identity",
    "score",
    "probability",
    "verdict",
    "catalogue_photo",
    "catalogue_photo_date",
    "last_seen",
)


def _number(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 6)


def matches_document(
    result: IdentifyResult, store: CatalogueStore, index: CatalogueIndex, others: int = OTHER_PHOTOS
) -> dict[str, Any]:
    """The ``matches.json`` document (module docstring)."""
    best_ids = [
        int(index.photo_ids[c.best_row]) for encounter in result.encounters for c in encounter.candidates
    ]
    other_ids: dict[tuple[str, int], list[int]] = {}
    for encounter in result.encounters:
        for c in encounter.candidates:
            best = int(index.photo_ids[c.best_row])
            other_ids[(c.identity, best)] = store.recent_photo_ids(c.identity, others, skip=[best])
    known_ids = [i for encounter in result.encounters for i in encounter.known]
    wanted = best_ids + known_ids + [i for ids in other_ids.values() for i in ids]
    details = store.photo_details(wanted)

    def photo(photo_id: int) -> dict[str, Any]:
        d = details[photo_id]
        return {"path": d.path, "relative_path": d.relative_path, "outing": d.outing, "date": d.date}

    queries = []
    for number, encounter in enumerate(result.encounters, start=1):
        candidates = []
        for c in encounter.candidates:
            info = index.individuals[c.identity]
            best = int(index.photo_ids[c.best_row])
            candidates.append(
                {
                    "rank": c.rank,
                    "identity": c.identity,
                    "score": _number(c.score),
                    "probability": _number(c.probability),
                    "photo_scores": [_number(s) for s in c.photo_scores],
                    "first_seen": info.first_seen,
                    "last_seen": info.last_seen,
                    "num_photos": info.num_photos,
                    "best_photo": {
                        **photo(best),
                        "score": _number(c.photo_scores[c.best_query]),
                        "query_photo": encounter.photos[c.best_query],
                    },
                    "other_photos": [photo(i) for i in other_ids[(c.identity, best)]],
                }
            )
        query: dict[str, Any] = {
            "id": number,
            "encounter": encounter.name,
            "verdict": encounter.verdict,
            "photos": [
                {"path": path, "sha256": sha}
                for path, sha in zip(encounter.photos, encounter.hashes, strict=True)
            ],
            "candidates": candidates,
        }
        if encounter.known:
            query["known"] = [
                {
                    "identity": details[i].identity,
                    **photo(i),
                    "last_seen": index.individuals[details[i].identity].last_seen,
                }
                for i in encounter.known
            ]
        queries.append(query)
    entry = store.meta(CALIBRATION) or {}
    calibration = result.calibration
    return {
        "format": FORMAT,
        "version": VERSION,
        "created": now(),
        "catalogue": {
            "path": str(index.catalogue),
            "root": str(index.root),
            "individuals": len(index.names),
            "photos": index.num_photos,
            "model": index.model.get("fingerprint"),
            "calibration": None
            if calibration is None
            else {
                "threshold": calibration.threshold,
                "accept": calibration.accept,
                "method": calibration.method,
                "source": SOURCES.get(entry.get("source") or "", entry.get("source")),
            },
        },
        "options": {"top_k": result.top_k, "encounter_by": result.encounter_by, "pooling": POOLING},
        "verdicts": VERDICTS,
        "counts": result.counts(),
        "queries": queries,
        "unreadable": [{"path": path, "encounter": encounter} for path, encounter in result.unreadable],
    }


def matches_table(document: dict[str, Any]) -> pd.DataFrame:
    """``matches.csv`` from the document: one row per query and candidate rank (one row for a known or
    unreadable photo)."""
    rows: list[dict[str, Any]] = []
    for query in document["queries"]:
        base = {
            "encounter": query["encounter"],
            "num_photos": len(query["photos"]),
            "verdict": query["verdict"],
        }
        for known in query.get("known", []):
            rows.append(
                {
                    **base,
                    "query": query["photos"][0]["path"],
                    "rank": 1,
                    "identity": known["identity"],
                    "catalogue_photo": known["path"],
                    "catalogue_photo_date": known["date"],
                    "last_seen": known["last_seen"],
                }
            )
        for c in query["candidates"]:
            rows.append(
                {
                    **base,
                    "query": c["best_photo"]["query_photo"],
                    "rank": c["rank"],
                    "identity": c["identity"],
                    "score": c["score"],
                    "probability": c["probability"],
                    "catalogue_photo": c["best_photo"]["path"],
                    "catalogue_photo_date": c["best_photo"]["date"],
                    "last_seen": c["last_seen"],
                }
            )
    for lost in document["unreadable"]:
        rows.append(
            {"encounter": lost["encounter"], "query": lost["path"], "num_photos": 1, "verdict": "unreadable"}
        )
    table = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    table["rank"] = table["rank"].astype("Int64")
    return table


def matches_texts(document: dict[str, Any]) -> dict[str, str]:
    """The text of ``matches.json`` and ``matches.csv``, by file name (``outputs`` writes them)."""
    return {
        MATCHES_JSON: json.dumps(document, indent=2) + "\n",
        MATCHES_CSV: csv_text(matches_table(document)),
    }


def _short(path: str, width: int) -> str:
    try:
        rel = os.path.relpath(path)
        path = rel if not rel.startswith("..") else path
    except ValueError:
        pass
    return path if len(path) <= width else "..." + path[-(width - 3) :]


def terminal_table(document: dict[str, Any], limit: int = 40) -> str:
    """A few lines for the terminal: one per query (verdict, top individual, score, probability)."""
    lines = [f"{'encounter':<44} {'photos':>6}  {'verdict':<11} {'top individual':<28} {'score':>6} {'P':>5}"]
    queries: Sequence[dict[str, Any]] = document["queries"]
    for query in queries[:limit]:
        if query["verdict"] == "known-photo":
            top, score, probability = query["known"][0]["identity"], "", ""
        elif query["candidates"]:
            first = query["candidates"][0]
            top, score = first["identity"], f"{first['score']:.3f}"
            probability = "" if first["probability"] is None else f"{first['probability']:.2f}"
        else:
            top, score, probability = "", "", ""
        lines.append(
            f"{_short(query['encounter'], 44):<44} {len(query['photos']):>6}  {query['verdict']:<11} "
            f"{_short(top, 28):<28} {score:>6} {probability:>5}"
        )
    if len(queries) > limit:
        lines.append(f"... and {len(queries) - limit} more (see {MATCHES_CSV})")
    counts = ", ".join(f"{count} {name}" for name, count in document["counts"].items())
    lines.append(f"{len(queries)} queries: {counts or 'none'}")
    return "\n".join(lines)
