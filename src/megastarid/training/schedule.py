"""AdamW's learning rates: the parameter groups (backbone, head, ArcFace centres) and the warm-up + cosine
schedule every strategy trains with."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from megastarid.models.network import EmbeddingModel
from megastarid.training.config import TrainConfig


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
