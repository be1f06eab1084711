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

import logging
import math
from dataclasses import dataclass

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
    newest_gallery = df[df["split"] == "train"].groupby("identity")["date"].max().rename("newest_gallery")
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
