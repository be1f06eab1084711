"""``python -m megastarid.pretrain``: pre-train the embedding model on WildlifeReID-10k (or a synthetic one).

The sea star slice is left out by default so it never leaks into star evaluation; the best checkpoint is
chosen by mAP on the official test split (queries) against the train split (gallery).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from megastarid.config import PretrainConfig, parse_config
from megastarid.console import run_main
from megastarid.tasks import (
    model_factory,
    pk_sampler_factory,
    wildlife_catalogue,
    wildlife_evaluator,
    wildlife_report,
    wildlife_train_set,
)
from megastarid.trainer import TrainTask, fit


def pretrain_task(cfg: PretrainConfig) -> TrainTask:
    """Wildlife training images (official train split), P x K batches, judged by wildlife validation mAP."""
    catalogue = wildlife_catalogue(cfg)
    data = wildlife_train_set(catalogue, cfg)
    return TrainTask(
        name="pretrain",
        dataset=data.dataset,
        paths=data.paths,
        make_sampler=pk_sampler_factory(data, cfg),
        build_model=model_factory(cfg),
        evaluate=wildlife_evaluator(catalogue, cfg),
        metric="wildlife_mAP",
        final_report=wildlife_report(catalogue, cfg),
    )


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_config(PretrainConfig, argv, "megastarid pretrain", __doc__.splitlines()[0])
    return fit(cfg, lambda: pretrain_task(cfg))


if __name__ == "__main__":
    sys.exit(run_main(main))
