"""The one command for a lent CUDA machine: the GPU figures the project lacks, in one markdown report.

Five sections (``bench/gpu_sections.py``), each in a time box so that a slow one cannot eat the budget, and
a failing one records its one-line error while the next one runs; each goes through the project's own code:

1. training images/s of convnext_tiny at 384 px (Fabric ``bf16-mixed``, channels_last): ``Trainer.step`` on
   synthetic device tensors, and ``fit`` fed by the star training data loader (reduced JPEG decode, the
   star training transform, P x K batches) from 1600x1200 JPEGs; the ratio says if the loader starves the GPU;
2. ``python -m megastarid.finetune`` stopped by a SIGTERM to its process group mid-epoch, then ``--resume``:
   its history.csv against the uninterrupted run's;
3. ``rank_queries`` at WildlifeReID-10k scale (30,561 x 109,927, 512-d): wall time and peak GPU memory;
4. ``Embedder.embed`` of JPEG paths against the bare forward pass on device tensors;
5. ``CatalogueIndex.rank``: one photo against 100,000 catalogue photos.

``--smoke`` runs the same code at toy size on the CPU (tests/test_gpu_check.py does, so it cannot rot).
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from gpu_sections import FULL, SMOKE, Check, Figure, Sizes, evaluation, identify, resume, search, training
from megastarid.core.console import run_main
from megastarid.core.errors import UserError
from megastarid.core.files import atomic_write_text
from megastarid.core.options import Names
from megastarid.core.parsing import parse_options

#: section name -> (title in the report, body)
SECTIONS: dict[str, tuple[str, Callable[[Check], None]]] = {
    "train": ("1. Training throughput: synthetic tensors against the real data loader", training),
    "resume": ("2. SIGTERM mid-epoch and --resume against the uninterrupted history", resume),
    "evaluate": ("3. Evaluation at WildlifeReID-10k scale", evaluation),
    "identify": ("4. identify's embedding against the bare forward pass", identify),
    "search": ("5. Catalogue search of one photo", search),
}
#: each section's time box in seconds: 440 s in all, so the whole run stays under 8 minutes
BOXES = {"train": 150, "resume": 110, "evaluate": 70, "identify": 65, "search": 45}
#: seconds all sections may take together: with start-up and the report the run stays under 8 minutes
BUDGET_S = sum(BOXES.values())


@dataclass
class GpuCheckOptions:
    """Where the report goes and which sections run."""

    out: Path = Path("gpu_check.md")
    """the markdown report (also printed); rewritten after every section, so a killed run leaves one"""
    smoke: bool = False
    """every section at toy size on the CPU: shows that the code paths run, needs no CUDA"""
    sections: Names = tuple(SECTIONS)
    """sections to run, comma-separated"""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.sections) - set(SECTIONS))
        if unknown or not self.sections:
            raise UserError(
                f"--sections: got {', '.join(unknown) or 'none'}; choose from {', '.join(SECTIONS)}"
            )


@dataclass
class Section:
    title: str
    box: int  # seconds
    figures: list[Figure] = field(default_factory=list)
    status: str = "not run"
    seconds: float = 0.0


class SectionTimeout(BaseException):
    """The time box's alarm; a BaseException, so that no ``except Exception`` inside a section swallows it."""


@contextlib.contextmanager
def time_box(seconds: int) -> Iterator[None]:
    """Raise ``SectionTimeout`` in the main thread after ``seconds`` (a SIGALRM: the trainer's SIGINT and
    SIGTERM handling is left alone, and child processes do not inherit the alarm)."""

    def expire(signum: int, frame: Any) -> None:
        raise SectionTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(max(1, seconds))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_section(
    section: Section, body: Callable[[Check], None], sizes: Sizes, device: torch.device, work: Path
) -> None:
    """Run one section in its time box: its status is ok, its one-line error (the traceback goes to stderr)
    or the time-out; the figures it measured before stay either way."""
    print(f"gpu_check: {section.title} ...", file=sys.stderr, flush=True)
    check = Check(sizes, device, work, section.box, section.figures)
    start = time.perf_counter()
    try:
        with time_box(section.box):
            body(check)
        section.status = "ok"
    except SectionTimeout:
        section.status = f"timed out after its {section.box} s box (the figures above came before)"
    except Exception as err:  # any failure is this section's result; the next one runs
        traceback.print_exc()
        section.status = "error: " + f"{type(err).__name__}: {str(err).strip()}".splitlines()[0][:300]
    section.seconds = time.perf_counter() - start
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def environment(device: torch.device) -> list[tuple[str, str]]:
    """The machine and software the figures come from."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        memory = f"{props.total_memory / 2**30:.1f} GiB"
        name = f"{props.name}, {memory}, compute capability {props.major}.{props.minor}"
        bf16 = "supported" if torch.cuda.is_bf16_supported() else "not supported"
    else:
        name, bf16 = f"CPU ({platform.machine()}): CPU smoke, toy sizes", "n/a"
    rows = [
        ("device", name),
        ("torch", torch.__version__),
        ("CUDA (torch's build)", str(torch.version.cuda)),
        ("cuDNN", str(torch.backends.cudnn.version())),
        ("bf16", bf16),
    ]
    if device.type == "cuda" and shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        rows.append(("NVIDIA driver", command_output(query)))
    threads = f"torch threads {torch.get_num_threads()}"
    host = f"{os.cpu_count()} CPU cores, {threads}, Python {platform.python_version()}"
    commit = command_output(["git", "rev-parse", "--short", "HEAD"]) if shutil.which("git") else "unknown"
    return [
        *rows,
        ("host", host),
        ("commit", commit),
        ("date", datetime.now().astimezone().isoformat("T", "seconds")),
    ]


def command_output(command: list[str]) -> str:
    lines = subprocess.run(command, capture_output=True, text=True, check=False).stdout.splitlines()
    return lines[0].strip() if lines else "unknown"


def show(value: float | int | str) -> str:
    if isinstance(value, str | int) or not math.isfinite(value):
        return str(value)
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"


def report(env: list[tuple[str, str]], sections: Sequence[Section], smoke: bool, seconds: float) -> str:
    """The markdown report: the machine, then each section's figures and status."""
    lines = ["# MegaStarID GPU check", ""]
    if smoke:
        lines += [
            "**CPU smoke** (`--smoke`): every section at toy size on the CPU. The figures show that the code "
            "paths run; they say nothing about a GPU.",
            "",
        ]
    lines += ["| | |", "|---|---|", *(f"| {key} | {value} |" for key, value in env)]
    lines += [f"| wall time | {seconds:.0f} s (sections boxed to {BUDGET_S} s in all) |", ""]
    for section in sections:
        lines += [
            f"## {section.title}",
            "",
            "| figure | value | unit | where | notes |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {f.name} | {show(f.value)} | {f.unit} | {f.where} | {f.note} |" for f in section.figures
        ]
        lines += ["", f"Status: {section.status} ({section.seconds:.0f} s of a {section.box} s box).", ""]
    return "\n".join(lines)


def gpu_check(options: GpuCheckOptions) -> int:
    """Run the sections in turn, rewriting the report after each; 0 when every section is ok."""
    if not options.smoke and not torch.cuda.is_available():
        raise UserError(
            "bench/gpu_check.py needs a CUDA GPU and torch sees none; without one, run it with --smoke"
        )
    started = time.perf_counter()
    if options.smoke:  # toy sizes gain nothing from threads, and a shared CPU machine loses much to them
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"  # the finetune run in a process of its own
    device = torch.device("cpu" if options.smoke else "cuda")
    sizes = SMOKE if options.smoke else FULL
    env = environment(device)
    sections: list[Section] = []
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as work:
        for name in options.sections:
            title, body = SECTIONS[name]
            left = BUDGET_S - math.ceil(time.perf_counter() - started)
            section = Section(title, min(BOXES[name], left))
            sections.append(section)
            if left > 0:
                run_section(section, body, sizes, device, Path(work))
            else:
                section.status = "skipped: the time budget is spent"
            text = report(env, sections, options.smoke, time.perf_counter() - started)
            atomic_write_text(options.out, text)
    print(text)
    return 0 if all(section.status == "ok" for section in sections) else 1


def main(argv: Sequence[str] | None = None) -> int:
    return gpu_check(parse_options(GpuCheckOptions, argv, "bench/gpu_check.py", __doc__.splitlines()[0]))


if __name__ == "__main__":
    sys.exit(run_main(main))
