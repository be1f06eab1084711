"""``python -m megastarid.evaluate``: evaluate a checkpoint (or saved embeddings) on star_dataset.

Writes the star_* report files of DESIGN §2 into ``--output-dir`` (default: the checkpoint's or the
embeddings file's folder). Report files of an earlier evaluation there are replaced: they are
derived from the checkpoint and the data, and each run says so in its log. Checkpoints and
training files are never touched.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from megastarid.core.console import run_main
from megastarid.core.errors import UserError
from megastarid.data.sources import load_star_catalogue, load_wildlife_catalogue
from megastarid.data.synth import ensure_synthetic
from megastarid.evaluation.embeddings import load_embeddings
from megastarid.evaluation.reports import DEFAULT_KS
from megastarid.evaluation.star import evaluate_embeddings, evaluate_star
from megastarid.evaluation.wildlife import evaluate_wildlife
from megastarid.training.models import load_model_from_checkpoint

log = logging.getLogger(__name__)


@dataclass
class EvaluateConfig:
    """What to evaluate and how; one field per command-line option."""

    checkpoint: Path | None = None
    embeddings: Path | None = None
    star_root: Path | None = None
    star_csv: Path | None = None
    wildlife_root: Path | None = None
    output_dir: Path | None = None
    ks: tuple[int, ...] = DEFAULT_KS
    tta: bool = False
    rerank: bool = False
    image_size: int | None = None
    batch_size: int = 64
    workers: int = 0
    device: str = "auto"


def parse_ks(text: str) -> tuple[int, ...]:
    """``"1,5,10,20"`` -> (1, 5, 10, 20); ranks must be positive integers."""
    try:
        ks = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ranks like 1,5,10,20, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError(f"ranks must be positive integers, got {text!r}")
    return ks


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megastarid evaluate",
        description="Evaluate a checkpoint (or saved embeddings) on star_dataset: per-query ranks, CMC@K and "
        "mAP, per identity and per outing folder, with plots and the embeddings saved.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    add_source, add = source.add_argument, parser.add_argument
    add_source("--checkpoint", type=Path, metavar="PATH", help="model checkpoint (best.pth, last.pth)")
    add_source("--embeddings", type=Path, metavar="FILE", help="star_embeddings.npz (no model needed)")
    add("--star-root", type=Path, metavar="DIR", help="star_dataset root (default: synthetic stars)")
    add("--star-csv", "--csv", type=Path, metavar="FILE", help="metadata CSV with paths inside --star-root")
    add("--wildlife-root", type=Path, metavar="DIR", help="also validate on WildlifeReID-10k (test vs train)")
    add(
        "--output-dir",
        type=Path,
        metavar="DIR",
        help="report folder (default: the checkpoint's or embeddings' folder); report files of an earlier "
        "evaluation there are replaced",
    )
    add("--ks", type=parse_ks, default=DEFAULT_KS, metavar="K,K,...", help="CMC ranks (default: 1,5,10,20)")
    add("--tta", action="store_true", help="average each embedding with its mirror image's")
    add("--rerank", action="store_true", help="k-reciprocal re-ranking (galleries that fit in memory)")
    add("--image-size", type=int, metavar="PX", help="evaluation image size (default: the checkpoint's)")
    add("--batch-size", type=int, default=64, metavar="N", help="images per embedding batch (default: 64)")
    add("--workers", type=int, default=0, metavar="N", help="image loading processes (default: 0)")
    add("--device", default="auto", help="torch device: cpu, cuda, cuda:1 ... (default: cuda when available)")
    return parser


def parse_args(argv: Sequence[str] | None) -> EvaluateConfig:
    args = _parser().parse_args(argv)
    return EvaluateConfig(**vars(args))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a torch device (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return device


def star_catalogue(cfg: EvaluateConfig) -> pd.DataFrame:
    if cfg.star_root is None and cfg.star_csv is not None:
        raise UserError("--star-csv needs --star-root (the folder its paths are relative to)")
    root = cfg.star_root if cfg.star_root is not None else ensure_synthetic("stars")
    return load_star_catalogue(root, cfg.star_csv)


def _check_options(cfg: EvaluateConfig) -> None:
    if cfg.embeddings is not None:
        needs_model = {"--tta": cfg.tta, "--wildlife-root": cfg.wildlife_root, "--image-size": cfg.image_size}
        for flag, value in needs_model.items():
            if value:
                raise UserError(f"{flag} needs --checkpoint: saved embeddings cannot be re-embedded")
    if cfg.batch_size < 1 or cfg.workers < 0:
        raise UserError("--batch-size must be >= 1 and --workers >= 0")
    if cfg.image_size is not None and cfg.image_size < 1:
        raise UserError(f"--image-size must be positive, got {cfg.image_size}")


def _announce(out_dir: Path) -> None:
    log.info("writing evaluation reports to %s (report files of an earlier evaluation are replaced)", out_dir)


def run(cfg: EvaluateConfig) -> dict:
    """Evaluate as ``cfg`` says; return the star summary (with ``"wildlife"`` when validated on it)."""
    _check_options(cfg)
    device = resolve_device(cfg.device)
    source = cfg.checkpoint if cfg.checkpoint is not None else cfg.embeddings
    assert source is not None
    out_dir = cfg.output_dir if cfg.output_dir is not None else source.parent
    options = {key: str(value) if isinstance(value, Path) else value for key, value in asdict(cfg).items()}
    if cfg.embeddings is not None:
        embeddings = load_embeddings(cfg.embeddings)
        _announce(out_dir)
        return evaluate_embeddings(
            embeddings,
            out_dir,
            cfg.ks,
            options=options,
            rerank=cfg.rerank,
            device=device,
            embeddings_file=str(cfg.embeddings),
        )
    model, train_config = load_model_from_checkpoint(cfg.checkpoint, device)
    catalogue = star_catalogue(cfg)
    _announce(out_dir)
    image_size = cfg.image_size or int(train_config["image_size"])
    options["image_size"] = image_size
    options["train_config"] = train_config
    common = {"tta": cfg.tta, "batch_size": cfg.batch_size, "num_workers": cfg.workers}
    summary = evaluate_star(
        model,
        catalogue,
        out_dir,
        image_size,
        device,
        cfg.ks,
        cfg.checkpoint,
        options,
        rerank=cfg.rerank,
        **common,
    )
    if cfg.wildlife_root is not None:
        wildlife = load_wildlife_catalogue(cfg.wildlife_root)
        summary["wildlife"] = evaluate_wildlife(
            model, wildlife, image_size, device, cfg.ks, out_dir, cfg.checkpoint, options, **common
        )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
