"""Open-set metrics against plain reimplementations of their published definitions, and the calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from megastarid.core.errors import UserError
from megastarid.evaluation.individuals import rank_individuals
from megastarid.evaluation.openset import (
    Calibration,
    OpenSetAnswers,
    answer_queries,
    baks_baus,
    choose_threshold,
    expected_calibration_error,
    fit_calibration,
    openset_summary,
    threshold_sweep,
)


def plain_baks_baus(truth, is_new, predicted, threshold, scores):
    """AnimalCLEF 2025: per identity accuracy, averaged over identities, on known and unknown samples."""
    known, unknown = {}, {}
    for identity, new, guess, score in zip(truth, is_new, predicted, scores, strict=True):
        answer = "new" if score < threshold else guess
        if new:
            unknown.setdefault(identity, []).append(answer == "new")
        else:
            known.setdefault(identity, []).append(answer == identity)
    mean = lambda groups: sum(sum(v) / len(v) for v in groups.values()) / len(groups)  # noqa: E731
    return mean(known), mean(unknown)


def _answers(rows):
    identity, is_new, top1, score = zip(*rows, strict=True)
    return OpenSetAnswers(
        np.array(identity), np.array(is_new), np.array(top1), np.array(score, dtype=np.float32)
    )


HAND = [
    # identity, is new, top-1 answer, top-1 score
    ("a", False, "a", 0.9),
    ("a", False, "a", 0.4),  # right individual, but below τ = 0.5: answered "new" -> wrong
    ("a", False, "b", 0.8),  # confidently the wrong individual
    ("b", False, "b", 0.7),
    ("x", True, "a", 0.95),  # a new star taken for a known one: BAUS counts it wrong
    ("x", True, "b", 0.2),
    ("y", True, "b", 0.3),
]


def test_baks_baus_hand_made_case() -> None:
    answers = _answers(HAND)
    baks, baus = baks_baus(answers, 0.5)
    # a: 1 of 3 right, b: 1 of 1 -> (1/3 + 1) / 2; x: 1 of 2 new, y: 1 of 1 -> (1/2 + 1) / 2
    assert baks == pytest.approx((1 / 3 + 1) / 2)
    assert baus == pytest.approx(0.75)
    truth, new, top1, score = zip(*HAND, strict=True)
    assert (baks, baus) == pytest.approx(plain_baks_baus(truth, new, top1, 0.5, score))


def test_metrics_match_plain_definitions_on_random_answers() -> None:
    rng = np.random.default_rng(3)
    n = 300
    identity = rng.choice([f"id{i}" for i in range(25)], n)
    is_new = np.isin(identity, [f"id{i}" for i in range(18, 25)])
    top1 = np.where(rng.random(n) < 0.7, identity, rng.choice([f"id{i}" for i in range(18)], n))
    score = np.where(is_new, rng.normal(0.4, 0.15, n), rng.normal(0.7, 0.15, n)).astype(np.float32)
    answers = OpenSetAnswers(identity, is_new, top1, score)
    for tau in (0.3, 0.55, 0.8):
        assert baks_baus(answers, tau) == pytest.approx(plain_baks_baus(identity, is_new, top1, tau, score))
    sweep = threshold_sweep(answers)
    for row in sweep.sample(20, random_state=0).itertuples():
        baks, baus = plain_baks_baus(identity, is_new, top1, row.threshold, score)
        assert pytest.approx((baks, baus)) == (row.BAKS, row.BAUS)
        assert row.geometric_mean == pytest.approx(math.sqrt(baks * baus))
    tau = choose_threshold(sweep)
    assert sweep["geometric_mean"].max() == pytest.approx(math.sqrt(np.prod(baks_baus(answers, tau))))
    summary = openset_summary(answers, fit_calibration(answers)[0], sweep)
    assert summary["AUROC"] == pytest.approx(roc_auc_score(is_new, -score))


def test_threshold_under_a_false_new_budget() -> None:
    sweep = threshold_sweep(_answers(HAND))
    tau = choose_threshold(sweep, max_false_new=0.25)
    assert tau == pytest.approx(0.7)  # 0.4 < τ keeps 1 of 4 known queries "new"; a higher τ would take 0.7
    assert sweep.loc[sweep["threshold"] == tau, "false_new_rate"].item() <= 0.25


def test_ece_plain() -> None:
    p = np.array([0.05, 0.15, 0.95, 0.92, 0.55])
    right = np.array([0, 0, 1, 0, 1], bool)
    # bins: [0,.1): .05 vs 0; [.1,.2): .15 vs 0; [.5,.6): .55 vs 1; [.9,1]: .935 vs .5
    expected = (0.05 + 0.15 + 0.45 + 2 * 0.435) / 5
    assert expected_calibration_error(p, right) == pytest.approx(expected)


def _draw(seed: int, n: int = 400) -> OpenSetAnswers:
    """Known queries score ~0.7 and are right 80 % of the time, new ones score ~0.35."""
    rng = np.random.default_rng(seed)
    is_new = rng.random(n) < 0.3
    score = np.where(is_new, rng.normal(0.35, 0.1, n), rng.normal(0.7, 0.1, n)).astype(np.float32)
    identity = np.array([f"n{i % 9}" if new else f"k{i % 20}" for i, new in enumerate(is_new)])
    top1 = np.where(~is_new & (rng.random(n) < 0.8), identity, "k0_other")
    return OpenSetAnswers(identity, is_new, top1, score)


def test_calibration_fits_round_trips_and_refuses_too_few_queries() -> None:
    answers, fresh = _draw(0), _draw(1)
    raw_ece = expected_calibration_error(np.clip(fresh.top1_score, 0, 1), fresh.top1_right)
    for method, bound in (("isotonic", 0.08), ("logistic", 0.15)):
        calibration, _ = fit_calibration(answers, method, fitted_on={"protocol": "time-cut"})
        p = calibration.probability(fresh.top1_score)
        assert ((p >= 0) & (p <= 1)).all()
        assert p[np.argsort(fresh.top1_score)].tolist() == sorted(p.tolist())  # monotone in the score
        assert expected_calibration_error(p, fresh.top1_right) < min(bound, raw_ece)  # on unseen answers
        again = Calibration.from_dict(calibration.to_dict(), "calibration.json")
        assert np.allclose(again.probability(fresh.top1_score), p)
        assert calibration.fitted_on["protocol"] == "time-cut"
        assert calibration.fitted_on["num_new"] == answers.num_new
    identity, is_new, top1, score = answers.identity, answers.is_new, answers.top1, answers.top1_score
    few = OpenSetAnswers(identity[:10], is_new[:10], top1[:10], score[:10])
    with pytest.raises(UserError, match="too few validation queries to fit the open-set calibration"):
        fit_calibration(few)
    only_known = OpenSetAnswers(identity[~is_new], is_new[~is_new], top1[~is_new], score[~is_new])
    with pytest.raises(UserError, match="0 new"):
        fit_calibration(only_known)
    with pytest.raises(UserError, match="not a MegaStarID calibration"):
        Calibration.from_dict({"method": "magic", "threshold": 0.5, "accept": 0.5}, "c.json")


def test_rank_individuals_matches_brute_force_and_leaves_own_out() -> None:
    rng = np.random.default_rng(1)
    gallery = rng.normal(size=(60, 8)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    query = rng.normal(size=(17, 8)).astype(np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    ids = np.array([f"s{i % 7}" for i in range(60)])
    ranking = rank_individuals(query, gallery, ids, k=3, chunk_size=5)
    sims = query @ gallery.T
    for q in range(17):
        best = {name: sims[q, ids == name].max() for name in set(ids)}
        order = sorted(best, key=lambda name: -best[name])[:3]
        assert [ranking.names[c] for c in ranking.identity[q]] == order
        assert np.allclose(ranking.score[q], [best[name] for name in order], atol=1e-6)
        for j, name in enumerate(order):
            assert ids[ranking.best_photo[q, j]] == name
            assert sims[q, ranking.best_photo[q, j]] == pytest.approx(best[name], abs=1e-6)
    own = np.array([f"s{q % 7}" for q in range(17)])
    answers = answer_queries(query, own, gallery, ids, leave_own_out=True)
    assert answers.is_new.all() and (answers.top1 != own).all()
    wide = rank_individuals(query[:2], gallery[:4], ids[:4], k=6)
    assert (wide.identity[:, 4:] == -1).all() and np.isneginf(wide.score[:, 4:]).all()


def test_openset_report_files(tmp_path) -> None:
    import json

    import pandas as pd

    from megastarid.evaluation.openset_report import write_openset_reports

    answers = _draw(2)
    calibration, _ = fit_calibration(_draw(3))
    paths = [f"/photos/{i}.jpg" for i in range(len(answers.identity))]
    summary = write_openset_reports(answers, paths, calibration, tmp_path, {"protocol": "time-cut"})
    saved = json.loads((tmp_path / "star_openset_summary.json").read_text())
    assert saved["protocol"] == "time-cut" and saved["threshold"] == calibration.threshold
    assert saved["BAKS"] == pytest.approx(baks_baus(answers, calibration.threshold)[0])
    assert saved == json.loads(json.dumps(summary))
    table = pd.read_csv(tmp_path / "star_openset_queries.csv")
    assert list(table.columns) == [
        "path", "identity", "is_new", "top1_identity", "top1_score", "probability", "decision"
    ]  # fmt: skip
    assert (table["decision"] == "new").sum() == (answers.top1_score < calibration.threshold).sum()
    assert len(pd.read_csv(tmp_path / "openset_thresholds.csv")) > 10
    for plot in ("openset_curve.png", "reliability.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    known_only = OpenSetAnswers(
        answers.identity, np.zeros_like(answers.is_new), answers.top1, answers.top1_score
    )
    assert write_openset_reports(known_only, paths, calibration, tmp_path / "k")["BAUS"] is None
