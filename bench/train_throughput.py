"""Training-step throughput: our Fabric ``Trainer.step`` against a bare PyTorch loop, same model and data.

Both sides get an identical copy of the model, the same loss, AdamW, gradient clipping and the same
in-memory batches (no data loading), so the ratio isolates what our step adds: Fabric's wrappers, the
NaN check, the BatchNorm safety copy, the LR schedule. Rounds alternate ours/bare so that load from
other processes hits both alike; the figure is the median over rounds, per wall-clock second and per
CPU second of this process (the steadier one on a shared CPU machine).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from lightning_fabric import Fabric

from megastarid.models.network import EmbeddingModel, build_model
from megastarid.training.config import FinetuneConfig
from megastarid.training.distributed import fabric_options
from megastarid.training.losses import ReIDLoss
from megastarid.training.step import Trainer


def bare_loop(model: EmbeddingModel, device: torch.device, bf16: bool, lr: float) -> Callable:
    """The reference: the textbook PyTorch step, nothing else."""
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    criterion = ReIDLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            embeddings = model(images)
        loss, _ = criterion(embeddings, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def time_steps(
    step: Callable, batches: list[tuple[torch.Tensor, torch.Tensor]], steps: int, device: torch.device
) -> tuple[float, float]:
    """(wall seconds, CPU seconds) for ``steps`` steps cycling over the batches."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(steps):
        step(*batches[i % len(batches)])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-instances", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per round and side")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="auto", choices=("auto", "32", "bf16"))
    args = parser.parse_args()

    cfg = FinetuneConfig(
        backbone=args.backbone,
        image_size=args.image_size,
        batch_size=args.batch_size,
        num_instances=args.num_instances,
        precision=args.precision,
        epochs=1,
        lr=1e-4,
        warmup_epochs=0,
    )
    options = fabric_options(cfg)
    fabric = Fabric(**options)
    device = fabric.device
    torch.manual_seed(0)
    model = build_model(args.backbone)
    ours = Trainer(fabric, copy.deepcopy(model), cfg, steps_per_epoch=10_000)
    bare = bare_loop(copy.deepcopy(model), device, options["precision"] == "bf16-mixed", cfg.lr)

    labels = torch.arange(args.batch_size // args.num_instances).repeat_interleave(args.num_instances)
    batches = []
    for _ in range(4):
        images = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        batches.append((images.to(device), labels.to(device)))

    for step in (ours.step, bare):  # warm-up: allocator, cuDNN autotuning, lazy init
        time_steps(step, batches, 2, device)
    results: dict[str, list[tuple[float, float]]] = {"ours": [], "bare": []}
    for _ in range(args.rounds):
        results["ours"].append(time_steps(ours.step, batches, args.steps, device))
        results["bare"].append(time_steps(bare, batches, args.steps, device))

    images = args.steps * args.batch_size
    rate = {name: statistics.median(images / wall for wall, _ in runs) for name, runs in results.items()}
    per_cpu = {name: statistics.median(images / cpu for _, cpu in runs) for name, runs in results.items()}
    print(
        f"device {device} ({options['precision']}), {args.backbone} at {args.image_size} px, "
        f"batch {args.batch_size}, {args.rounds} rounds x {args.steps} steps"
    )
    print(f"{'loop':<6} {'images/s (wall)':>16} {'images per CPU-s':>17}")
    for name in ("ours", "bare"):
        print(f"{name:<6} {rate[name]:>16.1f} {per_cpu[name]:>17.1f}")
    print(
        f"ratio ours/bare: {rate['ours'] / rate['bare']:.3f} (wall), "
        f"{per_cpu['ours'] / per_cpu['bare']:.3f} (CPU time)"
    )


if __name__ == "__main__":
    main()
