"""``python -m megastarid.evaluate``: evaluate a checkpoint (or saved embeddings) on star_dataset.

Writes the star_* report files of DESIGN §2 into ``--output-dir`` (default: the checkpoint's or the
embeddings file's folder). Report files of an earlier evaluation there are replaced: they are
derived from the checkpoint and the data, and each run says so in its log. Checkpoints and
training files are never touched.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from megastarid.core.console import run_main
from megastarid.core.errors import UserError
from megastarid.core.files import check_writable_folder
from megastarid.core.options import Ints
from megastarid.core.parsing import parse_options
from megastarid.data.options import SplitOptions, StarDataOptions, WildlifeOptions
from megastarid.data.sources import load_star_catalogue, load_wildlife_catalogue
from megastarid.data.splits import SplitPlan, split_catalogue
from megastarid.data.synth import ensure_synthetic
from megastarid.evaluation.embed import NonFiniteEmbeddingError, resolve_tta
from megastarid.evaluation.embeddings import load_embeddings
from megastarid.evaluation.options import CalibrationOptions, EmbeddingOptions
from megastarid.evaluation.reports import DEFAULT_KS
from megastarid.evaluation.star import evaluate_embeddings, evaluate_star
from megastarid.evaluation.wildlife import evaluate_wildlife
from megastarid.models.checkpoints import load_model_from_checkpoint
from megastarid.models.device import resolve_device

log = logging.getLogger(__name__)

DESCRIPTION = (
    "Evaluate a checkpoint (or saved embeddings) on star_dataset's test side: per-query ranks, CMC@K and "
    "mAP, per identity and per outing folder, the open-set report (known or new?) with its calibration "
    "fitted on validation, plots and the embeddings saved; with --wildlife-root, also on WildlifeReID-10k "
    "(its test split against its train split)."
)


@dataclass
class EvaluateOptions(StarDataOptions, SplitOptions, CalibrationOptions, WildlifeOptions, EmbeddingOptions):
    """What to evaluate and how."""

    checkpoint: Path | None = None
    """model checkpoint (best.pth, last.pth); give it or --embeddings"""
    embeddings: Path | None = None
    """star_embeddings.npz to recompute the numbers from (no model needed)"""
    output_dir: Path | None = None
    """report folder (None: the checkpoint's or embeddings' folder); earlier reports there are replaced"""
    ks: Ints = DEFAULT_KS
    """CMC ranks, comma-separated"""
    rerank: bool = False
    """k-reciprocal re-ranking (galleries that fit in memory)"""
    image_size: int | None = None
    """evaluation image size in pixels (None: the checkpoint's)"""
    allow_seen_identities: bool = False
    """score an open split even though the checkpoint trained on some of the individuals it treats as new
    (the summary then says how many): by default that is refused, as the scores would flatter the model"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.checkpoint is None and self.embeddings is None:
            raise UserError("say what to evaluate: --checkpoint PATH or --embeddings FILE")
        if self.checkpoint is not None and self.embeddings is not None:
            raise UserError("--checkpoint and --embeddings exclude each other: give one")
        if self.embeddings is not None:
            needs_model = {
                "--tta": self.tta != "auto",
                "--wildlife-root": self.wildlife_root,
                "--image-size": self.image_size,
            }
            for option, value in needs_model.items():
                if value:
                    raise UserError(f"{option} needs --checkpoint: saved embeddings cannot be re-embedded")
        if (self.wildlife_datasets or self.wildlife_species) and self.wildlife_root is None:
            raise UserError("--wildlife-datasets and --wildlife-species need --wildlife-root")
        if self.image_size is not None and self.image_size < 1:
            raise UserError(f"--image-size must be positive, got {self.image_size}")
        if not self.ks or min(self.ks) < 1:
            raise UserError(f"--ks: ranks must be positive integers, got {','.join(map(str, self.ks))!r}")
        self.ks = tuple(sorted(set(self.ks)))


def star_catalogue(cfg: EvaluateOptions) -> pd.DataFrame:
    if cfg.star_root is None and cfg.star_csv is not None:
        raise UserError("--star-csv needs --star-root (the folder its paths are relative to)")
    root = cfg.star_root if cfg.star_root is not None else ensure_synthetic("stars")
    return load_star_catalogue(root, cfg.star_csv, cfg.split_plan())


def seen_new_identities(catalogue: pd.DataFrame, train_config: dict) -> list[str]:
    """The individuals this split treats as new (test side only) that the checkpoint trained on: its own
    split of the same catalogue, rebuilt from the plan recorded in its config. A checkpoint that never saw
    star_dataset (pre-training) has seen none."""
    known = set(catalogue.loc[catalogue["split"].isin(["train", "val"]), "identity"])
    new = set(catalogue.loc[catalogue["split"] == "test", "identity"]) - known
    if not new or "split" not in train_config:
        return []
    recorded = {key: train_config[key] for key in ("gallery_fraction", "new_fraction", "val_fraction")}
    cut = train_config.get("cut_date")
    plan = SplitPlan(train_config["split"], cut_date=None if cut is None else pd.Timestamp(cut), **recorded)
    trained = split_catalogue(catalogue.drop(columns="split").assign(split=""), plan)
    return sorted(new & set(trained.loc[trained["split"] == "train", "identity"]))


def _announce(out_dir: Path) -> None:
    log.info("writing evaluation reports to %s (report files of an earlier evaluation are replaced)", out_dir)


def run(cfg: EvaluateOptions) -> dict:
    """Evaluate as ``cfg`` says; return the star summary (with ``"wildlife"`` when validated on it)."""
    device = resolve_device(cfg.device)
    source = cfg.checkpoint if cfg.checkpoint is not None else cfg.embeddings
    assert source is not None
    out_dir = cfg.output_dir if cfg.output_dir is not None else source.parent
    options = {key: str(value) if isinstance(value, Path) else value for key, value in asdict(cfg).items()}
    if cfg.embeddings is not None:
        embeddings = load_embeddings(cfg.embeddings)
        check_writable_folder(out_dir, "--output-dir")
        _announce(out_dir)
        return evaluate_embeddings(
            embeddings,
            out_dir,
            cfg.ks,
            options=options,
            rerank=cfg.rerank,
            device=device,
            openset=cfg.openset_settings(),
            embeddings_file=str(cfg.embeddings),
        )
    assert cfg.checkpoint is not None  # without --embeddings, __post_init__ requires it
    model, train_config = load_model_from_checkpoint(cfg.checkpoint, device)
    catalogue = star_catalogue(cfg)
    seen = seen_new_identities(catalogue, train_config)
    if seen and not cfg.allow_seen_identities:
        raise UserError(
            f"--checkpoint {cfg.checkpoint} trained on {len(seen)} of the individuals that --split "
            f"{cfg.split} treats as new (e.g. {seen[0]}): evaluate with the split it was trained with "
            f"(--split {train_config['split']}) or pass --allow-seen-identities"
        )
    if seen:
        log.warning("%d individuals scored as new were seen in training (--allow-seen-identities)", len(seen))
    if cfg.image_size is None and "image_size" not in train_config:
        raise UserError(f"checkpoint {cfg.checkpoint} does not say its image size: pass --image-size")
    check_writable_folder(out_dir, "--output-dir")
    _announce(out_dir)
    image_size = cfg.image_size or int(train_config["image_size"])
    options["image_size"] = image_size
    options["train_config"] = train_config
    options["seen_new_identities"] = len(seen)  # > 0 only with --allow-seen-identities
    summary = evaluate_star(
        model,
        catalogue,
        out_dir,
        image_size,
        device,
        cfg.ks,
        cfg.checkpoint,
        options,
        tta=resolve_tta(cfg.tta, "star"),
        rerank=cfg.rerank,
        openset=cfg.openset_settings(),
        batch_size=cfg.batch_size,
        num_workers=cfg.workers,
    )
    if cfg.wildlife_root is not None:
        wildlife = load_wildlife_catalogue(
            cfg.wildlife_root, datasets=cfg.wildlife_datasets or None, species=cfg.wildlife_species or None
        )
        summary["wildlife"] = evaluate_wildlife(
            model,
            wildlife,
            image_size,
            device,
            cfg.ks,
            out_dir,
            cfg.checkpoint,
            options,
            tta=resolve_tta(cfg.tta, "wildlife"),
            batch_size=cfg.batch_size,
            num_workers=cfg.workers,
        )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_options(EvaluateOptions, argv, "megastarid evaluate", DESCRIPTION)
    try:
        run(cfg)
    except NonFiniteEmbeddingError as err:  # the checkpoint's fault, not the photos'
        raise UserError(f"checkpoint {cfg.checkpoint}: {err}") from None
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
