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
import itertools
import logging
import math
import os
import signal
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning_fabric import Fabric
from lightning_fabric.plugins.environments import (
    LightningEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from timm.utils import ModelEmaV3
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from megastarid.core.errors import UserError
from megastarid.core.files import append_lines, read_lines, write_json
from megastarid.core.runfiles import (
    BAD_IMAGES_TXT,
    BEST_CHECKPOINT,
    CONFIG_YAML,
    HISTORY_CSV,
    LAST_CHECKPOINT,
    LOSS,
    LOSS_KEYS,
    RUN_SUMMARY_JSON,
    TENSORBOARD_DIR,
    TRAINING_CURVES_PNG,
)
from megastarid.data.datasets import collate_skip_bad
from megastarid.models.checkpoints import load_checkpoint, load_model_from_checkpoint, save_checkpoint
from megastarid.models.network import EmbeddingModel
from megastarid.training.config import TrainConfig, save_config
from megastarid.training.curves import plot_training_curves
from megastarid.training.losses import ReIDLoss, SubCenterArcFace
from megastarid.training.runfolder import check_run_folder, hold_run_folder, write_history

log = logging.getLogger(__name__)

_SHOWN = (LOSS, "images_per_s")  # history fields echoed in the log line of each epoch
LOG_EVERY = 50  # steps between TensorBoard step-loss points (each one syncs with the device)
INTERRUPTED = 130


@dataclass
class TrainTask:
    """What one strategy trains on and how it is judged; each command builds one from its config."""

    name: str  # the command, for messages: "finetune"
    dataset: Dataset  # item i -> (image tensor | None for a bad file, label, i)
    paths: Sequence[str]  # dataset index -> file, for bad_images.txt
    make_sampler: Callable[[int, int], Any]  # (rank, world_size) -> batch sampler with set_epoch()
    build_model: Callable[[], EmbeddingModel]
    evaluate: Callable[[nn.Module, torch.device], dict[str, float]]  # metrics of the model as it is now
    metric: str | None  # the validation key of evaluate()'s result that chooses best.pth, e.g.
    # "val_star_mAP"; None when there is no validation side: best.pth is then the last epoch
    final_report: Callable[[nn.Module, torch.device, Path], dict[str, Any]] | None = (
        None  # best model -> files
    )
    num_classes: int = 0  # training identities: labels are 0 .. num_classes - 1 (ArcFace's centres)


@dataclass
class RunState:
    """Where a run stands; all plain values so that it round-trips through a weights_only checkpoint."""

    epoch: int = 0  # last completed epoch (0 = only the baseline evaluation done)
    step: int = 0  # batches done in epoch ``epoch + 1`` when the run was interrupted mid-epoch
    history: list[dict[str, float]] = field(default_factory=list)
    best_metric: float = -math.inf
    best_epoch: int = -1
    stopped_early: bool = False
    wall_time_s: float = 0.0
    skipped_steps: int = 0
    partial: dict[str, Any] | None = None  # the interrupted epoch's ``EpochTally.to_dict()``


@dataclass
class EpochTally:
    """What one rank has done so far in an epoch; summed over the ranks when the epoch ends.

    ``loss_sums`` holds one sum per ``LOSS_KEYS`` entry, float32 on the training device, so adding a step's
    losses never waits for the device. ``to_dict`` / ``from_dict`` carry a tally through a weights_only
    checkpoint as plain numbers, exactly (a float32 value is exact as a Python float).
    """

    loss_sums: torch.Tensor
    steps: int = 0  # optimisation steps taken
    images: int = 0  # images in those steps
    bad_images: int = 0  # unreadable photos met (left out of their batch)
    skipped_steps: int = 0  # steps with a NaN/inf loss or no readable image (nothing updated)
    elapsed: float = 0.0  # seconds spent in the epoch so far, on this rank

    @classmethod
    def zero(cls, device: torch.device) -> EpochTally:
        return cls(torch.zeros(len(LOSS_KEYS), device=device))

    def add_step(self, losses: torch.Tensor, images: int) -> None:
        self.loss_sums += losses
        self.steps += 1
        self.images += images

    def to_dict(self) -> dict[str, Any]:
        return {
            "loss_sums": dict(zip(LOSS_KEYS, self.loss_sums.tolist(), strict=True)),
            "steps": self.steps,
            "images": self.images,
            "bad_images": self.bad_images,
            "skipped_steps": self.skipped_steps,
            "elapsed": self.elapsed,
        }

    @classmethod
    def from_dict(cls, saved: dict[str, Any], device: torch.device) -> EpochTally:
        sums = torch.tensor([saved["loss_sums"].get(key, math.nan) for key in LOSS_KEYS], device=device)
        return cls(sums, **{key: value for key, value in saved.items() if key != "loss_sums"})

    def summed(self, fabric: Fabric) -> EpochTally:
        """The tally of every rank, with one all_reduce; ``elapsed`` stays this rank's."""
        counts = [self.steps, self.images, self.bad_images, self.skipped_steps]
        local = torch.cat([self.loss_sums, self.loss_sums.new_tensor(counts)])
        reduced = fabric.all_reduce(local, reduce_op="sum")
        assert isinstance(reduced, torch.Tensor)  # a tensor in, a tensor out
        total = reduced.cpu()
        steps, images, bad_images, skipped_steps = (int(n) for n in total[len(LOSS_KEYS) :].tolist())
        return EpochTally(total[: len(LOSS_KEYS)], steps, images, bad_images, skipped_steps, self.elapsed)

    def loss_means(self) -> dict[str, float]:
        """Each loss term's mean over the steps; a term the objective does not compute (NaN) is left out."""
        if not self.steps:
            return {}
        sums = zip(LOSS_KEYS, self.loss_sums.tolist(), strict=True)
        return {key: total / self.steps for key, total in sums if not math.isnan(total)}


def fabric_options(cfg: TrainConfig) -> dict[str, Any]:
    """Translate ``--gpus`` / ``--accelerator`` / ``--devices`` / ``--precision`` into Fabric's arguments."""
    cuda = torch.cuda.is_available()
    devices: list[int] | int
    if cfg.gpus is not None:
        ids, listed = list(cfg.gpus), ",".join(map(str, cfg.gpus))
        if not cuda:
            raise UserError(f"--gpus {listed}: no CUDA GPU on this machine (leave out --gpus to use the CPU)")
        count = torch.cuda.device_count()
        if max(ids) >= count:
            raise UserError(f"--gpus {listed}: this machine has {count} GPU(s), ids 0 to {count - 1}")
        accelerator, devices, n = "cuda", ids, len(ids)
    else:
        accelerator = {"auto": "cuda" if cuda else "cpu", "gpu": "cuda"}.get(cfg.accelerator, cfg.accelerator)
        if accelerator == "cuda" and not cuda:
            raise UserError(f"--accelerator {cfg.accelerator}: no CUDA GPU on this machine")
        devices = n = cfg.devices
    if cfg.precision == "fp16" and accelerator != "cuda":
        raise UserError("--precision fp16 needs a GPU; use --precision 32 (or bf16) on the CPU")
    if cfg.precision == "auto":
        precision = "bf16-mixed" if accelerator == "cuda" and torch.cuda.is_bf16_supported() else "32-true"
    else:
        precision = {"32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}[cfg.precision]
    return {
        "accelerator": accelerator,
        "devices": devices,
        "strategy": "ddp" if n * cfg.num_nodes > 1 else "auto",
        "precision": precision,
    }


def srun_tasks() -> int | None:
    """The number of tasks srun started when Fabric will take them as the run's processes (its SLURM
    detection: ``SLURM_NTASKS`` set, job name not ``bash``/``interactive``, not under torchrun), else None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Fabric's hint that srun exists but is not used: not an error here
        if TorchElasticEnvironment.detect() or not SLURMEnvironment.detect():
            return None
    return int(os.environ["SLURM_NTASKS"])


def cluster_options(cfg: TrainConfig, devices: int | list[int]) -> dict[str, Any]:
    """Fabric's ``num_nodes`` and cluster environment. Under srun each task is one process of the run, so the
    task count must equal --devices x --num-nodes; one task with several local devices (a grid job on a
    multi-GPU node) leaves Fabric to start the processes itself."""
    devices_per_node = len(devices) if isinstance(devices, list) else devices
    processes = devices_per_node * cfg.num_nodes
    tasks = srun_tasks()
    if tasks is None:
        if cfg.num_nodes > 1:
            raise UserError(
                f"--num-nodes {cfg.num_nodes}: start one process per device on every node with srun "
                f"(srun --nodes {cfg.num_nodes} --ntasks-per-node {devices_per_node} ...) or torchrun"
            )
        return {"num_nodes": 1}
    if tasks == 1 and processes > 1 and cfg.num_nodes == 1:
        return {"num_nodes": 1, "plugins": [LightningEnvironment()]}
    if tasks != processes:
        raise UserError(
            f"srun started {tasks} task(s) but --devices {devices_per_node} x --num-nodes {cfg.num_nodes} "
            f"makes {processes} process(es): start one task per device (srun --nodes {cfg.num_nodes} "
            f"--ntasks-per-node {devices_per_node})"
        )
    if tasks > 1 and "SLURM_NTASKS_PER_NODE" not in os.environ:
        raise UserError(
            f"srun --ntasks {tasks}: give the tasks per node instead (srun --nodes {cfg.num_nodes} "
            f"--ntasks-per-node {devices_per_node}); Lightning Fabric refuses --ntasks alone"
        )
    return {"num_nodes": cfg.num_nodes}


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at the last step."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def param_groups(
    model: EmbeddingModel, cfg: TrainConfig, arcface: nn.Module | None = None
) -> list[dict[str, Any]]:
    """Backbone at ``lr * backbone_lr_mult``, head at ``lr``; no weight decay on norms and biases.

    ArcFace's class centres get a group of their own at ``--arcface-lr`` without weight decay: the loss
    sees only their direction, so decay would do nothing but shrink them, and a shrinking centre turns
    ever faster under Adam's fixed-size steps.
    """
    head = {id(p) for p in model.head_parameters()}
    groups = []
    for part, lr in (("backbone", cfg.lr * cfg.backbone_lr_mult), ("head", cfg.lr)):
        params = [p for p in model.parameters() if p.requires_grad and (id(p) in head) == (part == "head")]
        for decay in (True, False):
            chosen = [p for p in params if (p.ndim > 1) == decay]
            if chosen:
                groups.append(
                    {"params": chosen, "lr": lr, "weight_decay": cfg.weight_decay * decay, "name": part}
                )
    if arcface is not None:
        groups.append(
            {
                "params": list(arcface.parameters()),
                "lr": cfg.arcface_lr,
                "weight_decay": 0.0,
                "name": "arcface",
            }
        )
    return groups


def build_arcface(cfg: TrainConfig, num_classes: int) -> SubCenterArcFace | None:
    """The ArcFace loss with its class centres (one set per training identity), or None when it is off."""
    if cfg.arcface_weight == 0:
        return None
    if num_classes < 1:
        raise ValueError("--arcface-weight needs the task's number of training identities (num_classes)")
    return SubCenterArcFace(
        num_classes, cfg.embedding_dim, cfg.arcface_subcenters, cfg.arcface_margin, cfg.arcface_scale
    )


class Trainer:
    """The model, optimizer, schedule and loss, and one optimisation step; no data or files here.

    ArcFace's centres (``--arcface-weight``) are a Fabric module of their own, so under DDP their gradients
    are averaged over the ranks like the model's. With ``--ema`` every rank keeps the same moving average
    of its (identical, synced) weights, updated after each optimizer step.
    """

    def __init__(
        self,
        fabric: Fabric,
        model: EmbeddingModel,
        cfg: TrainConfig,
        steps_per_epoch: int,
        num_classes: int = 0,
    ) -> None:
        self.fabric = fabric
        self.on_gpu = fabric.device.type == "cuda"
        if self.on_gpu:
            model = model.to(memory_format=torch.channels_last)
        self.arcface = build_arcface(cfg, num_classes)
        groups = param_groups(model, cfg, self.arcface)
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        warmup, total = cfg.warmup_epochs * steps_per_epoch, cfg.epochs * steps_per_epoch
        self.scheduler = LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total))
        self.model, self.optimizer = fabric.setup(model, optimizer)
        arcface = fabric.setup_module(self.arcface) if self.arcface is not None else None
        # timm's warm-up ramps the decay (1 - (1 + step)^(-2/3), capped at --ema), so the average is not
        # dominated by the first steps' weights in a short run
        self.ema = ModelEmaV3(self.module, decay=cfg.ema, use_warmup=True) if cfg.ema else None
        # A NaN batch poisons BatchNorm running statistics in the forward pass itself; keep a copy to undo it.
        self._buffers = [b for b in model.buffers() if b.is_floating_point()]
        self._buffer_backup = [b.detach().clone() for b in self._buffers]
        self.criterion = ReIDLoss(
            cfg.circle_weight,
            cfg.triplet_weight,
            cfg.circle_m,
            cfg.circle_gamma,
            cfg.triplet_margin,
            distributed=fabric.world_size > 1,
            arcface=arcface,
            arcface_weight=cfg.arcface_weight,
        )

    @property
    def module(self) -> EmbeddingModel:
        """The bare live model (not the DDP wrapper): what trains, and last.pth's ``model``."""
        return self.model.module

    @property
    def eval_module(self) -> EmbeddingModel:
        """The weights that are judged: the EMA with ``--ema``, else the live model (validation, best.pth)."""
        return self.ema.module if self.ema is not None else self.module

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """One optimisation step; returns the detached losses in ``LOSS_KEYS`` order (NaN for a term the
        objective does not compute), or None when the loss was NaN/inf (then nothing is updated)."""
        images, labels = self.fabric.to_device(images), self.fabric.to_device(labels)
        if self.on_gpu:
            images = images.contiguous(memory_format=torch.channels_last)
        if self._buffers:
            torch._foreach_copy_(self._buffer_backup, self._buffers)
        loss, parts = self.criterion(self.model(images), labels)
        if not self._finite_everywhere(loss):
            if self._buffers:
                torch._foreach_copy_(self._buffers, self._buffer_backup)
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.fabric.backward(loss)
        self.fabric.clip_gradients(self.model, self.optimizer, max_norm=1.0, error_if_nonfinite=False)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.module, step=self.scheduler.last_epoch)  # last_epoch: steps taken
        nan = loss.new_tensor(math.nan)
        return torch.stack([loss.detach(), *(parts.get(key, nan) for key in LOSS_KEYS[1:])])

    def _finite_everywhere(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank. ArcFace scores each rank's own embeddings, so one rank
        alone may see NaN; all must skip the step together or the others wait for its gradients forever."""
        finite = torch.isfinite(loss)
        if self.arcface is not None and self.fabric.world_size > 1:
            votes = self.fabric.all_reduce(finite.float(), reduce_op="sum")
            return bool(votes == self.fabric.world_size)
        return bool(finite)

    def lrs(self) -> dict[str, float]:
        lrs = {
            group["name"]: float(lr)
            for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr(), strict=True)
        }
        return {"lr": lrs["head"], "backbone_lr": lrs.get("backbone", math.nan)}

    def state_dict(self) -> dict[str, Any]:
        """What ``--resume`` needs beside the live weights: optimizer (ArcFace's group included), schedule,
        scaler, and the ArcFace centres and EMA weights when they are on."""
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.fabric.strategy.precision.state_dict(),
        }
        if self.arcface is not None:
            state["arcface"] = self.arcface.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        if self.arcface is not None:
            self.arcface.load_state_dict(state["arcface"])
        if self.ema is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.fabric.strategy.precision.load_state_dict(state["scaler"])


class _ResumableBatches(Sampler[list[int]]):
    """The task's batch sampler, minus the first ``skip`` batches of the epoch (for a mid-epoch resume)."""

    def __init__(self, sampler: Any) -> None:
        self.sampler, self.skip = sampler, 0

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return len(self.sampler) - self.skip


class _StopRequest:
    """SIGINT/SIGTERM set a flag that the loop checks between steps; a second Ctrl-C stops at once.

    A signal that arrives when no step is left (final evaluation, reports) is delivered again on exit,
    so the program around the run (``megastarid demo``) stops too instead of silently carrying on.
    """

    def __init__(self) -> None:
        self.requested = False
        self.handled = False
        self._signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: keep the default behaviour
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested, self._signum = True, signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
        log.warning("%s received: stopping after this step and saving last.pth", signal.Signals(signum).name)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._signum is not None and not self.handled and exc[0] is None:
            signal.raise_signal(self._signum)


def _leave_signals_to_main(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT/SIGTERM: a job scheduler or Ctrl-C signals the whole process group,
    and a worker dying of it would crash the main process before it can save ``last.pth``."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + rank) % (2**63)


def _fill_batch(images: torch.Tensor, labels: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch that lost unreadable photos, filled up to ``size`` by repeating its readable ones: under DDP
    every rank must hand the same shape to the loss, which gathers the embeddings of all ranks."""
    if len(labels) >= size:
        return images, labels
    fill = torch.arange(size) % len(labels)
    return images[fill], labels[fill]


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


def _all_finite(module: nn.Module) -> bool:
    """Whether every floating-point weight and buffer of ``module`` is finite (one device sync)."""
    tensors = [t for t in module.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) if tensors else True


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
        self.fabric, self.cfg, self.task = fabric, cfg, task
        self.dir = Path(cfg.output_dir)
        self.rank0 = fabric.global_rank == 0
        self.started = time.perf_counter()
        # Everything that can fail without training comes before the run folder is touched, so a failed
        # start leaves no config.yaml behind to refuse the retry as an existing run.
        self.sampler = task.make_sampler(fabric.global_rank, fabric.world_size)
        self.batches = _ResumableBatches(self.sampler)
        self.trainer = Trainer(fabric, model, cfg, len(self.sampler), task.num_classes)
        self._hold_folder(held)
        self.state = RunState()
        self.rng: torch.Tensor | None = None
        if cfg.resume:
            self._restore(load_checkpoint(self.dir / LAST_CHECKPOINT))
        self.loader = DataLoader(
            task.dataset,
            batch_sampler=self.batches,
            num_workers=cfg.workers,
            collate_fn=collate_skip_bad,
            pin_memory=fabric.device.type == "cuda",
            worker_init_fn=_leave_signals_to_main,
        )
        self.bad_seen: set[int] = set()
        self.failed_in_a_row = 0  # steps skipped one after another (reset by every good step)
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

    # ----------------------------------------------------------------- checkpoints

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

    # ----------------------------------------------------------------- the loop

    def execute(self) -> int:
        with _StopRequest() as stop:
            try:
                if self.state.epoch == 0 and self.state.step == 0 and not self.state.history:
                    self._end_epoch(0, {})
                while self.state.epoch < self.cfg.epochs and not self.state.stopped_early:
                    epoch = self.state.epoch + 1
                    stats = self._train_epoch(epoch, stop)
                    if stats is None:
                        stop.handled = True
                        return self._interrupted()
                    self._end_epoch(epoch, stats)
            finally:
                if self.writer is not None:
                    self.writer.close()
        self._finish()
        return 0

    def _train_epoch(self, epoch: int, stop: _StopRequest) -> dict[str, float] | None:
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
                self._log_bad(bad)
                tally.bad_images += len(bad)
            stop_now, empty = self._sync_flags(stop.requested, len(labels) == 0)
            if not empty and self.fabric.world_size > 1:
                images, labels = _fill_batch(images, labels, len(indices) + len(bad))
            losses = None if empty else self.trainer.step(images, labels)
            self._account_step(tally, losses, len(labels), epoch)
            self._log_step(losses, epoch, step, bar)
            bar.update()
            if stop_now and step < len(self.sampler):
                bar.close()
                tally.elapsed = time.perf_counter() - start
                self._save_interrupted(step, tally)
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
        torch.manual_seed(_epoch_seed(self.cfg.seed, epoch, self.fabric.global_rank))
        batches = iter(self.loader)  # the loader draws its base seed from the generator seeded just now
        if not done:
            return batches, EpochTally.zero(self.fabric.device), 0
        assert self.state.partial is not None
        tally = EpochTally.from_dict(self.state.partial, self.fabric.device)
        if self.rng is not None:
            torch.set_rng_state(self.rng)
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
        if losses is None or self.writer is None or step % LOG_EVERY:
            return
        loss = float(losses[0])
        self.writer.add_scalar("train/step_loss", loss, (epoch - 1) * len(self.sampler) + step)
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

    def _log_bad(self, bad: list[int]) -> None:
        new = [i for i in bad if i not in self.bad_seen]
        self.bad_seen.update(new)
        if new:
            append_lines(self.dir / BAD_IMAGES_TXT, (self.task.paths[i] for i in new))  # escaped names
            log.warning(
                "skipped %d unreadable image(s), e.g. %s (see bad_images.txt)",
                len(new),
                self.task.paths[new[0]],
            )

    def _save_interrupted(self, step: int, tally: EpochTally) -> None:
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

    def _interrupted(self) -> int:
        if self.rank0:
            last = self.dir / LAST_CHECKPOINT
            print(
                f"megastarid: interrupted in epoch {self.state.epoch + 1}; saved {last}.\n"
                f"  resume with: python -m megastarid.{self.task.name} --output-dir {self.dir} --resume",
                flush=True,
            )
        return INTERRUPTED

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

    def _end_epoch(self, epoch: int, stats: dict[str, float]) -> None:
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

    def _finish(self) -> None:
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
