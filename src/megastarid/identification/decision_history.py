"""The model against the lab's own decisions (``megastarid catalogue evaluate`` and ``calibrate``).

Every decision applied with identify's ``matches.json`` (``catalogue apply --matches``) holds what identify
proposed for its query (``decisions_proposals``). One query (of one ``matches.json``) is one answer: the last
decision logged for it (the rows of its photos share one; a later export repeating it counts once; a
superseded decision never counts), ``unsure`` ones left out. Over those answers:

- **CMC@k**: of the queries confirmed as a catalogue individual, the share whose individual is among the top
  k proposals;
- **false-match rate**: of the queries identify called ``match``, the share *not* confirmed as its top
  individual;
- **new precision / recall**: of the queries called ``new``, the share the lab made a new individual; of
  those the lab made new, the share identify called ``new``;
- **ECE** of the top individual's P against whether it was the confirmed one (and the reliability plot).

Each comes with a 95 % bootstrap interval over individuals (the confirmed or newly made one: an animal
seen often weighs once per resample, not once per photo; ``BOOTSTRAP`` resamples, seeded). The local
bootstrap is small and stands alone until ``evaluation`` has a shared one.

``calibrate`` refits τ and P from the answers of the catalogue's current model once there are
``MIN_CALIBRATION_QUERIES`` of them with both known and new ones and both right and wrong top individuals
(``evaluation.openset.fit_calibration``), and stores it as the catalogue's calibration (source
``decisions``), which ``identify`` then uses; a rebuild keeps it while the model is the same.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from megastarid.core.errors import UserError
from megastarid.core.files import write_csv, write_json
from megastarid.evaluation.openset import (
    MIN_CALIBRATION_QUERIES,
    OpenSetAnswers,
    expected_calibration_error,
    fit_calibration,
)
from megastarid.evaluation.openset_report import plot_reliability
from megastarid.identification.calibrate import EMBEDDED, model_key
from megastarid.identification.decisions_file import instant
from megastarid.identification.store import CatalogueStore
from megastarid.identification.store_schema import CALIBRATION, MODEL

#: bootstrap resamples (over individuals) behind each interval
BOOTSTRAP = 1000
#: the ranks CMC is reported at
CMC_RANKS = (1, 5)
FIGURES = ("cmc@1", "cmc@5", "false_match_rate", "new_precision", "new_recall", "ece")
EVALUATION_JSON = "decisions_evaluation.json"
EVALUATION_CSV = "decisions_evaluation.csv"
RELIABILITY_PNG = "decisions_reliability.png"


@dataclass(frozen=True)
class Answer:
    """One query the lab decided, with identify's proposal for it."""

    individual: str  # the individual confirmed, or made new
    decision: str  # confirm | new
    verdict: str
    model: str  # model_key of the proposing model
    candidates: tuple[str, ...]
    scores: tuple[float, ...]
    probability: float | None  # P of the top individual
    decided: str

    @property
    def top1_right(self) -> bool:
        return self.decision == "confirm" and self.candidates[:1] == (self.individual,)

    def rank(self) -> int | None:
        """Rank (1-based) of the confirmed individual among the proposals, None when absent or new."""
        if self.decision != "confirm" or self.individual not in self.candidates:
            return None
        return self.candidates.index(self.individual) + 1


def decided_answers(
    store: CatalogueStore, since: str | None = None, model: str | None = None
) -> list[Answer]:
    """The answers of every decided query with a proposal (module docstring), decided on or after ``since``
    (ISO date or time) and, with ``model``, proposed by that model (a ``model_key``)."""
    start = None if since is None else instant(since)
    rows = store.con.execute(
        "SELECT decision, identity, decided, applied, proposal FROM decisions "
        "WHERE proposal IS NOT NULL AND effect != 'superseded' ORDER BY id"
    ).fetchall()
    last: dict[tuple[str, int], tuple[Any, ...]] = {}
    for decision, identity, decided, applied, text in rows:
        proposal = json.loads(text)
        last[(proposal["matches"], proposal["query_id"])] = (decision, identity, decided or applied, proposal)
    answers = []
    for decision, identity, when, proposal in last.values():
        if decision == "unsure" or (start is not None and instant(when) < start):
            continue
        answer = Answer(
            identity,
            decision,
            proposal["verdict"],
            model_key(proposal.get("model")),
            tuple(c["identity"] for c in proposal["candidates"]),
            tuple(-math.inf if c["score"] is None else c["score"] for c in proposal["candidates"]),
            proposal["candidates"][0]["probability"] if proposal["candidates"] else None,
            when,
        )
        if model is None or answer.model == model:
            answers.append(answer)
    return answers


def _share(hits: Sequence[bool]) -> float:
    return float(np.mean(hits)) if len(hits) else math.nan


def figures(answers: Sequence[Answer]) -> dict[str, tuple[float, int]]:
    """Each figure of the module docstring with the number of queries behind it."""
    confirmed = [a for a in answers if a.decision == "confirm"]
    matched = [a for a in answers if a.verdict == "match"]
    called_new = [a for a in answers if a.verdict == "new"]
    made_new = [a for a in answers if a.decision == "new"]
    with_p = [a for a in answers if a.probability is not None]
    out: dict[str, tuple[float, int]] = {}
    for k in CMC_RANKS:
        ranks = [a.rank() for a in confirmed]
        out[f"cmc@{k}"] = (_share([r is not None and r <= k for r in ranks]), len(confirmed))
    out["false_match_rate"] = (_share([not a.top1_right for a in matched]), len(matched))
    out["new_precision"] = (_share([a.decision == "new" for a in called_new]), len(called_new))
    out["new_recall"] = (_share([a.verdict == "new" for a in made_new]), len(made_new))
    probability = np.array([a.probability for a in with_p], dtype=np.float64)
    right = np.array([a.top1_right for a in with_p], dtype=bool)
    out["ece"] = (expected_calibration_error(probability, right), len(with_p))
    return out


def bootstrap_intervals(
    answers: Sequence[Answer],
    statistic: Callable[[Sequence[Answer]], dict[str, float]],
    resamples: int = BOOTSTRAP,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """95 % percentile intervals of each of ``statistic``'s figures, resampling individuals with
    replacement (each drawn individual brings all its answers)."""
    groups: dict[str, list[Answer]] = {}
    for answer in answers:
        groups.setdefault(answer.individual, []).append(answer)
    names = sorted(groups)
    if not names:
        return {}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        picked = rng.integers(0, len(names), len(names))
        sample = [a for i in picked for a in groups[names[i]]]
        for name, value in statistic(sample).items():
            draws.setdefault(name, []).append(value)
    intervals = {}
    for name, values in draws.items():
        finite = np.array([v for v in values if not math.isnan(v)])
        low, high = (math.nan, math.nan) if not finite.size else np.percentile(finite, [2.5, 97.5])
        intervals[name] = (float(low), float(high))
    return intervals


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def report(answers: Sequence[Answer]) -> dict[str, dict[str, Any]]:
    """Each figure with its count and 95 % interval (None where there is nothing to count: strict JSON)."""
    values = figures(answers)
    intervals = bootstrap_intervals(answers, lambda sample: {k: v for k, (v, _) in figures(sample).items()})
    table = {}
    for name, (value, count) in values.items():
        low, high = intervals.get(name, (math.nan, math.nan))
        table[name] = {"value": _number(value), "n": count, "low": _number(low), "high": _number(high)}
    return table


def evaluate_decisions(answers: Sequence[Answer], store: CatalogueStore, since: str | None) -> dict[str, Any]:
    """The ``catalogue evaluate`` document: the figures over ``answers`` (``decided_answers``) and per
    proposing model."""
    if not answers:
        raise UserError(
            f"catalogue {store.path} holds no decided queries with identify's proposals"
            + (f" since {since}" if since else "")
            + " (apply the lineup's decisions.csv with --matches matches.json)"
        )
    models = sorted({a.model for a in answers})
    return {
        "catalogue": str(store.path),
        "since": since,
        "queries": len(answers),
        "confirmed": sum(a.decision == "confirm" for a in answers),
        "new": sum(a.decision == "new" for a in answers),
        "individuals": len({a.individual for a in answers}),
        "bootstrap": {"resamples": BOOTSTRAP, "over": "individuals", "level": 0.95},
        "all": report(answers),
        "models": {key: report([a for a in answers if a.model == key]) for key in models},
    }


def write_evaluation(document: dict[str, Any], answers: Sequence[Answer], out: Path) -> list[Path]:
    """The document as JSON, its figures as CSV (one row per model and figure), and the reliability plot of
    ``answers`` (those the document was made of)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [
        {"model": model, "figure": name, **entry}
        for model, table in [("all", document["all"]), *document["models"].items()]
        for name, entry in table.items()
    ]
    frame = pd.DataFrame(rows, columns=["model", "figure", "value", "low", "high", "n"])
    paths = [
        write_json(out / EVALUATION_JSON, document),
        write_csv(out / EVALUATION_CSV, frame),
    ]
    probability, right = reliability_points(answers)
    if probability.size:
        paths.append(plot_reliability(probability, right, out / RELIABILITY_PNG))
    return paths


def reliability_points(answers: Sequence[Answer]) -> tuple[np.ndarray, np.ndarray]:
    """(top P, top individual confirmed) of the answers with a P."""
    with_p = [a for a in answers if a.probability is not None]
    return (
        np.array([a.probability for a in with_p], dtype=np.float64),
        np.array([a.top1_right for a in with_p], dtype=bool),
    )


def summary_lines(document: dict[str, Any]) -> list[str]:
    """The terminal table: each figure with its interval and count, over all answers."""
    lines = [
        f"{document['queries']} decided queries ({document['confirmed']} confirmed, {document['new']} new) "
        f"of {document['individuals']} individuals"
        + (f" since {document['since']}" if document["since"] else "")
        + f"; model(s) {', '.join(document['models'])}"
    ]
    for name, entry in document["all"].items():
        value = "n/a" if entry["value"] is None else f"{entry['value']:.3f}"
        interval = "" if entry["low"] is None else f" [{entry['low']:.3f}, {entry['high']:.3f}]"
        lines.append(f"  {name:<17} {value}{interval}  (n={entry['n']})")
    return lines


def calibrate_from_decisions(store: CatalogueStore, accept: float | None = None) -> dict[str, Any]:
    """Refit τ and P on the current model's decided answers and store them as the catalogue's calibration
    (module docstring); returns the stored entry. Too few answers is one line saying how many are needed."""
    record = store.meta(MODEL) or {}
    fingerprint = record.get("fingerprint")
    answers = decided_answers(store, model=model_key(fingerprint))
    current = store.meta(CALIBRATION) or {}
    level = accept if accept is not None else (current.get("calibration") or {}).get("accept", 0.5)
    known = [a for a in answers if a.decision == "confirm"]
    fitted_on: dict[str, Any] = {
        "protocol": "decisions",
        "model": model_key(fingerprint),
        "num_decisions": len(answers),
        **{key: fingerprint[key] for key in EMBEDDED if fingerprint and key in fingerprint},
    }
    open_set = OpenSetAnswers(
        identity=np.array([a.individual for a in answers], dtype=str),
        is_new=np.array([a.decision == "new" for a in answers], dtype=bool),
        top1=np.array([a.candidates[0] if a.candidates else "" for a in answers], dtype=str),
        top1_score=np.array([a.scores[0] if a.scores else -math.inf for a in answers], dtype=np.float64),
    )
    try:
        calibration, _ = fit_calibration(open_set, "isotonic", accept=level, fitted_on=fitted_on)
    except UserError:
        right = sum(a.top1_right for a in answers)
        raise UserError(
            f"too few decisions to calibrate on: {len(answers)} decided queries of this model "
            f"({len(known)} confirmed, {len(answers) - len(known)} new, {right} confirmed as the top "
            f"individual); need {MIN_CALIBRATION_QUERIES} or more, with both confirmed and new ones and "
            "both right and wrong top individuals"
        ) from None
    note = f"{len(answers)} decided queries of model {model_key(fingerprint)}, {len(known)} of them confirmed"
    entry = {"source": "decisions", "path": None, "calibration": calibration.to_dict(), "note": note}
    with store.transaction():
        store.set_meta(CALIBRATION, entry)
    return entry
