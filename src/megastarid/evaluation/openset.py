"""Open-set decisions and their metrics: "is this a known individual, and which, or a new one?"

A query's answer is its top-1 individual (highest cosine to any of that individual's gallery photos) and
that score. Below a threshold τ the answer is *new individual*. The field scores this with (AnimalCLEF
2025 ranks by the geometric mean of the first two):

- **BAKS**, balanced accuracy on known samples: per known identity, the fraction of its queries answered
  with that identity (not *new*, not another individual), averaged over the known identities;
- **BAUS**, balanced accuracy on unknown samples: per new identity, the fraction of its queries answered
  *new*, averaged over the new identities;
- **AUROC** of new-vs-known from the top-1 score (a lower score should mean *new*), threshold-free.

τ and the map from top-1 score to P(the top-1 individual is right) are fitted on validation only
(DESIGN §3: the test side never chooses anything) and saved as ``calibration.json``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from megastarid.core.errors import UserError
from megastarid.evaluation.individuals import rank_individuals

CALIBRATION_METHODS = ("isotonic", "logistic")
#: fewest validation queries (known and new together) a calibration is fitted on
MIN_CALIBRATION_QUERIES = 20
#: most thresholds a sweep evaluates (quantiles of the scores beyond that)
MAX_SWEEP = 2000
#: a calibration file of this version or older can be read
CALIBRATION_VERSION = 1


@dataclass(frozen=True)
class OpenSetAnswers:
    """Per query: its true identity, whether that identity is new (absent from the gallery), and the top-1
    individual with its score."""

    identity: np.ndarray  # str
    is_new: np.ndarray  # bool
    top1: np.ndarray  # str ("" when the gallery is empty)
    top1_score: np.ndarray  # float

    @property
    def top1_right(self) -> np.ndarray:
        """The top-1 individual is the query's own (never for a new individual)."""
        return (self.top1 == self.identity) & ~self.is_new

    @property
    def num_known(self) -> int:
        return int((~self.is_new).sum())

    @property
    def num_new(self) -> int:
        return int(self.is_new.sum())


def answer_queries(
    query: np.ndarray,
    query_identities: np.ndarray | Sequence[str],
    gallery: np.ndarray,
    gallery_identities: np.ndarray | Sequence[str],
    leave_own_out: bool = False,
) -> OpenSetAnswers:
    """Top-1 answers of every query; ``leave_own_out`` scores each query without its own identity's
    photos, which turns every query into a (pseudo-)new one."""
    identities = np.asarray(query_identities, dtype=str)
    ranking = rank_individuals(
        query, gallery, gallery_identities, k=1, exclude=identities if leave_own_out else None
    )
    known = set(np.asarray(gallery_identities, dtype=str))
    is_new = np.ones(len(identities), bool) if leave_own_out else ~np.isin(identities, list(known))
    return OpenSetAnswers(identities, is_new, np.asarray(ranking.top_names(), dtype=str), ranking.score[:, 0])


def concat_answers(parts: Sequence[OpenSetAnswers]) -> OpenSetAnswers:
    return OpenSetAnswers(
        *(np.concatenate([getattr(p, name) for p in parts]) for name in OpenSetAnswers.__dataclass_fields__)
    )


def _balanced(hit: np.ndarray, identity: np.ndarray) -> float:
    """Mean over identities of the per-identity mean of ``hit``; NaN without samples."""
    if hit.size == 0:
        return math.nan
    return float(pd.Series(hit).groupby(identity).mean().mean())


def baks_baus(answers: OpenSetAnswers, threshold: float) -> tuple[float, float]:
    """(BAKS, BAUS) at threshold τ (scores below τ are answered *new*); NaN where a side has no query."""
    new = answers.top1_score < threshold
    known = ~answers.is_new
    baks = _balanced((answers.top1_right & ~new)[known], answers.identity[known])
    baus = _balanced(new[answers.is_new], answers.identity[answers.is_new])
    return baks, baus


def geometric_mean(baks: float, baus: float) -> float:
    return math.sqrt(baks * baus) if not (math.isnan(baks) or math.isnan(baus)) else math.nan


def threshold_sweep(answers: OpenSetAnswers) -> pd.DataFrame:
    """BAKS, BAUS, their geometric mean and the false-new rate (known queries answered *new*) for every
    threshold that changes a decision (each distinct score, and one above them all)."""
    scores = answers.top1_score[np.isfinite(answers.top1_score)]
    candidates = np.unique(scores)
    if candidates.size > MAX_SWEEP:
        candidates = np.unique(np.quantile(scores, np.linspace(0, 1, MAX_SWEEP)))
    top = float(candidates[-1]) if candidates.size else 0.0
    taus = np.append(candidates, np.nextafter(np.float32(top), np.float32(np.inf)))
    known = ~answers.is_new
    rows = []
    for tau in taus:
        baks, baus = baks_baus(answers, float(tau))
        new = answers.top1_score < tau
        rows.append(
            {
                "threshold": float(tau),
                "BAKS": baks,
                "BAUS": baus,
                "geometric_mean": geometric_mean(baks, baus),
                "false_new_rate": float(new[known].mean()) if known.any() else math.nan,
            }
        )
    return pd.DataFrame(rows)


def choose_threshold(sweep: pd.DataFrame, max_false_new: float | None = None) -> float:
    """τ maximising the geometric mean of BAKS and BAUS (the middle one of a tied plateau), or, with
    ``max_false_new``, the highest τ whose false-new rate stays at or under it."""
    if max_false_new is not None:
        allowed = sweep[sweep["false_new_rate"] <= max_false_new]
        return float(allowed["threshold"].max())
    best = sweep["geometric_mean"].max()
    tied = sweep.loc[sweep["geometric_mean"] >= best - 1e-12, "threshold"].to_numpy()
    return float(tied[len(tied) // 2])


def expected_calibration_error(probability: np.ndarray, right: np.ndarray, bins: int = 10) -> float:
    """ECE: the gap between mean confidence and accuracy, averaged over equal-width bins of P by size."""
    if probability.size == 0:
        return math.nan
    which = np.minimum((probability * bins).astype(int), bins - 1)
    gaps = [
        abs(probability[which == b].mean() - right[which == b].mean()) * (which == b).sum()
        for b in range(bins)
        if (which == b).any()
    ]
    return float(sum(gaps) / probability.size)


def auroc_new_vs_known(answers: OpenSetAnswers) -> float:
    """AUROC of telling new from known queries by the top-1 score (lower = new); NaN without both kinds."""
    if answers.num_new == 0 or answers.num_known == 0:
        return math.nan
    finite = np.nan_to_num(answers.top1_score, neginf=-1e9)
    return float(roc_auc_score(answers.is_new, -finite))


@dataclass(frozen=True)
class Calibration:
    """τ and the score -> P(top-1 right) map, fitted on validation; plain numbers, so JSON holds it."""

    method: str
    threshold: float
    accept: float  # P(top-1 right) at or above which an answer is a confident match
    knots_x: list[float] = field(default_factory=list)  # isotonic: the fitted step function
    knots_y: list[float] = field(default_factory=list)
    coef: float = 0.0  # logistic: P = sigmoid(coef * score + intercept)
    intercept: float = 0.0
    fitted_on: dict[str, Any] = field(default_factory=dict)  # what it was fitted on (protocol, counts)
    version: int = CALIBRATION_VERSION

    def probability(self, scores: np.ndarray) -> np.ndarray:
        """P(the top-1 individual is right) for top-1 ``scores`` (-inf, an empty gallery, gives 0)."""
        s = np.nan_to_num(np.asarray(scores, dtype=np.float64), neginf=-1e9, posinf=1e9)
        if self.method == "isotonic":
            return np.interp(s, self.knots_x, self.knots_y)
        return 1.0 / (1.0 + np.exp(-(self.coef * s + self.intercept)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> Calibration:
        """Read a saved calibration, with one line naming ``where`` when it is not one of ours."""
        try:
            calibration = cls(**data)
            if calibration.version > CALIBRATION_VERSION or calibration.method not in CALIBRATION_METHODS:
                raise ValueError(f"method {calibration.method!r}, version {calibration.version}")
            if calibration.method == "isotonic" and len(calibration.knots_x) != len(calibration.knots_y):
                raise ValueError("knots_x and knots_y differ in length")
            float(calibration.threshold), float(calibration.accept)
        except (TypeError, ValueError) as err:
            raise UserError(f"{where}: not a MegaStarID calibration ({err})") from None
        return calibration


def fit_calibration(
    answers: OpenSetAnswers,
    method: str = "isotonic",
    max_false_new: float | None = None,
    accept: float = 0.5,
    fitted_on: Mapping[str, Any] | None = None,
) -> tuple[Calibration, pd.DataFrame]:
    """Fit τ and P(top-1 right) on validation answers (known and pseudo-new queries); returns the
    calibration and its τ sweep. Too few queries for an honest fit is a one-line error, never a default."""
    if method not in CALIBRATION_METHODS:
        raise UserError(f"--calibration must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    right = answers.top1_right
    total = len(right)
    if (
        total < MIN_CALIBRATION_QUERIES
        or answers.num_new == 0
        or answers.num_known == 0
        or right.all()
        or not right.any()
    ):
        raise UserError(
            f"too few validation queries to fit the open-set calibration: {answers.num_known} known and "
            f"{answers.num_new} new, {int(right.sum())} answered right (need {MIN_CALIBRATION_QUERIES} or "
            "more with both known and new ones, and both right and wrong answers); raise --val-fraction or "
            "use a larger data set"
        )
    sweep = threshold_sweep(answers)
    threshold = choose_threshold(sweep, max_false_new)
    scores = np.nan_to_num(answers.top1_score.astype(np.float64), neginf=-1.0)
    info = {**(fitted_on or {}), "num_known": answers.num_known, "num_new": answers.num_new}
    if max_false_new is not None:
        info["max_false_new"] = max_false_new
    if method == "isotonic":
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, right.astype(float))
        calibration = Calibration(
            method,
            threshold,
            accept,
            knots_x=[float(x) for x in iso.X_thresholds_],
            knots_y=[float(y) for y in iso.y_thresholds_],
            fitted_on=info,
        )
    else:
        logistic = LogisticRegression().fit(scores.reshape(-1, 1), right.astype(int))
        calibration = Calibration(
            method,
            threshold,
            accept,
            coef=float(logistic.coef_[0, 0]),
            intercept=float(logistic.intercept_[0]),
            fitted_on=info,
        )
    return calibration, sweep


def openset_summary(answers: OpenSetAnswers, calibration: Calibration, sweep: pd.DataFrame) -> dict[str, Any]:
    """The test side's open-set figures at the validation τ, and at the best τ in hindsight (``sweep`` is
    the test side's own sweep: it shows how well the validation τ transfers, it chooses nothing)."""
    baks, baus = baks_baus(answers, calibration.threshold)
    known = ~answers.is_new
    # pandas-stubs type idxmax's label as any Hashable, which .loc's overloads do not take
    best = sweep.loc[sweep["geometric_mean"].idxmax()] if sweep["geometric_mean"].notna().any() else None  # type: ignore[call-overload]
    hindsight_tau = float(best["threshold"]) if best is not None else math.nan
    probability = calibration.probability(answers.top1_score)
    return {
        "threshold": calibration.threshold,
        "BAKS": baks,
        "BAUS": baus,
        "geometric_mean": geometric_mean(baks, baus),
        "AUROC": auroc_new_vs_known(answers),
        "top1_accuracy_known": float(answers.top1_right[known].mean()) if known.any() else math.nan,
        "ECE": expected_calibration_error(probability, answers.top1_right),
        "num_queries": len(answers.identity),
        "num_known_queries": answers.num_known,
        "num_new_queries": answers.num_new,
        "num_known_identities": int(pd.unique(answers.identity[known]).size),
        "num_new_identities": int(pd.unique(answers.identity[answers.is_new]).size),
        "hindsight_threshold": hindsight_tau,
        "hindsight_BAKS": float(best["BAKS"]) if best is not None else math.nan,
        "hindsight_BAUS": float(best["BAUS"]) if best is not None else math.nan,
        "hindsight_geometric_mean": float(best["geometric_mean"]) if best is not None else math.nan,
        "threshold_gap": hindsight_tau - calibration.threshold,
    }


def answers_table(
    answers: OpenSetAnswers, paths: np.ndarray | Sequence[str], calibration: Calibration
) -> pd.DataFrame:
    """``star_openset_queries.csv``: one row per query with its answer, probability and decision."""
    return pd.DataFrame(
        {
            "path": list(paths),
            "identity": answers.identity,
            "is_new": answers.is_new,
            "top1_identity": answers.top1,
            "top1_score": answers.top1_score,
            "probability": calibration.probability(answers.top1_score),
            "decision": np.where(answers.top1_score < calibration.threshold, "new", "known"),
        }
    )
