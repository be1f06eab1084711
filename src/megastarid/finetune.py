"""``python -m megastarid.finetune [--checkpoint PATH]``: train on star_dataset (no checkpoint: star-only).

The best checkpoint is chosen by star mAP on the temporal query/gallery split; at the end the run folder
gets the star_* evaluation reports of that checkpoint.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from megastarid.config import FinetuneConfig, parse_config
from megastarid.console import run_main
from megastarid.tasks import (
    model_factory,
    pk_sampler_factory,
    resolve_architecture,
    star_catalogue,
    star_evaluator,
    star_report,
    star_train_set,
)
from megastarid.trainer import TrainTask, fit


def finetune_task(cfg: FinetuneConfig) -> TrainTask:
    """Star training images (gallery side of the split), P x K batches, judged by star mAP."""
    catalogue = star_catalogue(cfg)
    data = star_train_set(catalogue, cfg)
    return TrainTask(
        name="finetune",
        dataset=data.dataset,
        paths=data.paths,
        make_sampler=pk_sampler_factory(data, cfg),
        build_model=model_factory(cfg),
        evaluate=star_evaluator(catalogue, cfg),
        metric="star_mAP",
        final_report=star_report(catalogue, cfg),
    )


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_config(FinetuneConfig, argv, "megastarid finetune", __doc__.splitlines()[0])
    cfg = resolve_architecture(cfg)
    return fit(cfg, lambda: finetune_task(cfg))


if __name__ == "__main__":
    sys.exit(run_main(main))
