"""Devices and clusters: the training options (``--gpus``, ``--accelerator``, ``--devices``, ``--precision``,
``--num-nodes``) as Lightning Fabric's arguments, and how a run started under SLURM's srun is laid out.

Each check fails with one line before any process is started, so a wrong option never reaches Fabric.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from lightning_fabric.plugins.environments import (
    LightningEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)

from megastarid.core.errors import UserError
from megastarid.training.config import TrainConfig


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
