"""The lineup page: ``lineup.html`` beside ``matches.json``, where a person confirms what the model proposes.

One self-contained HTML file (``templates/lineup.html.j2`` with ``lineup.css`` and ``lineup.js`` inlined) that
opens from the file system: no server, no network (its Content-Security-Policy allows no connection at all and
runs only its own script, by hash), thumbnails in the sibling folder ``thumbs/``.

- Each query (an encounter, or one photo) shows its photo large beside its top-k candidates: the candidate's
  best-matching catalogue photo, a strip of the individual's other photos with dates, the score, the
  probability as a bar and the verdict badge. Uncertain queries come first (``VERDICT_ORDER``); the page
  filters by verdict.
- Decisions (confirm candidate N, new individual with an optional name, unsure, a note) are kept in the
  browser's localStorage under a key made from the matches document (two lineups never mix) and exported
  as ``decisions.csv`` (``DECISION_COLUMNS``; one row per photo of each decided query, photos and encounters
  as ``paths.path_ref`` names them, so a name that is not UTF-8 survives) with a Blob download;
  ``megastarid catalogue apply`` reads that file.
- Data reaches the page as JSON inside ``<script type="application/json">`` with ``<``, ``>``, ``&``, U+2028
  and U+2029 escaped (``script_json``), so no file name can close the script; the page builds its DOM with
  ``textContent`` and properties, never ``innerHTML``; everything else goes through jinja2's autoescape.

Thumbnails (``THUMB_SIZE`` px JPEG, decoded at reduced size) are named from the photo's path, size and
modification time: made once, reused by later runs, remade when the photo changes; those the page no longer
shows go (``remove_unused_thumbnails``). ``outputs`` writes the page with the rest of identify's set.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup
from PIL import Image

from megastarid.core.files import atomic_write, remove_stale_temps
from megastarid.core.runfiles import DECISIONS_CSV, THUMBS_DIR
from megastarid.data.catalogue import examples
from megastarid.data.images import BadImageError, load_rgb
from megastarid.identification.paths import path_ref

log = logging.getLogger(__name__)

#: longest side of a thumbnail, in pixels
THUMB_SIZE = 256
THUMB_QUALITY = 85
#: the order queries are shown in: the ones that need a person first
VERDICT_ORDER = ("uncertain", "unverified", "new", "match", "known-photo")
#: the columns of the exported decisions.csv
DECISION_COLUMNS = ("query", "encounter", "decision", "identity", "note", "time", "query_id")
DECISIONS = ("confirm", "new", "unsure")
#: key prefix of the page's saved decisions in localStorage
STORAGE_PREFIX = "megastarid-lineup:"

_TEMPLATES = "templates"
#: a thumbnail's file name (``thumbnail_name``)
_THUMB_FILE = re.compile(r"[0-9a-f]{32}\.jpg")
_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


# -- thumbnails --------------------------------------------------------------------------------------------


def thumbnail_name(path: str, size: int = THUMB_SIZE) -> str | None:
    """``thumbs/<key>.jpg`` for a photo, the key made from its absolute path, size, mtime and ``size``; None
    when the photo cannot be found."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    key = f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\0{size}"
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return f"{THUMBS_DIR}/{digest}.jpg"


def _make_thumbnail(source: str, target: Path, size: int) -> bool:
    """Write ``target`` (a ``size`` px JPEG of ``source``) unless it is there; False when unreadable."""
    if target.is_file():
        return True
    try:
        image = load_rgb(source, min_side=size)
    except BadImageError:
        return False
    image.thumbnail((size, size), Image.Resampling.BICUBIC)
    atomic_write(target, lambda tmp: image.save(tmp, "JPEG", quality=THUMB_QUALITY))
    return True


def remove_unused_thumbnails(out_dir: Path, shown: set[str]) -> int:
    """Remove from ``out_dir/thumbs`` the thumbnails the page does not show (``shown``: their ``thumbs/…``
    names) and the temp files of killed thumbnail writes; other files stay. Returns how many went."""
    folder = out_dir / THUMBS_DIR
    removed = remove_stale_temps(folder, like=_THUMB_FILE.pattern)
    with os.scandir(folder) as entries:
        unused = [
            Path(entry.path)
            for entry in entries
            if _THUMB_FILE.fullmatch(entry.name) and f"{THUMBS_DIR}/{entry.name}" not in shown
        ]
    for path in unused:
        path.unlink(missing_ok=True)
    return len(removed) + len(unused)


def make_thumbnails(paths: Iterable[str], out_dir: Path, size: int = THUMB_SIZE) -> dict[str, str | None]:
    """A thumbnail for each photo under ``out_dir/thumbs`` (made only when missing, in a few threads): the
    photo -> its thumbnail's path relative to ``out_dir``, or None when the photo cannot be read."""
    names = {path: thumbnail_name(path, size) for path in dict.fromkeys(paths)}
    (out_dir / THUMBS_DIR).mkdir(parents=True, exist_ok=True)
    todo = [(path, name) for path, name in names.items() if name is not None]
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        made = list(pool.map(lambda item: _make_thumbnail(item[0], out_dir / item[1], size), todo))
    for (path, _), ok in zip(todo, made, strict=True):
        if not ok:
            names[path] = None
    missing = [path for path, name in names.items() if name is None]
    if missing:
        log.warning("no thumbnail for %d unreadable photo(s): %s", len(missing), examples(missing, 3))
    return names


# -- the page's data ---------------------------------------------------------------------------------------


def _photo(item: dict[str, Any], thumbs: dict[str, str | None]) -> dict[str, Any]:
    path = item["path"]
    return {
        "path": path,
        "ref": path_ref(path),
        "name": os.path.basename(path),
        "thumb": thumbs.get(path),
        "url": Path(path).as_uri(),
        "date": item.get("date"),
        "outing": item.get("outing"),
    }


def photo_paths(document: dict[str, Any]) -> list[str]:
    """Every photo the page shows: query photos, candidates' best and other photos, known photos."""
    paths: list[str] = []
    for query in document["queries"]:
        paths += [photo["path"] for photo in query["photos"]]
        for candidate in query["candidates"]:
            paths.append(candidate["best_photo"]["path"])
            paths += [other["path"] for other in candidate["other_photos"]]
        paths += [known["path"] for known in query.get("known", [])]
    return list(dict.fromkeys(paths))


def document_key(document: dict[str, Any]) -> str:
    """The localStorage key of a matches document's decisions: its content's sha256 (short)."""
    text = json.dumps(document, sort_keys=True, ensure_ascii=True)
    return STORAGE_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:20]


def lineup_data(document: dict[str, Any], thumbs: dict[str, str | None]) -> dict[str, Any]:
    """What the page's script reads: the matches document reshaped for display (thumbnails, file URLs,
    known photos as candidates), queries in ``VERDICT_ORDER`` then document order."""
    queries = []
    for query in document["queries"]:
        candidates = []
        for c in query["candidates"]:
            best = {**_photo(c["best_photo"], thumbs), "score": c["best_photo"]["score"]}
            best["query_photo"] = c["best_photo"]["query_photo"]
            candidates.append(
                {
                    "rank": c["rank"],
                    "identity": c["identity"],
                    "score": c["score"],
                    "probability": c["probability"],
                    "first_seen": c["first_seen"],
                    "last_seen": c["last_seen"],
                    "num_photos": c["num_photos"],
                    "best": best,
                    "others": [_photo(other, thumbs) for other in c["other_photos"]],
                    "known": False,
                }
            )
        for rank, known in enumerate(query.get("known", []), start=len(candidates) + 1):
            candidates.append(
                {
                    "rank": rank,
                    "identity": known["identity"],
                    "score": None,
                    "probability": None,
                    "first_seen": None,
                    "last_seen": known["last_seen"],
                    "num_photos": None,
                    "best": {
                        **_photo(known, thumbs),
                        "score": None,
                        "query_photo": query["photos"][0]["path"],
                    },
                    "others": [],
                    "known": True,
                }
            )
        queries.append(
            {
                "id": query["id"],
                "encounter": query["encounter"],
                "encounter_ref": path_ref(query["encounter"]),
                "verdict": query["verdict"],
                "photos": [_photo(photo, thumbs) for photo in query["photos"]],
                "candidates": candidates,
            }
        )
    verdict_rank = {verdict: i for i, verdict in enumerate(VERDICT_ORDER)}
    queries.sort(key=lambda q: (verdict_rank.get(q["verdict"], len(verdict_rank)), q["id"]))
    catalogue = document["catalogue"]
    return {
        "key": document_key(document),
        "created": document.get("created"),
        "catalogue": {
            "path": catalogue["path"],
            "individuals": catalogue["individuals"],
            "photos": catalogue["photos"],
            "calibration": catalogue["calibration"],
        },
        "top_k": document["options"]["top_k"],
        "encounter_by": document["options"]["encounter_by"],
        "verdicts": document["verdicts"],
        "verdict_order": list(VERDICT_ORDER),
        "columns": list(DECISION_COLUMNS),
        "decisions_file": DECISIONS_CSV,
        "queries": queries,
        "unreadable": [
            {"path": u["path"], "name": os.path.basename(u["path"])} for u in document["unreadable"]
        ],
    }


def script_json(data: Any) -> Markup:
    """``data`` as JSON that is safe inside ``<script type="application/json">``: ``<``, ``>``, ``&``,
    U+2028 and U+2029 as ``\\u`` escapes (so ``</script>`` or ``<!--`` in a file name stays text), every
    other non-ASCII character escaped too; ``JSON.parse`` gives back the very same strings."""
    text = json.dumps(data, ensure_ascii=True, allow_nan=False)
    for char, escape in _SCRIPT_ESCAPES.items():
        text = text.replace(char, escape)
    return Markup(text)


# -- rendering ---------------------------------------------------------------------------------------------


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(_TEMPLATES, name).read_text(encoding="utf-8")


def render_lineup(data: dict[str, Any]) -> str:
    """The page's HTML for ``lineup_data``'s ``data`` (jinja2, autoescaped)."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader(__package__, _TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    script, css = _asset("lineup.js"), _asset("lineup.css")
    for text, tag in ((script, "</script"), (css, "</style")):
        assert tag not in text.lower(), f"the page's own {tag[2:]} must not close its element"
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    counts: dict[str, int] = {}
    for query in data["queries"]:
        counts[query["verdict"]] = counts.get(query["verdict"], 0) + 1
    return environment.get_template("lineup.html.j2").render(
        data=data,
        data_json=script_json(data),
        counts=counts,
        script=Markup(script),
        css=Markup(css),
        script_hash=f"sha256-{digest}",
    )


def lineup_page(
    document: dict[str, Any], out_dir: Path, thumb_size: int = THUMB_SIZE
) -> tuple[str, set[str]]:
    """Make the thumbnails (those missing) under ``out_dir``; the page's HTML and the thumbnails it shows."""
    thumbs = make_thumbnails(photo_paths(document), out_dir, thumb_size)
    return render_lineup(lineup_data(document, thumbs)), {name for name in thumbs.values() if name}
