"""The three training strategies as tasks for the one trainer, and the call that runs each.

- pretrain: WildlifeReID-10k (official train split), P x K batches, judged by wildlife validation mAP.
- finetune: star_dataset (gallery side), P x K batches, from a checkpoint or from scratch; judged by star mAP.
- cotrain: both at once, each batch mixing them (``--star-batch-ratio``); judged by star mAP.
"""

from __future__ import annotations

from megastarid.data.datasets import ConcatImageDataset
from megastarid.data.samplers import MixedPKBatchSampler
from megastarid.training.config import CotrainConfig, FinetuneConfig, PretrainConfig
from megastarid.training.loop import fit
from megastarid.training.tasks import (
    TrainTask,
    model_factory,
    pk_sampler_factory,
    resolve_architecture,
    star_catalogue,
    star_evaluator,
    star_report,
    star_train_set,
    validation_metric,
    wildlife_catalogue,
    wildlife_evaluator,
    wildlife_report,
    wildlife_train_set,
)


def pretrain_task(cfg: PretrainConfig) -> TrainTask:
    """Wildlife training images (official train split), P x K batches, judged by wildlife validation mAP."""
    catalogue = wildlife_catalogue(cfg, cfg.val_fraction)
    data = wildlife_train_set(catalogue, cfg)
    return TrainTask(
        name="pretrain",
        dataset=data.dataset,
        paths=data.paths,
        make_sampler=pk_sampler_factory(data, cfg),
        build_model=model_factory(cfg),
        num_classes=data.num_classes,
        evaluate=wildlife_evaluator(catalogue, cfg),
        metric=validation_metric(catalogue, cfg, "wildlife"),
        final_report=wildlife_report(catalogue, cfg),
    )


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
        num_classes=data.num_classes,
        evaluate=star_evaluator(catalogue, cfg),
        metric=validation_metric(catalogue, cfg, "star"),
        final_report=star_report(catalogue, cfg),
    )


def cotrain_task(cfg: CotrainConfig) -> TrainTask:
    """Stars then wildlife in one dataset with global indices (identities kept apart), mixed P x K batches."""
    catalogue = star_catalogue(cfg)
    stars = star_train_set(catalogue, cfg)
    wildlife = wildlife_train_set(wildlife_catalogue(cfg), cfg, label_offset=stars.num_classes)

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
        num_classes=wildlife.num_classes,  # star identities, then the wildlife ones after them
        evaluate=star_evaluator(catalogue, cfg),
        metric=validation_metric(catalogue, cfg, "star"),
        final_report=star_report(catalogue, cfg),
    )


def run_pretrain(cfg: PretrainConfig) -> int:
    """Pre-train as ``cfg`` says; the exit code of the run (0, or 130 when stopped by a signal)."""
    return fit(cfg, lambda: pretrain_task(cfg))


def run_finetune(cfg: FinetuneConfig) -> int:
    """Fine-tune (or train star-only) as ``cfg`` says, the architecture taken from ``--checkpoint``."""
    cfg = resolve_architecture(cfg)
    return fit(cfg, lambda: finetune_task(cfg))


def run_cotrain(cfg: CotrainConfig) -> int:
    """Co-train on stars and wildlife as ``cfg`` says."""
    cfg = resolve_architecture(cfg)
    return fit(cfg, lambda: cotrain_task(cfg))
