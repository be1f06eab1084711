"""What identify proposed for each decision: read from its ``matches.json`` when ``catalogue apply`` is
given one (``--matches``), so the audit table holds proposal and decision together and the lab's decisions
can score the model (``decision_history``).

A decision names its query by ``query_id`` (the query's ``id`` in ``matches.json``; the lineup page writes
it); a decisions file written before that column existed is matched by the photo instead (the query whose
photos include it). The proposal kept is small: the verdict, the model's fingerprint, τ and accept level,
and the top-k candidates with score and P.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from megastarid.core.errors import UserError
from megastarid.identification.decisions_file import Decision
from megastarid.identification.matches import FORMAT
from megastarid.identification.paths import path_ref


class Proposals:
    """The queries of one ``matches.json``, by id and by photo."""

    def __init__(self, path: Path) -> None:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise UserError(f"matches file {path} cannot be read ({err.strerror or err})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"matches file {path} is not JSON ({err})") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise UserError(f"{path} is not identify's matches.json (no format {FORMAT!r})")
        self.path = path
        self.by_id: dict[int, dict[str, Any]] = {}
        self.by_photo: dict[str, int] = {}
        try:
            catalogue = document.get("catalogue") or {}
            calibration = catalogue.get("calibration") or {}
            for query in document["queries"]:
                number = int(query["id"])
                self.by_id[number] = {
                    "matches": str(path.resolve()),
                    "query_id": number,
                    "verdict": str(query["verdict"]),
                    "model": catalogue.get("model"),
                    "threshold": calibration.get("threshold"),
                    "accept": calibration.get("accept"),
                    "candidates": [
                        {key: c[key] for key in ("rank", "identity", "score", "probability")}
                        for c in query["candidates"]
                    ],
                }
                for photo in query["photos"]:
                    self.by_photo[photo["path"]] = number
                    self.by_photo[path_ref(photo["path"])] = number
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise UserError(f"{path}: not identify's matches.json ({type(err).__name__}: {err})") from None

    def query_id(self, decision: Decision, where: str) -> int | None:
        """The query a decision answers: its ``query_id`` (checked against its photo), else the query holding
        its photo; None when the matches document has no such photo."""
        found = self.by_photo.get(decision.query)
        if decision.query_id is None:
            return found
        if decision.query_id not in self.by_id:
            raise UserError(f"{where}: query_id {decision.query_id} is not a query of {self.path}")
        if found is not None and found != decision.query_id:
            raise UserError(
                f"{where}: query_id {decision.query_id} of {self.path} does not hold photo {decision.query} "
                f"(query {found} does): a decisions file from another lineup?"
            )
        return decision.query_id

    def proposal(self, query_id: int) -> dict[str, Any]:
        """The stored proposal of one query (module docstring)."""
        return self.by_id[query_id]


def proposal_columns(
    proposals: Proposals | None, decision: Decision, where: str
) -> tuple[int | None, str | None]:
    """(query_id, proposal JSON) of a decision's audit row; the proposal only with a matches document."""
    if proposals is None:
        return decision.query_id, None
    query_id = proposals.query_id(decision, where)
    if query_id is None:
        return None, None
    return query_id, json.dumps(proposals.proposal(query_id), sort_keys=True)
