"""``megastarid identify``: name the sea stars in new photos against a catalogue of known individuals.

Writes ``matches.csv``, ``matches.json`` and the lineup page ``lineup.html`` (with its ``thumbs/``) into
``--out``, replacing an earlier set there whole (``megastarid.identification.outputs``), and prints a short
table and the lineup's path. See ``megastarid.identification.identify`` for the encounter pooling rule and
the verdicts.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from megastarid.core.console import run_main
from megastarid.core.errors import UserError
from megastarid.core.parsing import parse_options
from megastarid.core.runfiles import CALIBRATION_JSON, LINEUP_HTML, MATCHES_CSV, MATCHES_JSON
from megastarid.evaluation.openset import Calibration
from megastarid.identification.build import running_build
from megastarid.identification.calibrate import stored_calibration
from megastarid.identification.catalogue_model import catalogue_embedder
from megastarid.identification.identify import collect_photos, identify_photos, warn_outside_root
from megastarid.identification.matches import matches_document, terminal_table
from megastarid.identification.options import CatalogueModelOptions
from megastarid.identification.outputs import claimed_output_folder, write_outputs
from megastarid.identification.store import CatalogueStore
from megastarid.identification.store_index import load_index
from megastarid.identification.store_open import open_catalogue
from megastarid.identification.store_schema import CALIBRATION, MODEL
from megastarid.models.device import resolve_device

log = logging.getLogger(__name__)

DESCRIPTION = (
    "Identify new photos against a catalogue: for each encounter (the photos of one folder, or each photo "
    "alone) the top individuals with their calibrated probability and a verdict (match, uncertain, new, "
    "known-photo); writes matches.csv, matches.json and lineup.html, the page to confirm them."
)


@dataclass(kw_only=True)
class IdentifyOptions(CatalogueModelOptions):
    """What to identify, against which catalogue, and where the answers go."""

    photos: tyro.conf.Positional[Annotated[tuple[Path, ...], tyro.conf.arg(metavar="PHOTO|DIR")]]
    """new photos, or folders of them (searched recursively)"""
    out: Path
    """output folder for matches.csv, matches.json and lineup.html (an earlier set there is replaced whole)"""
    top_k: int = 5
    """candidate individuals per encounter"""
    encounter_by: Literal["folder", "none"] = "folder"
    """folder: the photos of one folder are one animal on one dive and are pooled; none: each photo alone"""
    allow_uncalibrated: bool = False
    """without a calibration, rank anyway (verdict 'unverified', no probabilities) instead of refusing"""

    def __post_init__(self) -> None:
        if not self.photos:
            raise UserError("give the new photos (or folders of them) to identify")
        if self.top_k < 1:
            raise UserError(f"--top-k must be >= 1, got {self.top_k}")
        super().__post_init__()


def catalogue_ready(store: CatalogueStore, options: IdentifyOptions) -> tuple[dict, Calibration | None]:
    """The catalogue's model record and calibration; a catalogue that cannot identify yet is one line saying
    why: a build that has not finished (wait for it), no photos, or no calibration (how to get one)."""
    record = store.meta(MODEL)
    calibration = stored_calibration(store)
    building = running_build(store)
    if building is not None and (record is None or not store.num_photos() or calibration is None):
        raise UserError(
            f"catalogue {options.catalogue}: a build started {building.get('started')} (pid "
            f"{building.get('pid')} on {building.get('host')}) has not finished: wait for it to end, then "
            "run identify again"
        )
    if record is None or not store.num_photos():
        raise UserError(f"catalogue {options.catalogue} holds no photos yet (megastarid catalogue build)")
    if calibration is None and not options.allow_uncalibrated:
        reason = (store.meta(CALIBRATION) or {}).get("reason") or "none was given or fitted"
        raise UserError(
            f"catalogue {options.catalogue} has no calibration ({reason}): rebuild it with --calibration "
            f"FILE (a trained run's {CALIBRATION_JSON}) or with photos from more outings, or pass "
            "--allow-uncalibrated for rankings without verdicts"
        )
    return record, calibration


def identify(options: IdentifyOptions) -> int:
    """Check everything that can be wrong before the model loads; identify; write and print the answers."""
    device = resolve_device(options.device)
    with claimed_output_folder(options.out, options.photos) as out:
        with open_catalogue(options.catalogue) as store, store.snapshot():  # one state of it throughout
            photos = collect_photos(options.photos)
            record, calibration = catalogue_ready(store, options)
            warn_outside_root(photos, store.root)
            index = load_index(store)
            embedder = catalogue_embedder(record, options, device)
            log.info("identifying %d photo(s) against %d individuals", len(photos), len(index.names))
            result = identify_photos(
                store, index, embedder, photos, options.top_k, options.encounter_by, calibration
            )
            document = matches_document(result, store, index)
        written = write_outputs(document, out)
    print(terminal_table(document))
    print(f"wrote {written[MATCHES_CSV]} and {written[MATCHES_JSON]}")
    print(f"lineup: {written[LINEUP_HTML]} (open it in a browser to confirm the matches)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return identify(parse_options(IdentifyOptions, argv, "megastarid identify", DESCRIPTION))


if __name__ == "__main__":
    sys.exit(run_main(main))
