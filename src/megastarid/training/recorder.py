"""What a run keeps: its folder held, evaluation at the epochs due, ``best.pth`` / ``last.pth`` /
``history.csv`` / TensorBoard / ``bad_images.txt``, early stopping, and ``run_summary.json`` at the end.

Only rank 0 writes files; every rank keeps the same ``RunState``, so all decide alike (stop early, resume).
Weights that turned NaN/inf are never evaluated or saved (DESIGN §7).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from lightning_fabric import Fabric
from torch import nn

from megastarid.core.errors import UserError
from megastarid.core.files import append_lines, read_lines, write_json
from megastarid.core.runfiles import (
    BAD_IMAGES_TXT,
    BEST_CHECKPOINT,
    CONFIG_YAML,
    HISTORY_CSV,
    LAST_CHECKPOINT,
    LOSS,
    RUN_SUMMARY_JSON,
    TENSORBOARD_DIR,
    TRAINING_CURVES_PNG,
)
from megastarid.models.checkpoints import load_checkpoint, load_model_from_checkpoint, save_checkpoint
from megastarid.training.config import TrainConfig, save_config
from megastarid.training.curves import plot_training_curves
from megastarid.training.runfolder import hold_run_folder, write_history
from megastarid.training.state import EpochTally, RunState
from megastarid.training.step import Trainer
from megastarid.training.tasks import TrainTask

log = logging.getLogger(__name__)

_SHOWN = (LOSS, "images_per_s")  # history fields echoed in the log line of each epoch


class RunRecorder:
    """One rank's record of its run: where it stands (``state``, and ``rng`` for a mid-epoch resume) and
    the files rank 0 writes; the loop calls it at each epoch's end, on a stop and when the run is done."""

    def __init__(
        self,
        fabric: Fabric,
        cfg: TrainConfig,
        task: TrainTask,
        trainer: Trainer,
        held: contextlib.ExitStack,
        started: float,
    ) -> None:
        self.fabric, self.cfg, self.task, self.trainer = fabric, cfg, task, trainer
        self.dir = Path(cfg.output_dir)
        self.rank0 = fabric.global_rank == 0
        self.started = started  # when the wall time not yet in ``state.wall_time_s`` began
        self._hold_folder(held)
        self.state = RunState()
        self.rng: torch.Tensor | None = None
        if cfg.resume:
            self._restore(load_checkpoint(self.dir / LAST_CHECKPOINT))
        self.bad_seen: set[int] = set()
        self.writer = None
        if self.rank0:
            from torch.utils.tensorboard import SummaryWriter

            try:
                self.writer = SummaryWriter(str(self.dir / TENSORBOARD_DIR))
            except UnicodeEncodeError:  # TensorBoard takes UTF-8 folder names only
                log.warning("no TensorBoard logs: the name of %s is not UTF-8", self.dir)

    def _hold_folder(self, held: contextlib.ExitStack) -> None:
        """Rank 0 locks the run folder for the whole run (``held``), readies it and writes config.yaml;
        a folder another run holds (or that cannot be written) stops every rank with rank 0's one line."""
        error = None
        if self.rank0:
            try:
                held.enter_context(hold_run_folder(self.dir, self.cfg.resume, self.cfg.overwrite))
                save_config(self.cfg, self.dir / CONFIG_YAML)
            except UserError as err:
                error = str(err)
        if self.fabric.world_size > 1:
            error = self.fabric.broadcast(error, src=0)
        if error is not None:
            raise UserError(error)

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.trainer.load_state_dict(ckpt)
        saved = ckpt["run"]
        self.state = RunState(**saved)
        rng = ckpt.get("rng")
        if self.state.step and rng is not None and len(rng) == self.fabric.world_size:
            self.rng = rng[self.fabric.global_rank]
        log.info(
            "resuming %s at epoch %d%s",
            self.dir / LAST_CHECKPOINT,
            self.state.epoch + 1,
            f", batch {self.state.step + 1}" if self.state.step else "",
        )

    def _save(self, name: str, rng: torch.Tensor | None = None) -> None:
        """last.pth: the live weights and all ``--resume`` needs (optimizer, schedule, ArcFace centres, the
        EMA); best.pth: the judged weights (the EMA under ``ema``) alone, the model that is evaluated,
        catalogued and shared: the optimizer's moments would triple its size and resume nothing."""
        if self.rank0:
            best = name == BEST_CHECKPOINT
            state = {} if best else self.trainer.state_dict()
            extra = {"rng": rng} if rng is not None else {}
            save_checkpoint(
                self.dir / name,
                self.trainer.eval_module if best else self.trainer.module,
                self.cfg.to_dict(),
                epoch=self.state.epoch,
                metric=self.task.metric,
                run=vars(self.state),
                **state,
                **extra,
            )

    def log_bad(self, bad: list[int]) -> None:
        """Unreadable photos of this rank's batch, each named once in bad_images.txt and the log."""
        new = [i for i in bad if i not in self.bad_seen]
        self.bad_seen.update(new)
        if new:
            append_lines(self.dir / BAD_IMAGES_TXT, (self.task.paths[i] for i in new))  # escaped names
            log.warning(
                "skipped %d unreadable image(s), e.g. %s (see bad_images.txt)",
                len(new),
                self.task.paths[new[0]],
            )

    def save_interrupted(self, step: int, tally: EpochTally) -> None:
        self._check_finite(self.state.epoch + 1)
        gathered = self.fabric.all_gather(self.fabric.to_device(torch.get_rng_state()))
        assert isinstance(gathered, torch.Tensor)  # a tensor in, a tensor out
        rng = gathered.cpu()
        if self.fabric.world_size == 1:
            rng = rng.unsqueeze(0)
        self.state.step = step
        self.state.partial = tally.to_dict()
        self.state.wall_time_s += time.perf_counter() - self.started
        self._save(LAST_CHECKPOINT, rng=rng)
        self.fabric.barrier()

    def report_interrupted(self) -> None:
        """Rank 0 says where the interrupted run was saved and how to resume it."""
        if self.rank0:
            last = self.dir / LAST_CHECKPOINT
            print(
                f"megastarid: interrupted in epoch {self.state.epoch + 1}; saved {last}.\n"
                f"  resume with: python -m megastarid.{self.task.name} --output-dir {self.dir} --resume",
                flush=True,
            )

    def _evaluate(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.rank0:
            module = self.trainer.eval_module
            training = module.training
            module.eval()
            with torch.no_grad():
                metrics = self.task.evaluate(module, self.fabric.device)
            module.train(training)
        return self.fabric.broadcast(metrics, src=0)

    def _check_finite(self, epoch: int) -> None:
        """Weights that became NaN/inf are never evaluated or saved (not as best.pth, not as last.pth):
        the run stops, and the checkpoints keep the last good epoch. Every rank checks its own copy of
        the (identical) weights, so all stop together."""
        if not all(_all_finite(module) for module in {self.trainer.module, self.trainer.eval_module}):
            raise UserError(
                f"the model's weights became NaN/inf in epoch {epoch}: training diverged; lower --lr "
                "(best.pth and last.pth keep the last good epoch, nothing of this one was saved)"
            )

    def end_epoch(self, epoch: int, stats: dict[str, float]) -> None:
        """Evaluate when due, then record the epoch: history row, best.pth, last.pth, early stopping."""
        cfg, state = self.cfg, self.state
        self._check_finite(epoch)
        due = epoch == 0 or epoch % cfg.eval_every == 0 or epoch == cfg.epochs
        metrics = self._evaluate() if due else {}
        state.epoch = epoch
        state.history.append({"epoch": epoch, **stats, **metrics})
        score = metrics.get(self.task.metric) if self.task.metric is not None else None
        if score is not None and score > state.best_metric:
            state.best_metric, state.best_epoch = float(score), epoch
            self._save(BEST_CHECKPOINT)
        elif self.task.metric is None:  # nothing may choose: the last epoch is the one reported
            state.best_epoch = epoch
            self._save(BEST_CHECKPOINT)
        if cfg.patience and score is not None and epoch - state.best_epoch >= cfg.patience:
            state.stopped_early = True
            log.info(
                "early stop: %s has not improved for %d epochs (best %.4f at epoch %d)",
                self.task.metric,
                epoch - state.best_epoch,
                state.best_metric,
                state.best_epoch,
            )
        state.wall_time_s += time.perf_counter() - self.started
        self.started = time.perf_counter()
        self._save(LAST_CHECKPOINT)
        if self.rank0:
            write_history(self.dir / HISTORY_CSV, state.history)
            for key, value in state.history[-1].items():
                if key != "epoch" and self.writer is not None:
                    self.writer.add_scalar(key.replace("@", "_at_"), value, epoch)
            shown = ", ".join(
                f"{k} {v:.4g}" for k, v in {**stats, **metrics}.items() if k in _SHOWN or k in metrics
            )
            log.info("epoch %d/%d: %s", epoch, cfg.epochs, shown)
        self.fabric.barrier()

    def finish(self) -> None:
        """After the last epoch (rank 0): curves, the strategy's report from best.pth, run_summary.json."""
        if self.rank0:
            state = self.state
            plot_training_curves(state.history, self.dir / TRAINING_CURVES_PNG)
            if self.task.final_report is not None:
                model, _ = load_model_from_checkpoint(self.dir / BEST_CHECKPOINT, self.fabric.device)
                with torch.no_grad():
                    self.task.final_report(model, self.fabric.device, self.dir)
            bad = len(set(read_lines(self.dir / BAD_IMAGES_TXT)))
            write_json(
                self.dir / RUN_SUMMARY_JSON,
                {
                    "status": "finished",
                    "best_epoch": state.best_epoch,
                    "best_metric": state.best_metric if math.isfinite(state.best_metric) else None,
                    "metric": self.task.metric,
                    "epochs_completed": state.epoch,
                    "stopped_early": state.stopped_early,
                    "wall_time_s": round(state.wall_time_s + time.perf_counter() - self.started, 3),
                    "bad_images": bad,
                    "skipped_steps": state.skipped_steps,
                },
            )
            chosen = (
                f"best {self.task.metric} {state.best_metric:.4f}"
                if self.task.metric is not None
                else "no validation side, the last epoch kept"
            )
            log.info("done: %s at epoch %d; results in %s", chosen, state.best_epoch, self.dir)
        self.fabric.barrier()


def _all_finite(module: nn.Module) -> bool:
    """Whether every floating-point weight and buffer of ``module`` is finite (one device sync)."""
    tensors = [t for t in module.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) if tensors else True
