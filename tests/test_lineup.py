"""The lineup page without a browser: identify writes it and says where; data reaches it only as escaped JSON;
the page runs only its own script; thumbnails are made once, at the lineup's size, and remade when a photo
changes; an unreadable photo gets no thumbnail and breaks nothing. (The page in Chromium:
test_lineup_browser.py.)"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from conftest import make_star_tree, write_image
from megastarid import cli
from megastarid.core.runfiles import LINEUP_HTML, MATCHES_JSON, THUMBS_DIR
from megastarid.identification.lineup import (
    THUMB_SIZE,
    document_key,
    lineup_data,
    lineup_page,
    make_thumbnails,
    render_lineup,
    script_json,
)
from megastarid.models.checkpoints import save_checkpoint
from megastarid.models.network import build_model

LAYOUT = {
    "SiteA": {"star1": {"2024-03-01": 2, "2024-04-01": 2}, "star2": {"2024-03-01": 2, "2024-04-02": 2}},
    "SiteB": {"star3": {"2024-01-01": 2, "2024-02-01": 2}},
}
HOSTILE = "a \"b\" 'c' & <script>alert(1)<"  # a folder; the file inside begins with "script>"


def run(*argv: object) -> int:
    return cli.main([str(arg) for arg in argv])


@dataclass
class Identified:
    root: Path
    out: Path
    document: dict[str, Any]
    stdout: str


@pytest.fixture(scope="module")
def identified(tmp_path_factory: pytest.TempPathFactory) -> Identified:
    work = tmp_path_factory.mktemp("lineup-unit")
    root = make_star_tree(work / "stars", LAYOUT, size=(40, 32))
    torch.manual_seed(0)
    checkpoint = work / "best.pth"
    config = {"backbone": "test_resnet", "embedding_dim": 16, "image_size": 32}
    save_checkpoint(checkpoint, build_model("test_resnet", embedding_dim=16), config)
    catalogue = work / "archive.sqlite"
    assert (
        run("catalogue", "build", "--checkpoint", checkpoint, "--star-root", root, "--catalogue", catalogue)
        == 0
    )
    dive = work / "dive"
    write_image(dive / "enc1" / "IMG_0.jpg", (300, 200), seed=50)
    write_image(dive / "enc1" / "IMG_1.jpg", (40, 32), seed=51)
    write_image(dive / HOSTILE / "script> ☃.jpg", (40, 32), seed=52)
    shutil.copy(root / "SiteA" / "star1" / "2024-03-01" / "img0.jpg", dive / "known.jpg")
    out = work / "matches"
    capture = pytest.MonkeyPatch()
    lines: list[str] = []
    capture.setattr("builtins.print", lambda *a, **k: lines.append(" ".join(map(str, a))))
    try:
        assert run("identify", dive, "--catalogue", catalogue, "--out", out, "--allow-uncalibrated") == 0
    finally:
        capture.undo()
    return Identified(root, out, json.loads((out / MATCHES_JSON).read_text()), "\n".join(lines))


def test_identify_writes_the_lineup_and_prints_its_path(identified: Identified) -> None:
    page = identified.out / LINEUP_HTML
    assert page.is_file() and f"lineup: {page}" in identified.stdout
    thumbs = sorted((identified.out / THUMBS_DIR).iterdir())
    assert thumbs and all(t.suffix == ".jpg" for t in thumbs)


def test_data_reaches_the_page_only_as_escaped_json(identified: Identified) -> None:
    html = (identified.out / LINEUP_HTML).read_text(encoding="utf-8")
    hostile = next(q for q in identified.document["queries"] if HOSTILE in q["encounter"])
    assert "</script>" in hostile["photos"][0]["path"]
    assert "alert(1)" in html  # the name is there, escaped
    assert html.count("<script") == 2 and html.count("</script>") == 2
    assert "<script>alert" not in html and HOSTILE not in html
    block = re.search(r'<script type="application/json" id="lineup-data">(.*?)</script>', html, re.S)
    assert block is not None
    data = json.loads(block.group(1))
    assert data["key"] == document_key(identified.document)
    paths = [p["path"] for q in data["queries"] for p in q["photos"]]
    assert hostile["photos"][0]["path"] in paths
    # the policy runs the page's own script only (by its hash) and allows no connection at all
    script = re.search(r"<script>(.*?)</script>", html, re.S).group(1)  # type: ignore[union-attr]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)  # type: ignore[union-attr]
    assert f"script-src 'sha256-{digest}'" in policy and "default-src 'none'" in policy
    assert "http" not in re.sub(r'http-equiv="[^"]*"', "", html).replace("https://docs", "")


def test_script_json_escapes_what_could_end_the_script() -> None:
    value = {"name": "</script><!--<script>&\u2028\u2029 'q' \"dq\" ü \udcff", "n": [1, 2.5, None]}
    text = str(script_json(value))
    for char in "<>&\u2028\u2029":
        assert char not in text
    assert json.loads(text) == value


def test_known_photos_become_a_candidate_and_uncertain_queries_come_first(identified: Identified) -> None:
    data = lineup_data(identified.document, {})
    known = next(q for q in data["queries"] if q["verdict"] == "known-photo")
    (candidate,) = known["candidates"]
    assert candidate["known"] and candidate["identity"] == "SiteA/star1" and candidate["rank"] == 1
    assert data["queries"][-1]["verdict"] == "known-photo"  # after unverified ones
    document = json.loads(json.dumps(identified.document))
    verdicts = ["new", "uncertain", "match"]
    for query, verdict in zip(document["queries"], verdicts * 3, strict=False):
        if query["verdict"] != "known-photo":
            query["verdict"] = verdict
    order = [q["verdict"] for q in lineup_data(document, {})["queries"]]
    ranks = {"uncertain": 0, "new": 2, "match": 3, "known-photo": 4}
    assert order == sorted(order, key=ranks.__getitem__) and order[0] == "uncertain"


def test_thumbnails_are_made_once_at_the_lineup_size_and_again_when_the_photo_changes(tmp_path: Path) -> None:
    photo = write_image(tmp_path / "big.jpg", (1200, 900), seed=1)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "out"
    names = make_thumbnails([str(photo), str(broken), str(tmp_path / "missing.jpg")], out)
    assert names[str(broken)] is None and names[str(tmp_path / "missing.jpg")] is None
    thumb = out / names[str(photo)]  # type: ignore[operator]
    with Image.open(thumb) as image:
        assert image.format == "JPEG" and image.size == (THUMB_SIZE, THUMB_SIZE * 3 // 4)
    made = thumb.stat().st_mtime_ns
    assert make_thumbnails([str(photo)], out) == {str(photo): names[str(photo)]}
    assert thumb.stat().st_mtime_ns == made  # not made again
    write_image(photo, (600, 900), seed=2)  # the photo changes: a thumbnail of its own
    again = make_thumbnails([str(photo)], out)[str(photo)]
    assert again != names[str(photo)]
    with Image.open(out / again) as image:  # type: ignore[operator]
        assert image.size[1] == THUMB_SIZE and abs(image.size[0] - THUMB_SIZE * 2 / 3) < 1


def test_a_page_with_vanished_photos_and_no_queries_still_renders(
    identified: Identified, tmp_path: Path
) -> None:
    document = json.loads(json.dumps(identified.document))
    for query in document["queries"]:
        for photo in query["photos"]:
            photo["path"] = str(tmp_path / "vanished.jpg")
    page, shown = lineup_page(document, tmp_path / "out")
    data = json.loads(
        re.search(r'id="lineup-data">(.*?)</script>', page).group(1)  # type: ignore[union-attr]
    )
    assert shown == set(re.findall(r"thumbs/[0-9a-f]{32}\.jpg", page))  # the thumbnails the page shows
    assert {p["thumb"] for q in data["queries"] for p in q["photos"]} == {None}  # shown as "no preview"
    document["queries"], document["unreadable"] = [], [{"path": "/x/<b>.jpg", "encounter": "/x"}]
    html = render_lineup(lineup_data(document, {}))
    assert "MegaStarID lineup (0 queries)" in html and "<b>.jpg" not in html
