"""The catalogue's open-set calibration: τ (below it, *new individual*) and the map from score to
P(the top individual is right).

Where it comes from, in order:

1. ``--calibration FILE`` (any ``calibration.json``);
2. ``calibration.json`` beside the checkpoint: fitted by training on its validation side, the honest one;
3. otherwise it is fitted on the catalogue itself by the validation rule: each individual's latest
   outing is a query against all other photos (known answers), and the same photos are answered again
   without their own individual's photos (pseudo-new answers); ``fit_calibration`` fits τ and the
   isotonic map on both. This is honest for a model that never saw these photos (zero-shot); for a model
   trained on them it is optimistic, and ``catalogue info`` says so.

``megastarid catalogue calibrate`` replaces any of them by one fitted on the lab's own decisions
(``decision_history``); a rebuild keeps it while the model is the same, unless ``--calibration FILE``
is given.

With too few photos to fit one (fewer than ``MIN_CALIBRATION_QUERIES`` answers with both right and wrong
ones), the catalogue records why, and ``identify`` refuses with one line saying how to get one (or gives
unverified rankings with ``--uncalibrated``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from megastarid.core.errors import UserError
from megastarid.core.options import flag
from megastarid.data.splits import hash_order
from megastarid.evaluation.embed import TTA, tta_mode
from megastarid.evaluation.openset import (
    MIN_CALIBRATION_QUERIES,
    Calibration,
    answer_queries,
    concat_answers,
    fit_calibration,
)
from megastarid.evaluation.star import EMBEDDED_KEYS
from megastarid.identification.index import CatalogueIndex
from megastarid.identification.store import CatalogueStore
from megastarid.identification.store_index import load_index
from megastarid.identification.store_schema import CALIBRATION, MODEL
from megastarid.models.embedder import ModelFingerprint

log = logging.getLogger(__name__)

#: the ``fitted_on`` keys that say how a calibration's embeddings were made, with their options
EMBEDDED = {key: flag(key) for key in EMBEDDED_KEYS}
#: most query photos a fit on the catalogue uses (whole latest outings, identities in a seeded order)
MAX_CALIBRATION_QUERIES = 4000
#: where a stored calibration came from
SOURCES = {
    "file": "given with --calibration",
    "checkpoint": "calibration.json of the checkpoint's run (fitted on its validation side)",
    "catalogue": "fitted on the catalogue itself (each individual's latest outing against the rest)",
    "decisions": "fitted on the lab's own decisions (catalogue calibrate)",
}
OPTIMISTIC = (
    "fitted on the catalogue's own photos: honest for a model that never saw them (zero-shot), optimistic "
    "for one trained on them"
)


def model_key(fingerprint: Any) -> str:
    """A short name for a model fingerprint (the same model, the same key): which model a proposal or a
    calibration from decisions belongs to."""
    text = json.dumps(fingerprint, sort_keys=True)
    return "none" if fingerprint is None else hashlib.sha256(text.encode()).hexdigest()[:12]


def read_calibration(path: Path) -> Calibration:
    """A ``calibration.json`` file, or one line naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UserError(f"calibration {path} cannot be read ({err.strerror or err})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"calibration {path} is not JSON ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"calibration {path}: not a MegaStarID calibration (expected a JSON object)")
    return Calibration.from_dict(data, str(path))


def calibration_tta(calibration: Calibration | None) -> TTA | None:
    """The test-time augmentation a calibration was fitted under, where it records one."""
    if calibration is None or "tta" not in calibration.fitted_on:
        return None
    try:
        return tta_mode(calibration.fitted_on["tta"])
    except ValueError as err:
        raise UserError(f"calibration: its fitted_on.tta is {err}") from None


def check_embedded_alike(calibration: Calibration, where: Path, fingerprint: ModelFingerprint) -> None:
    """A calibration's τ and probabilities are for scores between embeddings made one way (TTA, image
    size): the catalogue's photos embedded another way score differently, so that is one line, not a
    silently wrong threshold. A calibration that records neither (written before they were recorded) is
    used with a warning."""
    recorded = calibration.fitted_on
    if not any(key in recorded for key in EMBEDDED):
        log.warning(
            "calibration %s does not record the --tta and --image-size it was fitted under: check they are "
            "this catalogue's (--tta %s, --image-size %d)",
            where,
            fingerprint.tta,
            fingerprint.image_size,
        )
        return
    for key, option in EMBEDDED.items():
        mine = getattr(fingerprint, key)
        theirs = calibration_tta(calibration) if key == "tta" else recorded.get(key)
        if theirs is not None and theirs != mine:
            raise UserError(
                f"calibration {where} was fitted on embeddings made with {option} {theirs}, this "
                f"catalogue's are made with {option} {mine}, and its threshold would misjudge them: build "
                f"with {option} {theirs}, or give --calibration FILE fitted with {option} {mine} (megastarid "
                "evaluate writes one)"
            )


def fit_on_catalogue(
    index: CatalogueIndex, table: pd.DataFrame, accept: float | None = None, seed: int = 0
) -> Calibration:
    """Fit τ and P(top-1 right) on the catalogue by the validation rule (module docstring). ``table`` has
    one row per index row (``CatalogueStore.photo_table``)."""
    if not np.array_equal(table["id"].to_numpy(), index.photo_ids):
        raise UserError(f"catalogue {index.catalogue} changed while it was read; run the build again")
    day = table.groupby(["identity", "outing"])["date"].transform("min")
    outings = (
        table.assign(day=day)
        .drop_duplicates(["identity", "outing"])
        .sort_values(["identity", "day", "outing"], na_position="first")
    )
    visits = outings.groupby("identity").size()
    latest = outings.groupby("identity").tail(1).set_index("identity")["outing"]
    query = np.zeros(len(table), dtype=bool)
    used = 0
    individuals = 0
    for identity in hash_order(visits.index[visits >= 2], seed):
        rows = ((table["identity"] == identity) & (table["outing"] == latest[identity])).to_numpy()
        if used and used + int(rows.sum()) > MAX_CALIBRATION_QUERIES:
            continue
        query |= rows
        used += int(rows.sum())
        individuals += 1
    if not query.any():
        raise UserError(
            "too few photos to fit a calibration on the catalogue: no individual has photos from two outings"
        )
    identities = table["identity"].to_numpy(dtype=str)
    q, g = index.embeddings[query], index.embeddings[~query]
    known = answer_queries(q, identities[query], g, identities[~query])
    new = answer_queries(q, identities[query], g, identities[~query], leave_own_out=True)
    fitted_on = {
        "protocol": "catalogue",
        "rule": "each individual's latest outing against the rest (known), and without its own photos (new)",
        "num_individuals": individuals,
    }
    try:
        calibration, _ = fit_calibration(
            concat_answers([known, new]),
            "isotonic",
            accept=0.5 if accept is None else accept,
            fitted_on=fitted_on,
        )
    except UserError:
        right = int(known.top1_right.sum())
        raise UserError(
            f"too few photos to fit a calibration on the catalogue: {used} photo(s) from the latest "
            f"outings of {individuals} individual(s), {right} matched right (need "
            f"{MIN_CALIBRATION_QUERIES // 2} or more, with both right and wrong matches)"
        ) from None
    return calibration


def update_calibration(
    store: CatalogueStore,
    given: Calibration | None,
    source: str,
    path: Path | None,
    changed: bool,
    accept: float | None = None,
) -> dict[str, Any]:
    """Store the calibration a build ends with (see the module docstring) and return the stored entry:
    ``given`` (from ``source`` "file" or "checkpoint", read from ``path``), else the one fitted on the
    catalogue, refitted when the catalogue ``changed`` or ``accept`` moved. One fitted on the lab's
    decisions for this very model is kept unless a file is given (a checkpoint's own is older news). With
    ``accept`` the accept level of any calibration is set to it."""
    current = store.meta(CALIBRATION)
    from_decisions = (
        current is not None
        and current.get("source") == "decisions"
        and current["calibration"]["fitted_on"].get("model")
        == model_key((store.meta(MODEL) or {}).get("fingerprint"))
    )
    if from_decisions and source != "file":
        if accept is None or current["calibration"]["accept"] == accept:
            return current
        entry: dict[str, Any] = {**current, "calibration": {**current["calibration"], "accept": accept}}
    elif given is not None:
        calibration = given if accept is None else replace(given, accept=accept)
        entry = {
            "source": source,
            "path": None if path is None else os.path.abspath(path),  # not relative to where the build ran
            "calibration": calibration.to_dict(),
        }
    elif (
        current is not None
        and current.get("source") == "catalogue"
        and not changed
        and (accept is None or current["calibration"]["accept"] == accept)
    ):
        return current
    else:
        index = load_index(store)
        try:
            calibration = fit_on_catalogue(index, store.photo_table(), accept)
        except UserError as err:
            entry = {"source": None, "path": None, "calibration": None, "reason": str(err)}
        else:
            entry = {
                "source": "catalogue",
                "path": None,
                "calibration": calibration.to_dict(),
                "note": OPTIMISTIC,
            }
    with store.transaction():
        store.set_meta(CALIBRATION, entry)
    return entry


def stored_calibration(store: CatalogueStore) -> Calibration | None:
    """The catalogue's calibration, or None when it has none."""
    entry = store.meta(CALIBRATION)
    if not entry or not entry.get("calibration"):
        return None
    return Calibration.from_dict(entry["calibration"], f"catalogue {store.path}")


def describe(entry: dict[str, Any] | None) -> str:
    """One line on a stored calibration: τ, accept level, method, where it came from."""
    if not entry or not entry.get("calibration"):
        reason = (entry or {}).get("reason", "none was given or fitted")
        return f"none ({reason})"
    calibration = entry["calibration"]
    where = SOURCES.get(entry.get("source") or "", entry.get("source") or "")
    if entry.get("path"):
        where += f": {entry['path']}"
    line = (
        f"tau {calibration['threshold']:.4f}, accept P >= {calibration['accept']:.2f}, "
        f"{calibration['method']}; {where}"
    )
    return line + (f" ({entry['note']})" if entry.get("note") else "")
