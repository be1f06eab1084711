"""bench/gpu_check.py, the command for a lent GPU, runs end to end at toy size on the CPU (``--smoke``), so
it is ready the day a GPU is lent; without CUDA and without --smoke it refuses in one line."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megastarid.core.errors import UserError

BENCH = Path(__file__).resolve().parents[1] / "bench"
SECTIONS = ("## 1. Training", "## 2. SIGTERM", "## 3. Evaluation", "## 4. identify", "## 5. Catalogue search")


def section_rows(report: str) -> dict[str, list[list[str]]]:
    """Each section heading -> the cells of its figure rows."""
    parts = re.split(r"^(## .+)$", report, flags=re.M)
    return {
        heading: [
            [cell.strip() for cell in line.strip("|").split("|")]
            for line in body.splitlines()
            if line.startswith("| ") and not line.startswith("| figure")
        ]
        for heading, body in zip(parts[1::2], parts[2::2], strict=True)
    }


@pytest.mark.slow
def test_the_smoke_run_reports_every_section_with_figures(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.md"
    command = [sys.executable, str(BENCH / "gpu_check.py"), "--smoke", "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = out.read_text()
    assert report in proc.stdout and "CPU smoke" in report
    for key in ("device", "torch", "CUDA (torch's build)", "host", "wall time"):
        assert f"| {key} |" in report
    rows = section_rows(report)
    assert [next(h for h in rows if h.startswith(s)) for s in SECTIONS] == list(rows)
    for heading, figures in rows.items():
        numbers = [row for row in figures if re.fullmatch(r"-?[\d,]+(\.\d+)?(e-?\d+)?", row[1])]
        assert numbers, f"{heading}: no figure"
        assert all(row[3] == "CPU smoke" for row in figures), heading
    assert report.count("Status: ok") == len(SECTIONS)
    resumed = {row[0]: row[1] for row in rows[next(h for h in rows if h.startswith("## 2."))]}
    assert resumed["resumed history.csv equals the uninterrupted one (rtol 1e-5)"] == "yes"
    assert resumed["exit code of `python -m megastarid.finetune` after SIGTERM to its process group"] == "130"
    assert resumed["batches done in the interrupted epoch"] != "0"  # stopped mid-epoch


def test_without_cuda_or_smoke_it_refuses_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    gpu_check = importlib.import_module("gpu_check")
    with pytest.raises(UserError, match=r"needs a CUDA GPU.*--smoke"):
        gpu_check.main(["--out", str(tmp_path / "report.md")])
    assert not (tmp_path / "report.md").exists()
