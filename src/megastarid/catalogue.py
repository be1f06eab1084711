"""``megastarid catalogue <build|info|apply|log|captures|evaluate|calibrate>``: the catalogue of known
individuals (one SQLite file).

``build`` embeds every photo of a star_dataset tree or CSV with a trained checkpoint (or, zero-shot, a
bare backbone) and stores the open-set calibration; reruns only embed new or changed photos.
``info`` says what a catalogue holds. ``apply`` brings the lineup's decisions (decisions.csv) into it,
``log`` lists the decisions applied, ``captures`` writes capture histories for mark-recapture;
``evaluate`` scores identify's proposals against those decisions, ``calibrate`` refits τ and P on them.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from megastarid.core.console import run_main
from megastarid.core.errors import UserError
from megastarid.core.options import Options
from megastarid.core.parsing import parse_options
from megastarid.core.runfiles import CALIBRATION_JSON
from megastarid.data.options import StarDataOptions
from megastarid.data.readers import read_star_csv, read_star_tree
from megastarid.data.synth import ensure_synthetic
from megastarid.evaluation.embed import TTA, resolve_tta
from megastarid.evaluation.openset import Calibration
from megastarid.evaluation.options import EmbeddingOptions
from megastarid.identification.build import COMMIT_EVERY, build_catalogue, build_running
from megastarid.identification.calibrate import (
    calibration_tta,
    check_embedded_alike,
    describe,
    read_calibration,
    update_calibration,
)
from megastarid.identification.captures import (
    BY,
    capture_histories,
    catalogue_photos,
    check_captures_out,
    write_captures,
)
from megastarid.identification.catalogue_model import catalogue_embedder
from megastarid.identification.decision_history import (
    calibrate_from_decisions,
    decided_answers,
    evaluate_decisions,
    summary_lines,
    write_evaluation,
)
from megastarid.identification.decisions_apply import apply_decisions
from megastarid.identification.decisions_log import decision_log, log_lines
from megastarid.identification.info_text import info_lines
from megastarid.identification.options import CatalogueModelOptions
from megastarid.identification.store_open import open_catalogue
from megastarid.identification.store_schema import MODEL
from megastarid.models.device import resolve_device
from megastarid.models.embedder import Embedder, backbone_embedder, checkpoint_embedder

log = logging.getLogger(__name__)

BUILD_DESCRIPTION = (
    "Build or update a catalogue of known individuals: embed every photo of a star_dataset tree or CSV with "
    "a trained checkpoint (or, zero-shot, a timm backbone's pooled features) into one SQLite file, with the "
    "open-set calibration identify needs. Reruns embed only new or changed photos and drop vanished ones; a "
    "killed build resumes where it stopped."
)
INFO_DESCRIPTION = "Print what a catalogue holds: individuals, photos, outings, dates, model and calibration."


@dataclass(kw_only=True)
class BuildOptions(EmbeddingOptions, StarDataOptions):
    """What to catalogue, with which model."""

    catalogue: Path
    """the catalogue file (SQLite), created when missing"""
    checkpoint: Path | None = None
    """trained model (best.pth); its run's calibration.json beside it is used when present"""
    backbone: str | None = None
    """zero-shot instead of --checkpoint: a timm backbone (e.g. hf-hub:BVRA/MegaDescriptor-T-224) whose
    pooled, L2-normalised features are the embeddings; needs --pretrained or --backbone-weights"""
    pretrained: bool = False
    """with --backbone: download its published weights"""
    backbone_weights: Path | None = None
    """with --backbone: local weights file (a state dict), works offline"""
    image_size: int | None = None
    """image size in pixels (None: the checkpoint's training size, or the backbone's default)"""
    calibration: Path | None = None
    """calibration.json to store (default: the checkpoint's, else one fitted on the catalogue itself)"""
    accept: float | None = None
    """probability at or above which identify calls a top individual a match (default: the calibration's)"""
    rebuild: bool = False
    """empty a catalogue built with another model and embed every photo again"""
    commit_every: int = COMMIT_EVERY
    """photos per transaction (a killed build loses at most one batch)"""
    wait: bool = False
    """when another build, apply or calibrate is writing to the catalogue, wait for it to end, not stop"""

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.backbone is None):
            raise UserError("give one of --checkpoint PATH (a trained model) or --backbone NAME (zero-shot)")
        if self.backbone is None and (self.pretrained or self.backbone_weights is not None):
            raise UserError("--pretrained and --backbone-weights go with --backbone (zero-shot)")
        if self.backbone is not None and not self.pretrained and self.backbone_weights is None:
            raise UserError(
                f"--backbone {self.backbone} needs --pretrained or --backbone-weights FILE (random weights "
                "identify nothing)"
            )
        if self.star_csv is not None and self.star_root is None:
            raise UserError("--star-csv needs --star-root (the folder its paths are relative to)")
        if self.commit_every < 1:
            raise UserError(f"--commit-every must be >= 1, got {self.commit_every}")
        if self.image_size is not None and self.image_size < 1:
            raise UserError(f"--image-size must be positive, got {self.image_size}")
        if self.accept is not None and not 0 < self.accept <= 1:
            raise UserError(f"--accept must be in (0, 1], got {self.accept}")
        super().__post_init__()


def catalogue_tta(path: Path) -> TTA | None:
    """The TTA an existing catalogue's photos were embedded with (None: no catalogue there yet)."""
    if not path.is_file() or not path.stat().st_size:
        return None
    with open_catalogue(path) as store:
        model = store.meta(MODEL)
    fingerprint = model.get("fingerprint") if isinstance(model, dict) else None
    return fingerprint.get("tta") if isinstance(fingerprint, dict) else None


def build_tta(options: BuildOptions, calibration: Calibration | None, stored: TTA | None) -> TTA:
    """``--tta auto`` for a build: the calibration's (its threshold holds for embeddings made that way),
    else the ``stored`` catalogue's own (it grows alike; None for a new one or a rebuild), else the star
    photos' default."""
    if options.tta != "auto":
        return options.tta
    if (fitted := calibration_tta(calibration)) is not None:
        return fitted
    if stored is not None:
        return stored
    return resolve_tta("auto", "star")


def make_embedder(options: BuildOptions, tta: TTA) -> Embedder:
    device = resolve_device(options.device)
    if options.checkpoint is not None:
        return checkpoint_embedder(
            options.checkpoint,
            device,
            tta=tta,
            image_size=options.image_size,
            batch_size=options.batch_size,
            num_workers=options.workers,
        )
    assert options.backbone is not None
    return backbone_embedder(
        options.backbone,
        device,
        options.pretrained,
        options.backbone_weights,
        tta=tta,
        image_size=options.image_size,
        batch_size=options.batch_size,
        num_workers=options.workers,
    )


def build(options: BuildOptions) -> int:
    """Read the photos, embed what is new, store the calibration, say what happened."""
    root = options.star_root
    if root is None:
        root = ensure_synthetic("stars")
        log.info("no --star-root: cataloguing the built-in synthetic stars at %s", root)
    table = read_star_csv(options.star_csv, root) if options.star_csv is not None else read_star_tree(root)
    given, source, calibration_path = None, "", None
    if options.calibration is not None:
        given, source, calibration_path = read_calibration(options.calibration), "file", options.calibration
    elif options.checkpoint is not None and (options.checkpoint.parent / CALIBRATION_JSON).is_file():
        calibration_path = options.checkpoint.parent / CALIBRATION_JSON
        given, source = read_calibration(calibration_path), "checkpoint"
    stored = None if options.rebuild else catalogue_tta(options.catalogue)  # a rebuild mends a damaged one
    embedder = make_embedder(options, build_tta(options, given, stored))
    if given is not None:
        assert calibration_path is not None
        check_embedded_alike(given, calibration_path, embedder.fingerprint)
    with open_catalogue(options.catalogue, create=True, wait=options.wait) as store, build_running(store):
        report = build_catalogue(store, table, root, embedder, options.rebuild, options.commit_every)
        entry = update_calibration(store, given, source, calibration_path, report.changed, options.accept)
    log.info("catalogue %s: %s", options.catalogue, report.line())
    if entry.get("calibration"):
        log.info("calibration: %s", describe(entry))
    else:
        log.warning(
            "no calibration: %s; identify needs one: rebuild with --calibration FILE (a trained run's %s) or "
            "with photos from more outings",
            entry.get("reason"),
            CALIBRATION_JSON,
        )
    return 0


def build_main(argv: Sequence[str] | None = None) -> int:
    return build(parse_options(BuildOptions, argv, "megastarid catalogue build", BUILD_DESCRIPTION))


@dataclass(kw_only=True)
class InfoOptions:
    """Which catalogue to describe."""

    catalogue: Path
    """the catalogue file"""
    json: bool = False
    """print the facts as JSON"""


def info(options: InfoOptions) -> int:
    with open_catalogue(options.catalogue) as store:
        summary = store.summary()
    print(json.dumps(summary, indent=2) if options.json else "\n".join(info_lines(summary)))
    return 0


def info_main(argv: Sequence[str] | None = None) -> int:
    return info(parse_options(InfoOptions, argv, "megastarid catalogue info", INFO_DESCRIPTION))


APPLY_DESCRIPTION = (
    "Apply the lineup's decisions (decisions.csv, exported by lineup.html) to a catalogue, without "
    "retraining: confirmed photos join their individual (embedded with the catalogue's model), new "
    "individuals are made (the given name, else NEW-<YYYYMMDD>-<n>), unsure ones are only recorded. Every "
    "decision goes into the catalogue's log; any bad row and nothing of the file is applied; an older "
    "decision never overrides a newer one, so applying a file again changes nothing."
)
LOG_DESCRIPTION = (
    "List the decisions applied to a catalogue: time, source file and line, decision, photo, individual."
)
EVALUATE_DESCRIPTION = (
    "Score identify's proposals against the lab's own decisions (applied with --matches): CMC@1/5 of the "
    "confirmed individual, false-match rate, precision and recall of new, ECE of P, each with a 95% "
    "bootstrap interval over individuals; overall and per model, as JSON, CSV and a reliability plot."
)
CALIBRATE_DESCRIPTION = (
    "Refit tau and P on the lab's decisions of the catalogue's model (20 or more decided queries, both "
    "confirmed and new, both right and wrong top individuals); identify then uses it."
)
CAPTURES_DESCRIPTION = (
    "Write capture histories for mark-recapture: the individual x occasion 0/1 matrix (occasions in time "
    "order) as CSV or as a Program MARK .inp file, and its sightings (individual, date, outing, photos) "
    "beside it, captures.csv -> captures.sightings.csv."
)


@dataclass(kw_only=True)
class ApplyOptions(CatalogueModelOptions):
    """Which decisions, into which catalogue; confirmed photos are embedded with its model."""

    decisions: Path
    """decisions.csv exported by the lineup page (query, encounter, decision, identity, note, time, ...)"""
    matches: Path | None = None
    """identify's matches.json the decisions answer: its proposals are logged with them (for evaluate)"""
    wait: bool = False
    """when another build, apply or calibrate is writing to the catalogue, wait for it to end, not stop"""


def apply(options: ApplyOptions) -> int:
    """Apply a decisions file; the model is loaded only when a photo must be embedded."""
    device = resolve_device(options.device)
    with open_catalogue(options.catalogue, write=True, wait=options.wait) as store:
        record = store.meta(MODEL)

        def embedder() -> Embedder:
            if record is None:
                raise UserError(
                    f"catalogue {options.catalogue} records no model (megastarid catalogue build)"
                )
            return catalogue_embedder(record, options, device)

        report = apply_decisions(store, options.decisions, embedder, options.matches)
    print(report.line())
    return 0


def apply_main(argv: Sequence[str] | None = None) -> int:
    return apply(parse_options(ApplyOptions, argv, "megastarid catalogue apply", APPLY_DESCRIPTION))


@dataclass(kw_only=True)
class LogOptions(Options):
    """Which catalogue's decisions to list."""

    catalogue: Path
    """the catalogue file"""
    json: bool = False
    """print every field of every decision as JSON"""


def decisions_log(options: LogOptions) -> int:
    with open_catalogue(options.catalogue) as store:
        entries = decision_log(store)
    if options.json:
        print(json.dumps(entries, indent=2))
    elif not entries:
        print(f"no decisions applied to {options.catalogue} yet (megastarid catalogue apply)")
    else:
        print("\n".join(log_lines(entries)))
    return 0


def log_main(argv: Sequence[str] | None = None) -> int:
    return decisions_log(parse_options(LogOptions, argv, "megastarid catalogue log", LOG_DESCRIPTION))


@dataclass(kw_only=True)
class CapturesOptions(Options):
    """Which catalogue, which occasions, where the histories go."""

    catalogue: Path
    """the catalogue file"""
    out: Path
    """capture histories file (captures.csv, or captures.inp for Program MARK); captures.sightings.csv beside
    it"""
    by: Literal["outing", "day", "month", "year"] = "outing"
    """occasions: each survey outing (ordered by date), or each calendar day, month or year of the photos"""
    format: Literal["auto", "csv", "mark"] = "auto"
    """csv (individual x occasion 0/1 table), mark (Program MARK .inp), or auto: mark for a .inp --out"""
    keep_empty: bool = False
    """keep the days, months or years with no photo at all between the first and last as zero columns"""
    dataset: str | None = None
    """only this dataset's photos (a collection or site), e.g. for one population"""

    def __post_init__(self) -> None:
        assert self.by in BY
        super().__post_init__()


def captures(options: CapturesOptions) -> int:
    fmt = options.format
    if fmt == "auto":
        fmt = "mark" if options.out.suffix.lower() == ".inp" else "csv"
    check_captures_out(options.out)
    with open_catalogue(options.catalogue) as store, store.snapshot():
        photos = catalogue_photos(store, options.dataset)
    if not len(photos):
        where = f" of dataset {options.dataset!r}" if options.dataset is not None else ""
        raise UserError(f"catalogue {options.catalogue} holds no photos{where}")
    histories = capture_histories(photos, options.by, options.keep_empty)
    out, sightings = write_captures(histories, options.out, fmt, str(options.catalogue))
    print(f"{out}: {histories.line()}; {sightings}")
    return 0


def captures_main(argv: Sequence[str] | None = None) -> int:
    return captures(
        parse_options(CapturesOptions, argv, "megastarid catalogue captures", CAPTURES_DESCRIPTION)
    )


@dataclass(kw_only=True)
class EvaluateOptions(Options):
    """Which catalogue's decisions, since when, from which model; where the report goes."""

    catalogue: Path
    """the catalogue file"""
    out: Path
    """folder for decisions_evaluation.json / .csv and decisions_reliability.png"""
    since: str | None = None
    """only decisions made on or after this ISO date or time"""
    model: str | None = None
    """only the proposals of this model (its 12-character key, as in the report's models)"""


def evaluate(options: EvaluateOptions) -> int:
    """Score identify's proposals against the lab's decisions (``decision_history``)."""
    with open_catalogue(options.catalogue) as store, store.snapshot():
        answers = decided_answers(store, options.since, options.model)
        document = evaluate_decisions(answers, store, options.since)
    paths = write_evaluation(document, answers, options.out)
    print("\n".join([*summary_lines(document), *(str(p) for p in paths)]))
    return 0


@dataclass(kw_only=True)
class CalibrateOptions(Options):
    """Which catalogue to recalibrate on its decisions."""

    catalogue: Path
    """the catalogue file"""
    accept: float | None = None
    """P at or above which a verdict is match (default: the current calibration's)"""
    wait: bool = False
    """when another build, apply or calibrate is writing to the catalogue, wait for it to end, not stop"""


def calibrate(options: CalibrateOptions) -> int:
    with open_catalogue(options.catalogue, write=True, wait=options.wait) as store:
        entry = calibrate_from_decisions(store, options.accept)
    print(f"calibration: {describe(entry)}")
    return 0


SUBCOMMANDS = {
    "build": build_main,
    "info": info_main,
    "apply": apply_main,
    "log": log_main,
    "captures": captures_main,
    "evaluate": lambda argv: evaluate(
        parse_options(EvaluateOptions, argv, "megastarid catalogue evaluate", EVALUATE_DESCRIPTION)
    ),
    "calibrate": lambda argv: calibrate(
        parse_options(CalibrateOptions, argv, "megastarid catalogue calibrate", CALIBRATE_DESCRIPTION)
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in SUBCOMMANDS:
        names = "|".join(SUBCOMMANDS)
        print(f"usage: megastarid catalogue {{{names}}} [options]", file=sys.stderr)
        return 0 if args[:1] in (["-h"], ["--help"]) else 2
    return int(SUBCOMMANDS[args[0]](args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(run_main(main))
