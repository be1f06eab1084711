"""``python -m megastarid.cotrain``: train on stars and wildlife at once, each batch mixing the two.

``--star-batch-ratio`` of every batch comes from star_dataset, the rest from WildlifeReID-10k; an epoch is
one pass over the star images. The best checkpoint is chosen by star mAP, as in fine-tuning.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from megastarid.config import CotrainConfig, parse_config
from megastarid.console import run_main
from megastarid.data.datasets import ConcatImageDataset
from megastarid.data.samplers import MixedPKBatchSampler
from megastarid.tasks import (
    model_factory,
    resolve_architecture,
    star_catalogue,
    star_evaluator,
    star_report,
    star_train_set,
    wildlife_catalogue,
    wildlife_train_set,
)
from megastarid.trainer import TrainTask, fit


def cotrain_task(cfg: CotrainConfig) -> TrainTask:
    """Stars then wildlife in one dataset with global indices (identities kept apart), mixed P x K batches."""
    catalogue = star_catalogue(cfg)
    stars = star_train_set(catalogue, cfg)
    wildlife = wildlife_train_set(wildlife_catalogue(cfg), cfg, label_offset=int(stars.labels.max()) + 1)

    def make_sampler(rank: int, world: int) -> MixedPKBatchSampler:
        return MixedPKBatchSampler(
            stars.labels,
            wildlife.labels,
            cfg.batch_size,
            cfg.star_batch_ratio,
            cfg.num_instances,
            cfg.seed,
            rank,
            world,
        )

    return TrainTask(
        name="cotrain",
        dataset=ConcatImageDataset([stars.dataset, wildlife.dataset]),
        paths=stars.paths + wildlife.paths,
        make_sampler=make_sampler,
        build_model=model_factory(cfg),
        evaluate=star_evaluator(catalogue, cfg),
        metric="star_mAP",
        final_report=star_report(catalogue, cfg),
    )


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_config(CotrainConfig, argv, "megastarid cotrain", __doc__.splitlines()[0])
    cfg = resolve_architecture(cfg)
    return fit(cfg, lambda: cotrain_task(cfg))


if __name__ == "__main__":
    sys.exit(run_main(main))
