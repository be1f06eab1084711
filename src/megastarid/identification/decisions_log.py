"""The decision log (``megastarid catalogue log``): the audit table's rows, and the table printed of them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from megastarid.identification.names import printable
from megastarid.identification.store import CatalogueStore

LOG_COLUMNS = (
    "applied", "source", "line", "source_sha256", "decided", "decision", "query", "photo", "encounter",
    "identity", "note", "effect",
)  # fmt: skip


def decision_log(store: CatalogueStore) -> list[dict[str, Any]]:
    """Every applied decision, oldest first (the audit table's rows)."""
    rows = store.con.execute(f"SELECT {', '.join(LOG_COLUMNS)} FROM decisions ORDER BY id").fetchall()
    return [dict(zip(LOG_COLUMNS, row, strict=True)) for row in rows]


def log_lines(entries: Sequence[dict[str, Any]]) -> list[str]:
    """``catalogue log``'s table: time, source (file:line), decision, query, identity, effect; one line per
    decision, whatever the names (``names.printable``)."""
    header = ("time", "source", "decision", "query", "identity", "effect")
    table = [header] + [
        (
            e["applied"],
            printable(f"{os.path.basename(e['source'])}:{e['line']}"),
            e["decision"],
            printable(e["photo"] or e["query"]),
            printable(e["identity"]) or "-",
            e["effect"],
        )
        for e in entries
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header) - 1)]
    return [
        "  ".join([*(f"{c!s:<{w}}" for c, w in zip(row[:-1], widths, strict=True)), row[-1]]) for row in table
    ]
