"""The lineup page in a real browser (Playwright on the system's Chromium; nothing is downloaded), and the
round trip it starts: identify -> lineup.html -> clicks and keys -> decisions.csv -> catalogue apply ->
identify again -> capture histories.

Without Chromium these tests skip with one line saying how to install it (CI installs it: .ci/run)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from conftest import write_image
from lineup_world import DIVE, HOSTILE_FILE, HOSTILE_FOLDER, HOSTILE_IDENTITY, World, make_world, run
from megastarid.core.files import plain_text, spreadsheet_text
from megastarid.core.runfiles import DECISIONS_CSV, LINEUP_HTML, MATCHES_JSON
from megastarid.data.dates import parse_folder_date
from megastarid.identification.lineup import DECISION_COLUMNS, VERDICT_ORDER

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")  # never fetch a browser: use the system's

TOP_K = 3
#: the decisions are made at this (frozen) browser time
CLOCK = dt.datetime(2024, 6, 2, 10, 0, 0, tzinfo=dt.UTC)
CLOCK_ISO = "2024-06-02T10:00:00.000Z"
#: a name and a note a spreadsheet would run as formulas: decisions.csv and the capture histories mark them
STELLA = '=Stella, "the big one"'
NOTE = '@check arms, "later" <b>&</b> ü'
ARTIFACTS = Path(__file__).parent / "artifacts"


def find_chromium() -> str | None:
    """The system's Chromium (or Chrome): $MEGASTARID_CHROMIUM, else the usual names on the PATH."""
    given = os.environ.get("MEGASTARID_CHROMIUM")
    if given:
        return given
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium for the lineup browser tests: install it with "
    "`apt-get install -y chromium` (or set MEGASTARID_CHROMIUM=/path/to/chrome)",
)


@dataclass
class Lineup:
    world: World
    out: Path
    document: dict[str, Any]

    @property
    def url(self) -> str:
        return (self.out / LINEUP_HTML).as_uri()

    def query(self, folder: str) -> dict[str, Any]:
        """The matches document's query for an encounter folder of the dive."""
        return next(q for q in self.document["queries"] if Path(q["encounter"]).name == folder)


@pytest.fixture(scope="module")
def lineup(synthetic_stars: Path, tmp_path_factory: pytest.TempPathFactory) -> Lineup:
    work = tmp_path_factory.mktemp("lineup")
    world = make_world(synthetic_stars, work)
    out = work / "matches"
    assert run("identify", world.dive, "--catalogue", world.catalogue, "--out", out, "--top-k", TOP_K) == 0
    return Lineup(world, out, json.loads((out / MATCHES_JSON).read_text()))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@dataclass
class Page:
    """A page in a fresh browser context, with everything it said."""

    page: Any
    console: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        return self.errors + [
            f"{kind}: {text}" for kind, text in self.console if kind in ("error", "warning")
        ]


def open_page(browser: Any, url: str, context: Any = None) -> Page:
    context = context or browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    seen = Page(page)
    page.on("console", lambda message: seen.console.append((message.type, message.text)))
    page.on("pageerror", lambda error: seen.errors.append(str(error)))

    def dialog(d: Any) -> None:
        seen.dialogs.append(d.message)
        d.dismiss()

    page.on("dialog", dialog)
    page.clock.set_fixed_time(CLOCK)
    page.goto(url)
    page.wait_for_selector("section.query")
    return seen


#: load the lazy thumbnails now and wait for them (a promise: the page's policy forbids the string evaluation
#: that Playwright's wait_for_function polls with)
LOAD_IMAGES = """() => Promise.all(Array.from(document.images).map((img) => {
    img.loading = "eager";
    return img.complete ? null : new Promise((done) => { img.onload = img.onerror = done; });
}))"""


def load_every_image(page: Any) -> None:
    page.evaluate(LOAD_IMAGES)


def section(page: Any, lineup: Lineup, folder: str) -> Any:
    return page.locator(f"section#q-{lineup.query(folder)['id']}")


def confirm_rank(query: dict[str, Any], identity: str) -> int:
    """The rank of ``identity`` among the query's candidates, else 1 (the test then confirms the top one)."""
    return next((c["rank"] for c in query["candidates"] if c["identity"] == identity), 1)


def export(page: Any, how: str = "click") -> str:
    with page.expect_download() as info:
        if how == "click":
            page.click("#export")
        else:
            page.keyboard.press("Control+s")
    download = info.value
    assert download.suggested_filename == DECISIONS_CSV
    return Path(download.path()).read_text(encoding="utf-8")


@dataclass
class Decided:
    csv_text: str
    csv_path: Path
    expected: str
    identities: dict[str, str]  # encounter folder -> the individual its photos went to (confirm or named new)
    screenshot: Path


def expected_csv(lineup: Lineup, decisions: dict[str, tuple[str, str, str]]) -> str:
    """decisions.csv as the page must write it: one row per photo of each decided query, in query order."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(DECISION_COLUMNS)
    for query in sorted(lineup.document["queries"], key=lambda q: q["id"]):
        folder = Path(query["encounter"]).name
        if folder not in decisions:
            continue
        decision, identity, note = decisions[folder]
        for photo in query["photos"]:
            cells = [photo["path"], query["encounter"], decision, identity, note, CLOCK_ISO, str(query["id"])]
            writer.writerow([spreadsheet_text(cell) for cell in cells])
    return buffer.getvalue()


@pytest.fixture(scope="module")
def decided(lineup: Lineup, browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Decided:
    """Decide by clicks and keys, reload, export: the page's decisions.csv (and a screenshot)."""
    world = lineup.world
    seen = open_page(browser, lineup.url)
    page = seen.page
    # enc1: click "Confirm N" on the right individual's card
    rank1 = confirm_rank(lineup.query("enc1"), world.truth("enc1"))
    section(page, lineup, "enc1").locator(f".cand[data-rank='{rank1}'] button.confirm").click()
    # enc2: select the query, then its digit key
    rank2 = confirm_rank(lineup.query("enc2"), world.truth("enc2"))
    section(page, lineup, "enc2").locator(".qhead").click()
    page.keyboard.press(str(rank2))
    # enc3: a new individual with a name (typed first, then the button)
    section(page, lineup, "enc3").locator("input.name").fill(STELLA)
    section(page, lineup, "enc3").locator("button.new").click()
    # enc4: a new individual without a name, by key (n focuses the name field; Esc leaves it empty)
    section(page, lineup, "enc4").locator(".qhead").click()
    page.keyboard.press("n")
    page.keyboard.press("Escape")
    # the hostile one: unsure, with a note
    hostile = section(page, lineup, HOSTILE_FOLDER)
    hostile.locator("button.unsure").click()
    hostile.locator("input.note").fill(NOTE)
    # enc6 stays undecided
    assert page.locator("section.query.decided").count() == 5
    assert page.text_content("#progress") == f"5 of {len(lineup.document['queries'])} decided"

    page.reload()  # decisions live in localStorage, under this lineup's key
    page.wait_for_selector("section.query")
    assert page.locator("section.query.decided").count() == 5
    assert section(page, lineup, HOSTILE_FOLDER).locator("input.note").input_value() == NOTE
    assert section(page, lineup, "enc3").locator("input.name").input_value() == STELLA
    text = export(page)

    # a screenshot of the decided lineup, every thumbnail loaded
    load_every_image(page)
    page.evaluate("window.scrollTo(0, 0)")
    shot = tmp_path_factory.mktemp("lineup-shot") / "lineup.png"
    page.screenshot(path=str(shot), full_page=True)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "lineup.png")
    assert not seen.problems(), seen.problems()
    page.context.close()

    identities = {
        "enc1": lineup.query("enc1")["candidates"][rank1 - 1]["identity"],
        "enc2": lineup.query("enc2")["candidates"][rank2 - 1]["identity"],
        "enc3": STELLA,
    }
    expected = expected_csv(
        lineup,
        {
            "enc1": ("confirm", identities["enc1"], ""),
            "enc2": ("confirm", identities["enc2"], ""),
            "enc3": ("new", STELLA, ""),
            "enc4": ("new", "", ""),
            HOSTILE_FOLDER: ("unsure", "", NOTE),
        },
    )
    path = lineup.out / DECISIONS_CSV
    path.write_text(text, encoding="utf-8")
    return Decided(text, path, expected, identities, shot)


# -- the page ----------------------------------------------------------------------------------------------


def test_page_loads_offline_without_console_errors_and_shows_every_query_and_candidate(
    lineup: Lineup, browser: Any
) -> None:
    seen = open_page(browser, lineup.url)
    page = seen.page
    queries = lineup.document["queries"]
    assert page.locator("section.query").count() == len(queries) == 6
    assert page.locator(".cand").count() == len(queries) * TOP_K
    for query in queries:
        cards = page.locator(f"section#q-{query['id']} .cand")
        assert cards.count() == TOP_K
        assert cards.locator(".identity").all_text_contents() == [c["identity"] for c in query["candidates"]]
        assert page.text_content(f"section#q-{query['id']} .badge") == query["verdict"]
    # the ones that need a person first
    shown = page.eval_on_selector_all("section.query", "nodes => nodes.map((n) => n.dataset.verdict)")
    assert shown == sorted(shown, key=VERDICT_ORDER.index)
    # every thumbnail is a local file that loads
    load_every_image(page)
    broken = page.eval_on_selector_all(
        "img", "nodes => nodes.filter((n) => !n.naturalWidth).map((n) => n.src)"
    )
    assert broken == []
    sources = page.eval_on_selector_all("img", "nodes => nodes.map((n) => n.src)")
    assert sources and all(src.startswith("file://") and "/thumbs/" in src for src in sources)
    # filters: switching a verdict off hides its queries
    verdict = queries[0]["verdict"]
    page.click(f"#filters button[data-verdict='{verdict}']")
    hidden = sum(q["verdict"] == verdict for q in queries)
    assert page.locator("section.query:visible").count() == len(queries) - hidden
    page.click("#filters button[data-verdict='*']")
    assert page.locator("section.query:visible").count() == len(queries)
    assert not seen.problems(), seen.problems()
    page.context.close()


def test_clicks_and_keys_export_exactly_the_expected_decisions_csv(decided: Decided) -> None:
    assert decided.csv_text == decided.expected
    rows = list(csv.DictReader(io.StringIO(decided.csv_text)))
    assert [row["decision"] for row in rows] == [
        "unsure",
        "confirm",
        "confirm",
        "confirm",
        "new",
        "new",
        "new",
    ]


def test_decisions_are_kept_per_lineup_and_exported_by_key_too(
    lineup: Lineup, decided: Decided, browser: Any, tmp_path: Path
) -> None:
    """Another lineup in the same browser starts empty (its own key); the first still has its decisions,
    and Ctrl+S exports them."""
    other = tmp_path / "other"
    assert run("identify", lineup.world.dive, "--catalogue", lineup.world.catalogue, "--out", other) == 0
    context = browser.new_context(accept_downloads=True)
    first = open_page(browser, lineup.url, context)  # a context of its own: none of the module's decisions
    assert first.page.locator("section.query.decided").count() == 0
    first.page.locator(".cand[data-rank='1'] button.confirm").first.click()
    assert first.page.locator("section.query.decided").count() == 1
    second = open_page(browser, (other / LINEUP_HTML).as_uri(), context)
    assert second.page.locator("section.query.decided").count() == 0
    first.page.reload()
    first.page.wait_for_selector("section.query")
    assert first.page.locator("section.query.decided").count() == 1
    first.page.locator("section.query").first.click()
    text = export(first.page, how="key")
    assert len(list(csv.DictReader(io.StringIO(text)))) >= 1
    assert not first.problems() and not second.problems()
    context.close()


def test_hostile_names_render_as_text(lineup: Lineup, browser: Any) -> None:
    seen = open_page(browser, lineup.url)
    page = seen.page
    query = lineup.query(HOSTILE_FOLDER)
    photo = query["photos"][0]["path"]
    assert "</script>" in photo and Path(photo).name == HOSTILE_FILE
    hostile = section(page, lineup, HOSTILE_FOLDER)
    assert hostile.locator(".encounter").text_content() == query["encounter"]
    assert hostile.locator(".qname").text_content().startswith(HOSTILE_FILE)
    assert hostile.locator("img").first.get_attribute("alt") == HOSTILE_FILE
    names = page.eval_on_selector_all(".identity", "nodes => nodes.map((n) => n.textContent)")
    assert HOSTILE_IDENTITY in names
    # nothing of the names became markup or ran
    assert page.locator("script").count() == 2  # the data block and the page's own script
    assert page.locator("img[src='x'], i, b").count() == 0
    assert seen.dialogs == []
    assert page.evaluate("typeof window.alert") == "function"
    assert not seen.problems(), seen.problems()
    page.context.close()


def test_a_screenshot_is_kept(decided: Decided) -> None:
    assert decided.screenshot.stat().st_size > 10_000
    assert (ARTIFACTS / "lineup.png").is_file()


# -- the round trip ----------------------------------------------------------------------------------------


def counts(catalogue: Path) -> tuple[int, ...]:
    with sqlite3.connect(catalogue) as con:
        return con.execute(
            "SELECT (SELECT count(*) FROM photos), (SELECT count(*) FROM individuals), "
            "(SELECT count(*) FROM embeddings), (SELECT count(*) FROM decisions)"
        ).fetchone()


def test_round_trip_apply_identify_again_and_capture_histories(
    lineup: Lineup, decided: Decided, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = lineup.world
    before = counts(world.catalogue)
    capsys.readouterr()
    assert run("catalogue", "apply", "--catalogue", world.catalogue, "--decisions", decided.csv_path) == 0
    said = capsys.readouterr().out
    assert "6 photo(s) added" in said and "1 unsure recorded" in said and "2 new individual(s)" in said
    generated = f"NEW-{CLOCK:%Y%m%d}-1"
    assert generated in said
    after = counts(world.catalogue)
    assert after == (before[0] + 6, before[1] + 2, before[2] + 6, before[3] + 7)

    # the same file again changes nothing
    assert run("catalogue", "apply", "--catalogue", world.catalogue, "--decisions", decided.csv_path) == 0
    assert "nothing changed" in capsys.readouterr().out
    assert counts(world.catalogue) == after

    # the log lists every decision
    assert run("catalogue", "log", "--catalogue", world.catalogue) == 0
    log = capsys.readouterr().out.splitlines()
    assert len(log) == 1 + 7 and log[0].split()[:3] == ["time", "source", "decision"]
    assert sum("unsure" in line for line in log[1:]) == 1 and sum(generated in line for line in log) == 1

    # identify again: the decided photos are catalogue photos now, of the individual they were given to
    out = tmp_path / "again"
    assert run("identify", world.dive, "--catalogue", world.catalogue, "--out", out, "--top-k", TOP_K) == 0
    document = json.loads((out / MATCHES_JSON).read_text())
    went_to = {**decided.identities, "enc4": generated}
    for folder, identity in went_to.items():
        for photo in world.photos(folder):
            (query,) = [q for q in document["queries"] if q["photos"][0]["path"] == str(photo)]
            assert query["verdict"] == "known-photo", (folder, query["verdict"])
            assert [k["identity"] for k in query["known"]] == [identity]
            assert query["known"][0]["relative_path"] == photo.relative_to(world.root).as_posix()
    for folder in (HOSTILE_FOLDER, "enc6"):  # unsure and undecided: still to be identified
        (query,) = [q for q in document["queries"] if Path(q["encounter"]).name == folder]
        assert query["verdict"] != "known-photo" and len(query["candidates"]) == TOP_K
    assert set(went_to.values()) <= {c["identity"] for q in document["queries"] for c in q.get("known", [])}

    # the capture histories have the new individuals and the dive
    captures = tmp_path / "captures.csv"
    assert (
        run("catalogue", "captures", "--catalogue", world.catalogue, "--by", "outing", "--out", captures) == 0
    )
    table = pd.read_csv(captures, dtype={"individual": str}).set_index("individual")
    assert spreadsheet_text(STELLA) in table.index  # marked as text for spreadsheets, read back as it was
    table.index = table.index.map(plain_text)
    starts = [parse_folder_date(outing) for outing in table.columns]
    assert DIVE in table.columns and starts == sorted(starts)  # outings in time order
    for identity in set(went_to.values()):
        assert table.loc[identity, DIVE] == 1
    assert table.loc[STELLA].sum() == 1 and table.loc[generated].sum() == 1
    assert table[DIVE].sum() == len(set(went_to.values()))
    sightings = pd.read_csv(tmp_path / "captures.sightings.csv", dtype=str)
    stella = sightings[sightings["individual"].map(plain_text) == STELLA]
    assert stella[["date", "outing", "photos"]].values.tolist() == [[DIVE, DIVE, "2"]]


def test_a_photo_whose_name_is_not_utf8_is_exported_by_its_file_uri_and_applies(
    lineup: Lineup, browser: Any, tmp_path: Path
) -> None:
    """A browser can only write such a name as U+FFFD: the page exports the file: URI apply reads back."""
    world = lineup.world
    folder = world.root / "dives" / "2024-06-09" / os.fsdecode(b"enc\xe9")
    photo = write_image(folder / os.fsdecode(b"IMG_\xff.jpg"), (40, 32), seed=900)
    out = tmp_path / "odd"
    assert run("identify", folder, "--catalogue", world.catalogue, "--out", out, "--allow-uncalibrated") == 0
    seen = open_page(browser, (out / LINEUP_HTML).as_uri())
    seen.page.locator(".cand[data-rank='1'] button.confirm").first.click()
    text = export(seen.page)
    assert not seen.problems(), seen.problems()
    seen.page.context.close()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(row["query"], row["encounter"]) for row in rows] == [(photo.as_uri(), folder.as_uri())]
    catalogue = tmp_path / "archive.sqlite"  # a copy: the module's catalogue stays as the other tests expect
    with sqlite3.connect(world.catalogue) as source, sqlite3.connect(catalogue) as target:
        source.backup(target)
    decisions = tmp_path / DECISIONS_CSV
    decisions.write_text(text, encoding="utf-8")
    try:
        assert run("catalogue", "apply", "--catalogue", catalogue, "--decisions", decisions) == 0
        copy = world.root / ".incoming" / "2024-06-09" / "enc\ufffd" / "IMG_\ufffd.jpg"
        assert copy.read_bytes() == photo.read_bytes()
    finally:
        shutil.rmtree(world.root / ".incoming", ignore_errors=True)
        shutil.rmtree(folder.parent)
