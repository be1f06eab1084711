"""The temporal gallery/query split of star_dataset (DESIGN.md §3): the science of the evaluation.

Per identity, its outings are grouped into *visits*: outings with the same date form one visit (two folders
from one day hold near-duplicate photos, so they must stay on one side); an undated outing is a visit of its
own. Visits are ordered by date, undated ones after all dated ones in folder-name order. The earliest
``round(gallery_fraction * n)`` visits go to the gallery/train side ("train"), the rest to query/test
("test"), but every identity with two or more visits keeps at least one on each side. With the default 0.8:

    visits   2    3    4    5    6    7    8    9    10
    gallery  1    2    3    4    5    6    6    7    8
    query    1    1    1    1    1    1    2    2    2

Identities with a single visit are gallery-only. So no (identity, outing) is ever on both sides and, for
dated outings, every query outing is strictly later than all of that identity's gallery outings.
An identity whose rows already carry a ``split`` keeps it (the CSV's split overrides).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from megastarid.core.errors import UserError
from megastarid.data.catalogue import examples

log = logging.getLogger(__name__)


def gallery_visits(visits: int, gallery_fraction: float = 0.8) -> int:
    """How many of an identity's ``visits`` (oldest first) go to the gallery; see the module table."""
    if visits < 2:
        return visits
    wanted = math.floor(gallery_fraction * visits + 0.5 + 1e-9)
    return min(max(wanted, 1), visits - 1)


def temporal_split(df: pd.DataFrame, gallery_fraction: float = 0.8) -> pd.DataFrame:
    """Return a copy of the catalogue ``df`` with ``split`` filled by the temporal rule (module docstring).

    Deterministic: it depends only on identities, folder names and dates, never on row order or a seed.
    """
    if not 0 < gallery_fraction < 1:
        raise UserError(f"gallery fraction must be between 0 and 1 (got {gallery_fraction})")
    out = df.copy()
    given = out["split"] != ""
    mixed = given.groupby(out["identity"]).nunique() > 1
    if mixed.any():
        raise UserError(f"identity {mixed[mixed].index[0]!r} has a split for some photos but not for others")
    _warn_leaks(out[given])

    todo = out.loc[~given, ["identity", "folder", "date"]]
    outings = todo.drop_duplicates(["identity", "folder"]).copy()
    outings["visit"] = (
        outings["date"].dt.strftime("%Y-%m-%d").where(outings["date"].notna(), "?" + outings["folder"])
    )
    outings = outings.sort_values(["identity", "date", "folder"], na_position="last", kind="stable")
    visits = outings.drop_duplicates(["identity", "visit"]).copy()
    visits["order"] = visits.groupby("identity").cumcount()
    count = visits.groupby("identity")["order"].transform("size")
    cut = count.map(lambda n: gallery_visits(n, gallery_fraction))
    visits["split"] = (visits["order"] >= cut).map({False: "train", True: "test"})
    _warn_undated(outings, count.groupby(visits["identity"]).first())

    side = outings.merge(visits[["identity", "visit", "split"]], on=["identity", "visit"])
    split = todo.merge(side[["identity", "folder", "split"]], on=["identity", "folder"], how="left")["split"]
    out.loc[~given, "split"] = split.to_numpy()
    return out


def _warn_undated(outings: pd.DataFrame, visit_counts: pd.Series) -> None:
    """One warning listing the undated outing folders whose place in time had to come from their name."""
    split_identities = visit_counts.index[visit_counts >= 2]
    undated = outings[outings["date"].isna() & outings["identity"].isin(split_identities)]
    if not undated.empty:
        names = sorted(set(undated["folder"]))
        log.warning(
            "%d outing folder(s) have no date in their name (M_D_YYYY, YYYY-MM-DD or YYYYMMDD); ordered by "
            "name after the dated ones: %s",
            len(names),
            examples(names, 20),
        )


@dataclass(frozen=True)
class SplitAudit:
    """How far a catalogue's split keeps the protocol's two promises (both lists empty when it does)."""

    shared_outings: list[tuple[str, str]]  # (identity, folder) pairs with photos on both sides
    early_queries: list[str]  # query photos dated no later than their identity's newest gallery photo


def audit_split(df: pd.DataFrame) -> SplitAudit:
    """Check a split (ours or a user's): no outing on both sides, every dated query later than the gallery."""
    sides = df[df["split"] != ""].groupby(["identity", "folder"])["split"].nunique()
    shared = [(str(identity), str(folder)) for identity, folder in sides[sides > 1].index]
    gallery = df["split"].isin(["train", "val"])
    newest_gallery = df[gallery].groupby("identity")["date"].max().rename("newest_gallery")
    queries = df[df["split"] == "test"].join(newest_gallery, on="identity")
    early = queries["date"] <= queries["newest_gallery"]  # False where either date is unknown
    return SplitAudit(shared, queries.loc[early, "path"].tolist())


def _warn_leaks(given: pd.DataFrame) -> None:
    """A given split that puts one outing on both sides leaks near-duplicates; say so (it is the user's)."""
    shared = audit_split(given).shared_outings
    if shared:
        log.warning(
            "the given split puts %d outing(s) on both gallery and query sides (e.g. %s, %s): "
            "same-day photos are near-duplicates, so scores will be optimistic",
            len(shared),
            *shared[0],
        )


# ---------------------------------------------------------------- open-set protocols and validation

#: --split values: the closed temporal split, and the two open-set protocols (DESIGN §3)
PROTOCOLS = ("temporal", "time-cut", "identity-holdout")
#: fewest identities training keeps when whole identities are held out
MIN_TRAIN_IDENTITIES = 2


@dataclass(frozen=True)
class SplitPlan:
    """How to split a star catalogue into train / val / test (see ``split_catalogue``)."""

    protocol: str = "temporal"
    gallery_fraction: float = 0.8
    cut_date: pd.Timestamp | None = None  # time-cut; None = the day that puts ~20 % of photos after it
    new_fraction: float = 0.2  # identity-holdout: share of identities moved whole to the test side
    val_fraction: float = 0.1  # cap of validation photos, as a share of the train side's photos
    seed: int = 0

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise UserError(f"--split must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if not 0 < self.new_fraction < 1:
            raise UserError(f"--new-fraction must be between 0 and 1 (exclusive), got {self.new_fraction}")
        if not 0 <= self.val_fraction < 1:
            raise UserError(f"--val-fraction must be at least 0 and below 1, got {self.val_fraction}")

    @property
    def is_open(self) -> bool:
        return self.protocol != "temporal"


def hash_order(names: Iterable[object], seed: int) -> list[str]:
    """``names`` in a pseudo-random order that depends only on the names and the seed (not on row order,
    the platform or Python's hash salt), so every choice made with it is reproducible."""

    def key(name: str) -> str:
        return hashlib.sha256(f"{seed}:{name}".encode("utf-8", "surrogateescape")).hexdigest()

    return sorted((str(name) for name in names), key=key)


def outing_dates(df: pd.DataFrame) -> pd.Series:
    """The date of each row's outing (its earliest dated photo), so a whole outing always falls on one side
    of a cut even when its photos carry different times."""
    return df.groupby(["identity", "folder"])["date"].transform("min")


def default_cut_date(df: pd.DataFrame, after_fraction: float = 0.2) -> pd.Timestamp:
    """The day that puts about ``after_fraction`` of the dated photos on or after it (the later day on a
    tie); never the first day, which would leave no gallery."""
    days = outing_dates(df).dropna().dt.normalize()
    if days.nunique() < 2:
        raise UserError(
            "--split time-cut needs photos from at least two different dates (none to cut between)"
        )
    counts = days.value_counts().sort_index()
    on_or_after = (counts[::-1].cumsum()[::-1] / len(days)).iloc[1:]
    gaps = np.abs(on_or_after.to_numpy() - after_fraction)
    return pd.Timestamp(on_or_after.index[len(gaps) - 1 - int(np.argmin(gaps[::-1]))])


def time_cut_split(
    df: pd.DataFrame, cut_date: pd.Timestamp | None = None
) -> tuple[pd.DataFrame, pd.Timestamp]:
    """Everything before the cut day is train/gallery, everything on or after it is test: individuals first
    seen after the cut are new (next season's recruits). Undated outings cannot be placed and are left out
    (split ""), with a warning. Rows that already carry a split keep it."""
    out = df.copy()
    cut = pd.Timestamp(cut_date).normalize() if cut_date is not None else default_cut_date(out)
    given = out["split"] != ""
    dates = outing_dates(out)
    out.loc[~given & (dates < cut), "split"] = "train"
    out.loc[~given & (dates >= cut), "split"] = "test"
    undated = ~given & dates.isna()
    if undated.any():
        log.warning(
            "--split time-cut: %d photo(s) in %d outing(s) without a date are left out (no side of the cut)",
            int(undated.sum()),
            out.loc[undated, ["identity", "folder"]].drop_duplicates().shape[0],
        )
    if not (out["split"] == "train").any() or not (out["split"] == "test").any():
        raise UserError(f"--cut-date {cut.date()}: one side of the cut holds no photos")
    return out, cut


def identity_holdout_split(df: pd.DataFrame, plan: SplitPlan) -> pd.DataFrame:
    """The temporal split, then ``new_fraction`` of the identities (a deterministic choice) moved whole to
    the test side: they are new individuals for every query of theirs. For sets without usable dates."""
    out = temporal_split(df, plan.gallery_fraction)
    identities = hash_order(pd.unique(out["identity"]), plan.seed)
    count = min(max(1, round(plan.new_fraction * len(identities))), len(identities) - MIN_TRAIN_IDENTITIES)
    if count < 1:
        raise UserError(
            f"--split identity-holdout needs at least {MIN_TRAIN_IDENTITIES + 1} identities, "
            f"the set has {len(identities)}"
        )
    out.loc[out["identity"].isin(identities[:count]), "split"] = "test"
    return out


def carve_validation(df: pd.DataFrame, plan: SplitPlan) -> pd.DataFrame:
    """Mark validation rows ("val") on the train side, respecting time (DESIGN §3).

    - Known validation: per identity with at least three outings in all and two on the train side, its
      latest train-side outing (training keeps the earlier ones; the test side stays later).
    - Pseudo-new validation, under the open protocols only: a few whole train identities (always leaving
      two to train on), so the new-individual threshold is fitted without the test side.

    The validation photos are capped at ``val_fraction`` of the train side's photos: pseudo-new identities
    take about half of that budget (one at least, when it fits), known outings the rest, each chosen in a
    seeded hash order.
    """
    out = df.copy()
    train = out["split"] == "train"
    budget = math.floor(plan.val_fraction * int(train.sum()))
    if budget == 0:
        return out
    photos = out[train].groupby("identity").size()
    used = 0
    if plan.is_open:
        held: list[str] = []
        half = budget // 2
        for identity in hash_order(photos.index, plan.seed):
            if used >= half or len(photos) - len(held) <= MIN_TRAIN_IDENTITIES:
                break
            if used + photos[identity] <= half or (not held and photos[identity] < budget):
                held.append(identity)
                used += int(photos[identity])
        out.loc[train & out["identity"].isin(held), "split"] = "val"
        train = out["split"] == "train"
    outings = out[out["split"] != ""].assign(day=outing_dates(out)).drop_duplicates(["identity", "folder"])
    total = outings.groupby("identity").size()
    side = outings[outings["split"] == "train"].sort_values(
        ["identity", "day", "folder"], na_position="first"
    )
    on_train = side.groupby("identity").size()
    eligible = [i for i in hash_order(on_train.index, plan.seed + 1) if on_train[i] >= 2 and total[i] >= 3]
    latest = side.groupby("identity").tail(1).set_index("identity")["folder"]
    for identity in eligible:
        rows = train & (out["identity"] == identity) & (out["folder"] == latest[identity])
        if used + int(rows.sum()) > budget:
            continue
        out.loc[rows, "split"] = "val"
        used += int(rows.sum())
    return out


def split_catalogue(df: pd.DataFrame, plan: SplitPlan) -> pd.DataFrame:
    """The three sides of a star catalogue under ``plan``: train (and gallery), val, test. The protocol and
    the cut date travel in ``df.attrs`` so reports and checkpoints can record them."""
    cut = None
    if plan.protocol == "temporal":
        out = temporal_split(df, plan.gallery_fraction)
    elif plan.protocol == "time-cut":
        out, cut = time_cut_split(df, plan.cut_date)
    else:
        out = identity_holdout_split(df, plan)
    out = carve_validation(out, plan)
    out.attrs = {**df.attrs, "protocol": plan.protocol, "cut_date": None if cut is None else str(cut.date())}
    return out


def carve_wildlife_validation(df: pd.DataFrame, val_fraction: float = 0.1, seed: int = 0) -> pd.DataFrame:
    """A validation slice of WildlifeReID-10k's official train split, per source dataset: the latest train
    photo (by date, then path) of identities with at least three train photos, in a seeded hash order,
    until ``val_fraction`` of that dataset's train photos are taken. The official test split is untouched:
    it is reported once, never used to choose."""
    out = df.copy()
    train = out[out["split"] == "train"].sort_values(["identity", "date", "path"], na_position="first")
    chosen: list[str] = []
    for _, rows in train.groupby("dataset", sort=True):
        counts = rows.groupby("identity").size()
        latest = rows.groupby("identity")["path"].last()
        eligible = [identity for identity in hash_order(counts.index, seed) if counts[identity] >= 3]
        chosen.extend(latest[eligible[: math.floor(val_fraction * len(rows))]])
    out.loc[out["path"].isin(chosen), "split"] = "val"
    return out
