"""``make demo`` / ``python -m megastarid.demo``: the whole pipeline on the built-in synthetic sets, on a CPU.

Pre-trains a small backbone briefly on synthetic wildlife, fine-tunes it on synthetic stars from that
checkpoint under the time-cut protocol (validation chooses the checkpoint and fits the calibration; the
later test side, with its newly recruited individuals, is scored once), and says where the results and
plots are: retrieval of known individuals before and after fine-tuning, and the open-set figures ("known
or new?"). Then the biologist's loop: a catalogue of the known photos built with the fine-tuned model, and
``identify`` on the test side's photos, with the lineup page to confirm them. The sizes are chosen so that
it runs in five to six minutes on two CPU cores and visibly learns.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch

from megastarid.core.console import run_main
from megastarid.core.errors import UserError
from megastarid.core.files import write_csv, write_json
from megastarid.core.options import flag
from megastarid.core.parsing import parse_options
from megastarid.core.runfiles import (
    BEST_CHECKPOINT,
    LINEUP_HTML,
    MATCHES_CSV,
    STAR_OPENSET_SUMMARY_JSON,
    STAR_SUMMARY_JSON,
)
from megastarid.data.synth import ensure_synthetic
from megastarid.evaluation.embed import resolve_tta
from megastarid.evaluation.star import evaluate_star
from megastarid.models.checkpoints import load_model_from_checkpoint
from megastarid.training.config import FinetuneConfig, PretrainConfig, TrainConfig
from megastarid.training.strategies import run_finetune, run_pretrain
from megastarid.training.tasks import star_catalogue

log = logging.getLogger(__name__)

#: fixed options of both phases: no download, a fresh run folder each time
FIXED: dict[str, Any] = {"pretrained": False, "overwrite": True, "num_instances": 4, "warmup_epochs": 1}


@dataclass
class DemoOptions:
    """Where the demo writes and the few knobs worth turning."""

    output_dir: Path = Path("runs/demo")
    """where everything goes (pretrain/, finetune/, archive.sqlite, matches/, demo_summary.json)"""
    backbone: str = "resnet18"
    """timm backbone"""
    image_size: int = 64
    """training image size in pixels"""
    pretrain_epochs: int = 5
    """epochs on synthetic wildlife"""
    finetune_epochs: int = 20
    """epochs on synthetic stars"""
    lr: float = 2e-3
    """peak learning rate of both phases"""
    workers: int = 1
    """data-loading processes"""
    split: Literal["temporal", "time-cut", "identity-holdout"] = "time-cut"
    """the star split protocol of the fine-tuning (time-cut: next season's survey, with recruits)"""

    def __post_init__(self) -> None:
        for name in ("pretrain_epochs", "finetune_epochs"):
            if getattr(self, name) < 1:
                raise UserError(f"{flag(name)} must be at least 1, got {getattr(self, name)}")


def _phase(name: str, run: Callable[[Any], int], cfg: TrainConfig) -> None:
    log.info("demo: %s into %s for %d epochs", name, cfg.output_dir, cfg.epochs)
    code = run(cfg)
    if code:
        raise SystemExit(code)


def before_finetuning(checkpoint: Path, finetune: FinetuneConfig) -> dict[str, Any]:
    """The pre-trained model's retrieval of known individuals on the same star test side, embedded as the
    fine-tuned model's report will be (scored once, nothing written): the baseline that fine-tuning has
    to beat."""
    model, _ = load_model_from_checkpoint(checkpoint, "cpu")
    tta = resolve_tta(finetune.tta, "star")
    with torch.no_grad():
        return evaluate_star(
            model, star_catalogue(finetune), None, finetune.image_size, "cpu", tta=tta, batch_size=64
        )


def _command(*argv: str) -> None:
    """Run another megastarid command as its own process (the demo is a command: it imports none)."""
    log.info("demo: megastarid %s", " ".join(argv))
    done = subprocess.run([sys.executable, "-m", f"megastarid.{argv[0]}", *argv[1:]], check=False)
    if done.returncode:
        raise SystemExit(done.returncode)


def catalogue_and_identify(finetune: FinetuneConfig, out: Path) -> tuple[Path, Path]:
    """The biologist's loop on the synthetic stars: a catalogue of the known side (train and validation
    photos) built with the fine-tuned model and its calibration, then ``identify`` on the test side's
    photos, one encounter per outing folder. Returns the paths of matches.csv and the lineup page."""
    catalogue = star_catalogue(finetune)
    root = Path(finetune.star_root) if finetune.star_root is not None else ensure_synthetic("stars")
    known = catalogue[catalogue["split"].isin(["train", "val"])]
    gallery_csv = out / "catalogue_photos.csv"
    table = pd.DataFrame(
        {
            "identity": known["identity"],
            "path": [os.path.relpath(path, root) for path in known["path"]],
            "outing": known["folder"],
            "date": known["date"].dt.strftime("%Y-%m-%d"),
        }
    )
    write_csv(gallery_csv, table)
    archive, matches = out / "archive.sqlite", out / "matches"
    checkpoint = Path(finetune.output_dir) / BEST_CHECKPOINT
    _command("catalogue", "build", "--checkpoint", str(checkpoint), "--star-root", str(root), "--star-csv",
             str(gallery_csv), "--catalogue", str(archive), "--rebuild")  # fmt: skip
    outings = sorted({str(Path(path).parent) for path in catalogue.loc[catalogue["split"] == "test", "path"]})
    _command("identify", "--catalogue", str(archive), "--out", str(matches), *outings)
    return matches / MATCHES_CSV, matches / LINEUP_HTML


def summarise(before: dict[str, Any], finetune_dir: Path, wall_time_s: float) -> dict[str, Any]:
    """Known-individual retrieval before vs after fine-tuning, and the fine-tuned model's open-set figures,
    all on the test side."""
    final = json.loads((finetune_dir / STAR_SUMMARY_JSON).read_text(encoding="utf-8"))
    openset_file = finetune_dir / STAR_OPENSET_SUMMARY_JSON
    openset = json.loads(openset_file.read_text(encoding="utf-8")) if openset_file.is_file() else {}
    keys = (
        "BAKS",
        "BAUS",
        "geometric_mean",
        "AUROC",
        "ECE",
        "threshold",
        "hindsight_threshold",
        "threshold_gap",
    )
    return {
        "wall_time_s": round(wall_time_s, 1),
        "before_mAP": before["mAP"],
        "before_CMC@1": before["CMC@1"],
        "final_mAP": final["mAP"],
        "final_CMC@1": final["CMC@1"],
        "mAP_gain": float(final["mAP"]) / max(float(before["mAP"]), 1e-9),
        "num_known_queries": final["num_scored_queries"],
        "openset": {key: openset.get(key) for key in keys} | {"new_queries": openset.get("num_new_queries")},
    }


def _figure(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def demo(options: DemoOptions) -> int:
    """Pre-train, fine-tune from its best checkpoint, and print where the results are."""
    out = options.output_dir
    started = time.perf_counter()
    pre_dir, fine_dir = out / "pretrain", out / "finetune"
    common = {
        **FIXED,
        "backbone": options.backbone,
        "image_size": options.image_size,
        "lr": options.lr,
        "workers": options.workers,
    }
    _phase(
        "pretrain", run_pretrain, PretrainConfig(output_dir=pre_dir, epochs=options.pretrain_epochs, **common)
    )
    finetune = FinetuneConfig(
        output_dir=fine_dir,
        checkpoint=pre_dir / BEST_CHECKPOINT,
        epochs=options.finetune_epochs,
        backbone_lr_mult=1.0,
        eval_every=max(1, options.finetune_epochs // 5),
        split=options.split,
        **common,
    )
    before = before_finetuning(pre_dir / BEST_CHECKPOINT, finetune)
    _phase("finetune", run_finetune, finetune)
    matches, lineup = catalogue_and_identify(finetune, out)
    result = summarise(before, fine_dir, time.perf_counter() - started)
    write_json(out / "demo_summary.json", result)
    f, o = _figure, result["openset"]
    lines = [
        f"\nMegaStarID demo finished in {result['wall_time_s']:.0f} s. Star split {options.split}: every "
        "figure is the test side, scored once (validation chose the checkpoint and the threshold).",
        f"  known individuals  mAP {f(result['before_mAP'])} before fine-tuning -> {f(result['final_mAP'])} "
        f"({result['mAP_gain']:.1f}x); CMC@1 {f(result['before_CMC@1'])} -> {f(result['final_CMC@1'])}",
        f"  known or new?      BAKS {f(o['BAKS'])}, BAUS {f(o['BAUS'])}, geometric mean "
        f"{f(o['geometric_mean'])}, AUROC {f(o['AUROC'])}, ECE {f(o['ECE'])} "
        f"({o['new_queries'] or 0} photos of new individuals)",
        f"  threshold          {f(o['threshold'])} chosen on validation; {f(o['hindsight_threshold'])} would "
        "have been best on test (hindsight)",
        f"  results:  {fine_dir}/star_evaluation_summary.json, star_openset_summary.json, calibration.json, "
        "star_identity_metrics.csv, star_folder_metrics.csv",
        f"  plots:    {fine_dir}/training_curves.png, openset_curve.png, reliability.png, "
        f"{pre_dir}/training_curves.png",
        f"  models:   {pre_dir}/best.pth (pre-trained), {fine_dir}/best.pth (fine-tuned)",
        f"  identify: the test side's photos against the catalogue {out}/archive.sqlite: {matches}",
        f"  lineup:   {lineup} (open it in a browser to confirm the matches)",
        f"  summary:  {out}/demo_summary.json",
    ]
    print("\n".join(lines))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return demo(parse_options(DemoOptions, argv, "megastarid demo", __doc__.splitlines()[0]))


if __name__ == "__main__":
    sys.exit(run_main(main))
