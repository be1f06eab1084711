"""The five measurements of ``bench/gpu_check.py``, each through the project's own code.

Each section takes a ``Check`` (its sizes, the device, a scratch folder) and adds its figures to it as it
measures them, so a section stopped by its time box still reports what it had.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from lightning_fabric import Fabric
from PIL import Image

from eval_speed import WILDLIFE, make_data
from identify_speed import clustered
from megastarid.core.runfiles import HISTORY_CSV, LAST_CHECKPOINT
from megastarid.data.images import load_rgb
from megastarid.data.synth import generate_stars
from megastarid.data.transforms import build_eval_transform
from megastarid.evaluation.individuals import IdentityCodes
from megastarid.evaluation.metrics import auto_chunk_size, mean_ap, rank_queries
from megastarid.finetune import main as finetune_main
from megastarid.identification.index import CatalogueIndex
from megastarid.models.checkpoints import load_checkpoint, save_checkpoint
from megastarid.models.embedder import checkpoint_embedder
from megastarid.models.network import DEFAULT_POOLING, build_model
from megastarid.training.config import FinetuneConfig, TrainConfig, parse_train_config
from megastarid.training.distributed import fabric_options
from megastarid.training.loop import INTERRUPTED, fit
from megastarid.training.step import Trainer
from megastarid.training.strategies import finetune_task
from megastarid.training.tasks import TrainTask, model_factory, pk_sampler_factory, star_train_set

#: columns of history.csv that are timings, left out of the resume comparison (as in tests/test_resume.py)
TIMING = ["images_per_s"]
#: loading processes on the big side: every core but the training loop's and the pinning thread's
MANY_WORKERS = max(4, (os.cpu_count() or 1) - 2)


@dataclass(frozen=True)
class Sizes:
    """How big each section's work is: ``FULL`` on the GPU, ``SMOKE`` (toy) on the CPU."""

    backbone: str  # sections 1 and 4
    image_size: int
    batch_size: int  # training; embedding batches are 64 on the GPU
    num_instances: int
    photos: int  # JPEGs shared by sections 1 and 4
    photo_size: tuple[int, int]
    step_s: float  # how long Trainer.step is timed
    forward_s: float  # how long each bare forward pass is timed
    epoch_images: int  # images in the loader-fed epoch (the photos repeat to fill it, as page-cached data)
    train_workers: tuple[int, ...]
    embed_workers: tuple[int, ...]
    resume_backbone: str
    resume_image_size: int
    resume_identities: int  # synthetic stars of the resume runs
    resume_photo_size: int
    queries: int
    gallery: int
    identities: int
    search_photos: int
    search_queries: int


FULL = Sizes(
    backbone="convnext_tiny", image_size=384, batch_size=32, num_instances=4, photos=300,
    photo_size=(1600, 1200), step_s=10.0, forward_s=4.0, epoch_images=2000, train_workers=(4, MANY_WORKERS),
    embed_workers=(0, MANY_WORKERS), resume_backbone="resnet18", resume_image_size=128, resume_identities=24,
    resume_photo_size=128, queries=WILDLIFE["queries"], gallery=WILDLIFE["gallery"],
    identities=WILDLIFE["identities"], search_photos=100_000, search_queries=50,
)  # fmt: skip
SMOKE = Sizes(
    backbone="test_resnet", image_size=32, batch_size=8, num_instances=2, photos=16, photo_size=(320, 240),
    step_s=1.0, forward_s=0.5, epoch_images=32, train_workers=(1,), embed_workers=(0, 1),
    resume_backbone="test_resnet", resume_image_size=32, resume_identities=6, resume_photo_size=48,
    queries=306, gallery=1_100, identities=108, search_photos=20_000, search_queries=10,
)  # fmt: skip


@dataclass
class Figure:
    name: str
    value: float | int | str
    unit: str
    where: str  # GPU, host CPU or CPU smoke
    note: str = ""


@dataclass
class Check:
    """What a section gets (its sizes, the device, a scratch folder shared by all) and the figures it adds."""

    sizes: Sizes
    device: torch.device
    work: Path
    box: int  # the section's time box in seconds
    figures: list[Figure] = field(default_factory=list)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def add(self, name: str, value: float | int | str, unit: str, note: str = "", host: bool = False) -> None:
        """A figure; ``host``: measured on the host CPU even on a GPU machine."""
        where = "CPU smoke" if not self.cuda else "host CPU" if host else "GPU"
        self.figures.append(Figure(name, value, unit, where, note))

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def add_peak(self, name: str, note: str = "") -> None:
        if self.cuda:
            self.add(name, torch.cuda.max_memory_allocated(self.device) / 2**20, "MiB", note)
        else:
            self.add(name, "n/a", "MiB", "no CUDA memory to measure on the CPU")

    def rate(self, run: Callable[[int], object], seconds: float, min_reps: int = 3) -> float:
        """Calls of ``run(i)`` per second, repeated for at least ``seconds`` after one warm-up call."""
        run(0)
        self.sync()
        reps, start = 0, time.perf_counter()
        while reps < min_reps or time.perf_counter() - start < seconds:
            run(reps)
            reps += 1
        self.sync()
        return reps / (time.perf_counter() - start)


def write_jpegs(folder: Path, count: int, size: tuple[int, int]) -> list[str]:
    """Phone-like JPEGs, written once per run (sections 1 and 4 share them): smooth random scenes with
    sensor-like grain that JPEG cannot squeeze, so they decode as slowly as photos (~370 KiB at 1600x1200)."""
    paths = [str(folder / f"IMG_{i:04d}.jpg") for i in range(count)]
    if all(os.path.exists(path) for path in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    grain = np.random.default_rng(0).integers(-8, 9, (height, width, 3), dtype=np.int16)

    def write(i: int) -> None:
        rng = np.random.default_rng(i + 1)
        scene = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize(
            size, Image.Resampling.BICUBIC
        )
        pixels = np.asarray(scene, np.int16) + np.roll(grain, int(rng.integers(width)), axis=1)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(paths[i], quality=90)

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(write, range(count)))
    return paths


def finished(code: int, what: str) -> None:
    """A training run's exit code as a section needs it: a signal (Ctrl-C) stops the whole check."""
    if code == INTERRUPTED:
        raise KeyboardInterrupt
    if code != 0:
        raise RuntimeError(f"{what} exited with code {code}")


def timed_ms(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1000


# -- 1. training throughput --------------------------------------------------------------------------------


def training(check: Check) -> None:
    s = check.sizes
    cfg = TrainConfig(
        output_dir=check.work / "train", backbone=s.backbone, image_size=s.image_size, epochs=1,
        batch_size=s.batch_size, num_instances=s.num_instances, warmup_epochs=0,
    )  # fmt: skip
    synthetic = synthetic_rate(check, cfg)
    paths = write_jpegs(check.work / "photos", s.photos, s.photo_size)
    repeats = math.ceil(s.epoch_images / len(paths))
    photos = f"{len(paths)} JPEGs of {s.photo_size[0]}x{s.photo_size[1]}, each {repeats} times in the epoch"
    note = f"{photos}; history.csv's images_per_s, the loader's start included"
    for workers in s.train_workers:
        fed = loader_fed(dataclasses.replace(cfg, workers=workers), paths, repeats)
        check.add(f"`fit` fed by the data loader, --workers {workers}", fed, "images/s", note)
        check.add(
            f"ratio loader-fed / synthetic, --workers {workers}", fed / synthetic, "x", "< 0.9: starved"
        )


def synthetic_rate(check: Check, cfg: TrainConfig) -> float:
    """images/s of ``Trainer.step`` on two fixed batches already on the device (no data loading)."""
    options = fabric_options(cfg)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The `srun` command is available")  # as fit does
        fabric = Fabric(**options)
    torch.manual_seed(0)
    trainer = Trainer(fabric, model_factory(cfg)(), cfg, steps_per_epoch=10_000)
    labels = torch.arange(cfg.batch_size // cfg.num_instances).repeat_interleave(cfg.num_instances)
    shape = (cfg.batch_size, 3, cfg.image_size, cfg.image_size)
    batches = [(torch.randn(shape, device=check.device), labels.to(check.device)) for _ in range(2)]
    check.reset_peak()
    rate = cfg.batch_size * check.rate(lambda i: trainer.step(*batches[i % 2]), check.sizes.step_s)
    how = f"{cfg.backbone}, {cfg.image_size} px, batch {cfg.batch_size}, Fabric {options['precision']}"
    check.add("`Trainer.step` on synthetic device tensors", rate, "images/s", f"{how}, channels_last on GPU")
    check.add_peak("peak GPU memory of the training step")
    return rate


def loader_fed(cfg: TrainConfig, paths: list[str], repeats: int) -> float:
    """images/s of one ``fit`` epoch over ``paths``, each listed ``repeats`` times, ``num_instances`` photos
    per identity: the dataset, transform, sampler and loader of star training; nothing is evaluated."""
    cfg = dataclasses.replace(cfg, output_dir=cfg.output_dir.with_name(f"train-workers{cfg.workers}"))
    k = cfg.num_instances
    rows = [(path, f"star{i // k:04d}") for i, path in enumerate(paths) for _ in range(repeats)]
    data = star_train_set(pd.DataFrame(rows, columns=["path", "identity"]).assign(split="train"), cfg)
    task = TrainTask(
        name="gpu_check",
        dataset=data.dataset,
        paths=data.paths,
        make_sampler=pk_sampler_factory(data, cfg),
        build_model=model_factory(cfg),
        evaluate=lambda model, device: {},
        metric=None,
    )
    finished(fit(cfg, lambda: task), "the loader-fed training run")
    return float(pd.read_csv(cfg.output_dir / HISTORY_CSV)["images_per_s"].iloc[-1])


# -- 2. SIGTERM mid-epoch and --resume ---------------------------------------------------------------------


def resume(check: Check) -> None:
    """With ``--workers 0``: loader workers draw their augmentations from generators of their own, which a
    mid-epoch resume restarts at the epoch's start, so with workers the rest of that epoch differs (on the
    CPU too); without them the comparison asks only whether the device's arithmetic repeats."""
    s = check.sizes
    stars = generate_stars(check.work / "stars", s.resume_identities, image_size=s.resume_photo_size)
    common = [
        "--star-root", str(stars), "--backbone", s.resume_backbone, "--image-size", str(s.resume_image_size),
        "--epochs", "3", "--batch-size", "8", "--num-instances", "2", "--workers", "0", "--eval-every", "100",
        "--tta", "none",
    ]  # fmt: skip
    whole, cut = check.work / "whole", check.work / "cut"
    start = time.perf_counter()
    finished(finetune_main([*common, "--output-dir", str(whole)]), "the uninterrupted run")
    check.add("uninterrupted run, `megastarid.finetune.main` here", time.perf_counter() - start, "s")
    command = [sys.executable, "-m", "megastarid.finetune", *common, "--output-dir", str(cut)]
    code, out, err = interrupt_mid_epoch(command, check.box)
    clean = "yes" if "Traceback" not in err and f"--output-dir {cut} --resume" in out else "no"
    name = "exit code of `python -m megastarid.finetune` after SIGTERM to its process group"
    check.add(name, code, "", f"130: saved last.pth and stopped; the resume hint and no traceback: {clean}")
    run = load_checkpoint(cut / LAST_CHECKPOINT)["run"]
    cfg = parse_train_config(FinetuneConfig, [*common, "--output-dir", str(cut)], "finetune", "")
    per_epoch = len(finetune_task(cfg).make_sampler(0, 1))
    where = f"of {per_epoch} in epoch {run['epoch'] + 1}"
    check.add("batches done in the interrupted epoch", run["step"], where, "0 would be an epoch boundary")
    finished(finetune_main(["--output-dir", str(cut), "--resume"]), "the resumed run")
    expected, resumed = (pd.read_csv(folder / HISTORY_CSV).drop(columns=TIMING) for folder in (whole, cut))
    difference, column = largest_difference(expected, resumed)
    same = "yes" if difference <= 1e-5 else "no"
    compared = f"{expected.shape[0]} rows x {expected.shape[1]} columns (all but {', '.join(TIMING)})"
    check.add("resumed history.csv equals the uninterrupted one (rtol 1e-5)", same, "", compared)
    check.add("largest relative difference between the histories", difference, "", f"column: {column}")


def interrupt_mid_epoch(command: list[str], timeout: float) -> tuple[int, str, str]:
    """Start ``command`` in a process group of its own; once its epoch 1 has ended, wait 30 % of that
    epoch's time and send SIGTERM to the whole group, as a job scheduler does. (exit code, stdout, stderr)"""
    deadline = time.monotonic() + timeout
    pipe = subprocess.PIPE
    proc = subprocess.Popen(command, stdout=pipe, stderr=pipe, text=True, start_new_session=True)
    out: list[str] = []
    err: list[tuple[float, str]] = []  # (arrival, line): the epoch lines time the epochs

    def pump_err() -> None:
        err.extend((time.monotonic(), line) for line in proc.stderr or ())

    pumps = [
        threading.Thread(target=lambda: out.extend(proc.stdout or ())),
        threading.Thread(target=pump_err),
    ]
    for pump in pumps:
        pump.start()
    try:
        ended: dict[int, float] = {}
        while 1 not in ended:
            if proc.poll() is not None or time.monotonic() > deadline:
                last = err[-1][1].strip() if err else "no output"
                raise RuntimeError(f"the run to interrupt ended or stalled before its epoch 1 ended ({last})")
            ended = {int(m[1]): t for t, line in list(err) if (m := re.match(r"epoch (\d+)/\d+:", line))}
            time.sleep(0.02)
        time.sleep(0.3 * (ended[1] - ended[0]))
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pump in pumps:
            pump.join()
    return code, "".join(out), "".join(line for _, line in err)


def largest_difference(expected: pd.DataFrame, actual: pd.DataFrame) -> tuple[float, str]:
    """The largest relative difference of any value (NaN equals NaN) and its column."""
    if list(expected.columns) != list(actual.columns) or len(expected) != len(actual):
        return math.inf, f"the shapes: {expected.shape} vs {actual.shape}"
    worst, where = 0.0, "none: every value equal"
    for column in expected.columns:
        a, b = expected[column].to_numpy(float), actual[column].to_numpy(float)
        with np.errstate(invalid="ignore"):
            relative = np.abs(a - b) / np.maximum(np.abs(a), 1e-12)
        relative = np.where(np.isnan(a) & np.isnan(b), 0.0, np.nan_to_num(relative, nan=math.inf))
        if relative.size and relative.max() > worst:
            worst, where = float(relative.max()), str(column)
    return worst, where


# -- 3. evaluation at WildlifeReID-10k scale ---------------------------------------------------------------


def evaluation(check: Check) -> None:
    s = check.sizes
    q, qi, g, gi = make_data(s.queries, s.gallery, s.identities, 512, seed=0)
    rank_queries(q[:8], qi[:8], g, gi, device=check.device)  # warm-up: kernels, allocator
    check.sync()
    check.reset_peak()
    start = time.perf_counter()
    results = rank_queries(q, qi, g, gi, device=check.device)
    check.sync()
    seconds = time.perf_counter() - start
    what = f"{s.queries:,} queries x {s.gallery:,} gallery, 512-d, {s.identities:,} identities"
    check.add("`rank_queries` wall time", seconds, "s", f"{what}; mAP {mean_ap(results):.3f}")
    check.add("queries ranked per second", s.queries / seconds, "queries/s")
    inputs = f"inputs {(q.nbytes + g.nbytes) / 2**20:,.0f} MiB, {auto_chunk_size(s.gallery)} queries a chunk"
    check.add_peak("peak GPU memory (`torch.cuda.max_memory_allocated`)", inputs)


# -- 4. identify throughput --------------------------------------------------------------------------------


def identify(check: Check) -> None:
    s = check.sizes
    checkpoint = check.work / "identify.pth"
    config = {
        "backbone": s.backbone,
        "embedding_dim": 512,
        "image_size": s.image_size,
        "pooling": DEFAULT_POOLING,
    }
    torch.manual_seed(0)
    save_checkpoint(checkpoint, build_model(s.backbone, 512, pooling=DEFAULT_POOLING), config)
    paths = write_jpegs(check.work / "photos", s.photos, s.photo_size)
    batch = 64 if check.cuda else 8
    what = f"{len(paths)} JPEGs, {s.backbone} at {s.image_size} px, batch {batch}, fp32 as embed_images"
    rates: dict[int, float] = {}
    for workers in s.embed_workers:
        embedder = checkpoint_embedder(checkpoint, check.device, batch_size=batch, num_workers=workers)
        embedder.embed(paths[:batch])  # warm-up
        start = time.perf_counter()
        embedder.embed(paths)
        rates[workers] = len(paths) / (time.perf_counter() - start)
        default = " (identify's default)" if workers == 0 else ""
        check.add(
            f"`Embedder.embed` of JPEG paths, --workers {workers}{default}", rates[workers], "photos/s", what
        )
    model, transform = embedder.model, build_eval_transform(s.image_size)
    starts = range(0, min(len(paths), 2 * batch), batch)
    decoded = [
        torch.stack([transform(load_rgb(p, s.image_size)) for p in paths[i : i + batch]]) for i in starts
    ]
    tensors = [images.to(check.device) for images in decoded]
    with torch.inference_mode():
        bare = batch * check.rate(lambda i: model(tensors[i % len(tensors)]), s.forward_s)
    check.add("bare forward on decoded device tensors, fp32", bare, "photos/s", "same model and batches")
    for workers, rate in rates.items():
        check.add(f"ratio embed / bare forward, --workers {workers}", rate / bare, "x", "1: the model's pace")
    model.to(memory_format=torch.channels_last)
    tensors = [images.contiguous(memory_format=torch.channels_last) for images in tensors]
    with torch.inference_mode(), torch.autocast(check.device.type, dtype=torch.bfloat16):
        fast = batch * check.rate(lambda i: model(tensors[i % len(tensors)]), s.forward_s)
    check.add("bare forward, bf16 autocast and channels_last", fast, "photos/s", "what embedding could reach")


# -- 5. catalogue search -----------------------------------------------------------------------------------


def search(check: Check) -> None:
    s = check.sizes
    emb, owner = clustered(s.search_photos, s.search_photos // 14, 512, seed=2)
    codes = IdentityCodes.of(np.array([f"star{o:05d}" for o in owner]))
    index = CatalogueIndex(Path("gpu_check"), Path("/"), emb, np.arange(len(emb)), codes, {})
    rng = np.random.default_rng(3)
    noise = 0.6 * rng.standard_normal((s.search_queries, 512), dtype=np.float32) / np.sqrt(512)
    queries = emb[rng.integers(0, len(emb), s.search_queries)] + noise
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    first = timed_ms(lambda: index.rank(queries[:1], 5))  # makes the float16 copy and checks it
    ours = [timed_ms(partial(index.rank, q[None], 5)) for q in queries]
    what = (
        f"one photo vs {len(emb):,} photos of {len(codes.names):,} individuals, 512-d, {len(queries)} queries"
    )
    note = f"{what}; the index has no device: identify searches on the CPU, on a GPU machine too"
    check.add("`CatalogueIndex.rank`, median", statistics.median(ours), "ms", note, host=True)
    check.add("`CatalogueIndex.rank`, 90th percentile", float(np.percentile(ours, 90)), "ms", host=True)
    check.add("first search after opening (float16 copy, its check)", first, "ms", host=True)
    gallery, code_t = torch.from_numpy(emb).to(check.device), torch.from_numpy(codes.codes).to(check.device)

    def on_device(q: np.ndarray) -> list[int]:
        scores = gallery @ torch.from_numpy(q).to(check.device)
        best = torch.full((len(codes.names),), -torch.inf, device=check.device)
        return best.scatter_reduce(0, code_t, scores, reduce="amax").topk(5).indices.tolist()

    on_device(queries[0])  # warm-up
    device_ms = [timed_ms(partial(on_device, q)) for q in queries]
    same = all(on_device(q) == index.rank(q[None], 5).identity[0].tolist() for q in queries[:10])
    agree = "yes" if same else "no"
    name = "the same rule on the resident gallery (bench code, not the project's), median"
    note = f"matrix-vector product, per-individual max, top 5; same top 5 as the index: {agree}"
    check.add(name, statistics.median(device_ms), "ms", note)
