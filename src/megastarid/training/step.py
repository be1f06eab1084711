"""One optimisation step: the model, AdamW with its schedule, the loss (ArcFace and its centres included)
and the EMA, set up on Lightning Fabric; no data, files or epochs here (those are the loop's)."""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning_fabric import Fabric
from timm.utils import ModelEmaV3
from torch.optim.lr_scheduler import LambdaLR

from megastarid.core.runfiles import LOSS_KEYS
from megastarid.models.network import EmbeddingModel
from megastarid.training.config import TrainConfig
from megastarid.training.losses import ReIDLoss, SubCenterArcFace
from megastarid.training.schedule import lr_factor, param_groups


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
