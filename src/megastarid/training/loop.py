"""One training loop for every strategy (pretrain, finetune, cotrain), on Lightning Fabric.

A command describes *what* to train on in a ``TrainTask``; ``fit`` does the rest the same way for all:
devices (CPU, one GPU, DDP over ``--gpus`` or ``--accelerator cpu --devices 2``), AdamW with warm-up and
cosine decay, circle + triplet (+ sub-center ArcFace) loss, an optional EMA of the weights (``--ema``: what
validation scores and best.pth holds), evaluation before the first epoch and every ``--eval-every``,
``best.pth`` / ``last.pth`` / ``history.csv`` / TensorBoard, early stopping, and the fault handling of
DESIGN §7 (corrupt photos skipped and logged, NaN steps skipped, Ctrl-C saves, ``--resume`` continues).

Reproducibility: every epoch starts from a torch seed derived from (seed, epoch, rank), the batch sampler
is a pure function of (seed, epoch) and all augmentation draws from torch's generator, so a run resumed
at an epoch boundary repeats exactly what the uninterrupted run did. A run stopped mid-epoch also saves
each rank's generator state and how many batches it had done, and the resumed run skips those batches.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from lightning_fabric import Fabric
from torch.utils.data import DataLoader
from tqdm import tqdm

from megastarid.core.errors import UserError
from megastarid.data.datasets import collate_skip_bad
from megastarid.models.network import EmbeddingModel
from megastarid.training.batches import ResumableBatches, epoch_seed, fill_batch
from megastarid.training.config import TrainConfig
from megastarid.training.distributed import cluster_options, fabric_options, srun_tasks
from megastarid.training.recorder import RunRecorder
from megastarid.training.runfolder import check_run_folder
from megastarid.training.signals import StopRequest, leave_signals_to_main, workers_started_deaf
from megastarid.training.state import EpochTally, RunState
from megastarid.training.step import Trainer
from megastarid.training.tasks import TrainTask

LOG_EVERY = 50  # steps between TensorBoard step-loss points (each one syncs with the device)
INTERRUPTED = 130


def fit(cfg: TrainConfig, build_task: Callable[[], TrainTask]) -> int:
    """Run (or resume) a training run in ``cfg.output_dir``; returns the exit code (130 when interrupted).

    Option errors, a clashing run folder and bad data are reported before any process is started.
    With several devices this process becomes rank 0 and Fabric starts the others, which run the same
    command; only rank 0 writes files.
    """
    options = fabric_options(cfg)
    options |= cluster_options(cfg, options["devices"])
    # Under srun every task runs this: rank 0 alone checks the folder (the others would find its lock).
    if srun_tasks() is None or os.environ.get("SLURM_PROCID", "0") == "0":
        check_run_folder(cfg.output_dir, cfg.resume, cfg.overwrite)
    task = build_task()
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = task.build_model()  # before the run folder is touched: a weights problem leaves no trace
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The `srun` command is available")  # not a cluster job
        fabric = Fabric(**options)
    fabric.launch()
    with contextlib.ExitStack() as held:  # the run folder's lock, released however the run ends
        return _Run(fabric, cfg, task, model, held).execute()


class _Run:
    """One training run in one process (rank); the steps of ``fit`` after the processes exist."""

    def __init__(
        self,
        fabric: Fabric,
        cfg: TrainConfig,
        task: TrainTask,
        model: EmbeddingModel,
        held: contextlib.ExitStack,
    ) -> None:
        started = time.perf_counter()
        self.fabric, self.cfg, self.task = fabric, cfg, task
        self.rank0 = fabric.global_rank == 0
        # Everything that can fail without training comes before the run folder is touched, so a failed
        # start leaves no config.yaml behind to refuse the retry as an existing run.
        self.sampler = task.make_sampler(fabric.global_rank, fabric.world_size)
        self.batches = ResumableBatches(self.sampler)
        self.trainer = Trainer(fabric, model, cfg, len(self.sampler), task.num_classes)
        self.record = RunRecorder(fabric, cfg, task, self.trainer, held, started)
        self.loader = DataLoader(
            task.dataset,
            batch_sampler=self.batches,
            num_workers=cfg.workers,
            collate_fn=collate_skip_bad,
            pin_memory=fabric.device.type == "cuda",
            worker_init_fn=leave_signals_to_main,
        )
        self.failed_in_a_row = 0  # steps skipped one after another (reset by every good step)

    @property
    def state(self) -> RunState:
        """Where the run stands: the recorder's, which restores and saves it."""
        return self.record.state

    def execute(self) -> int:
        with StopRequest() as stop:
            try:
                if self.state.epoch == 0 and self.state.step == 0 and not self.state.history:
                    self.record.end_epoch(0, {})
                while self.state.epoch < self.cfg.epochs and not self.state.stopped_early:
                    epoch = self.state.epoch + 1
                    stats = self._train_epoch(epoch, stop)
                    if stats is None:
                        stop.handled = True
                        self.record.report_interrupted()
                        return INTERRUPTED
                    self.record.end_epoch(epoch, stats)
            finally:
                if self.record.writer is not None:
                    self.record.writer.close()
        self.record.finish()
        return 0

    def _train_epoch(self, epoch: int, stop: StopRequest) -> dict[str, float] | None:
        """Train one epoch; returns its statistics, or None when a stop was requested (after saving)."""
        batches, tally, done = self._begin_epoch(epoch)
        start = time.perf_counter() - tally.elapsed
        self.failed_in_a_row = 0
        bar = tqdm(
            total=len(self.sampler),
            initial=done,
            desc=f"epoch {epoch}/{self.cfg.epochs}",
            disable=None if self.rank0 else True,
            leave=False,
            dynamic_ncols=True,
        )
        self.trainer.model.train()
        for step, (images, labels, indices, bad) in enumerate(batches, start=done + 1):
            if bad:
                self.record.log_bad(bad)
                tally.bad_images += len(bad)
            stop_now, empty = self._sync_flags(stop.requested, len(labels) == 0)
            if not empty and self.fabric.world_size > 1:
                images, labels = fill_batch(images, labels, len(indices) + len(bad))
            losses = None if empty else self.trainer.step(images, labels)
            self._account_step(tally, losses, len(labels), epoch)
            self._log_step(losses, epoch, step, bar)
            bar.update()
            if stop_now and step < len(self.sampler):
                bar.close()
                tally.elapsed = time.perf_counter() - start
                self.record.save_interrupted(step, tally)
                return None
        bar.close()
        tally.elapsed = time.perf_counter() - start
        return self._epoch_stats(tally)

    def _begin_epoch(self, epoch: int) -> tuple[Iterator[Any], EpochTally, int]:
        """Seed the epoch and start its batches: (batches, tally, batches already done).

        A run resumed mid-epoch skips the batches it had done and continues from the tally and the
        random state it saved, so the epoch ends exactly as it would have without the interruption.
        """
        done, self.state.step = self.state.step, 0
        self.sampler.set_epoch(epoch)
        self.batches.skip = done
        torch.manual_seed(epoch_seed(self.cfg.seed, epoch, self.fabric.global_rank))
        with workers_started_deaf():  # the loader draws its base seed from the generator seeded just now
            batches = iter(self.loader)
        if not done:
            return batches, EpochTally.zero(self.fabric.device), 0
        assert self.state.partial is not None
        tally = EpochTally.from_dict(self.state.partial, self.fabric.device)
        if self.record.rng is not None:
            torch.set_rng_state(self.record.rng)
        return batches, tally, done

    def _sync_flags(self, stop: bool, empty: bool) -> tuple[bool, bool]:
        """(stop, empty batch) as any rank saw them: all ranks must take the same branch, or DDP deadlocks."""
        if self.fabric.world_size == 1:
            return stop, empty
        flags = self.fabric.all_reduce(
            torch.tensor([stop, empty], dtype=torch.float32, device=self.fabric.device), reduce_op="sum"
        )
        return bool(flags[0] > 0), bool(flags[1] > 0)

    def _account_step(self, tally: EpochTally, losses: torch.Tensor | None, images: int, epoch: int) -> None:
        """Count a step: its losses and images, or a skipped step; ``max_bad_steps`` skipped in a row stop
        the run."""
        if losses is not None:
            self.failed_in_a_row = 0
            tally.add_step(losses, images)
            return
        tally.skipped_steps += 1
        self.failed_in_a_row += 1
        if self.failed_in_a_row >= self.cfg.max_bad_steps:
            raise UserError(
                f"the loss was NaN/inf (or the batch unreadable) for {self.failed_in_a_row} steps in a row "
                f"in epoch {epoch}: lower --lr or check the data (last.pth holds the last good epoch)"
            )

    def _log_step(self, losses: torch.Tensor | None, epoch: int, step: int, bar: tqdm) -> None:
        """Every ``LOG_EVERY`` steps, on rank 0: the step's loss to TensorBoard and the progress bar
        (reading it waits for the device, hence not every step)."""
        if losses is None or self.record.writer is None or step % LOG_EVERY:
            return
        loss = float(losses[0])
        self.record.writer.add_scalar("train/step_loss", loss, (epoch - 1) * len(self.sampler) + step)
        bar.set_postfix(loss=f"{loss:.3f}")

    def _epoch_stats(self, tally: EpochTally) -> dict[str, float]:
        """The epoch's history fields: mean losses over every rank, learning rates, throughput, faults."""
        total = tally.summed(self.fabric)
        self.state.skipped_steps += total.skipped_steps
        return {
            **total.loss_means(),
            **self.trainer.lrs(),
            "images_per_s": total.images / max(total.elapsed, 1e-9),
            "bad_images": float(total.bad_images),
            "skipped_steps": float(total.skipped_steps),
        }
