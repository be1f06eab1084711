"""Issue 9, runs: run folders, the trainer, checkpoints, the grid runner and evaluation under bad input
and faults (non-UTF-8 names, kills, two runs at once, NaN weights, unwritable folders, junk files)."""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from megastarid import cli, evaluate, finetune
from megastarid.core.console import run_main
from megastarid.core.errors import UserError
from megastarid.core.files import append_lines, atomic_write_all, read_lines
from megastarid.core.runfiles import RUN_LOCK, RUN_OUTPUT_FILES
from megastarid.data.sources import load_star_catalogue
from megastarid.data.synth import generate_stars
from megastarid.evaluation.embeddings import EmbeddingSet, load_embeddings, save_embeddings
from megastarid.models.checkpoints import load_checkpoint
from megastarid.models.network import build_model
from megastarid.training.config import FinetuneConfig
from megastarid.training.loop import fit
from megastarid.training.runfolder import hold_run_folder, lock_run_folder
from megastarid.training.step import Trainer
from megastarid.training.strategies import finetune_task
from test_evaluate import embedding_arrays

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: a file-name part that is not UTF-8 (Latin-1 "é"), as Linux allows; Python holds it as a lone surrogate
LATIN1 = os.fsdecode(b"caf\xe9")
TINY = [
    "--backbone", "test_resnet", "--image-size", "32", "--batch-size", "8", "--num-instances", "2",
    "--workers", "0", "--epochs", "1", "--warmup-epochs", "0", "--lr", "1e-3", "--eval-batch-size", "32",
]  # fmt: skip


@pytest.fixture(scope="module")
def stars(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_stars(tmp_path_factory.mktemp("data") / "stars", identities=6, image_size=48)


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("megastarid: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def config(run: Path, stars: Path, **changes) -> FinetuneConfig:
    values = dict(
        output_dir=run, star_root=stars, backbone="test_resnet", image_size=32, epochs=1, batch_size=8,
        num_instances=2, workers=0, warmup_epochs=0, lr=1e-3,
    )  # fmt: skip
    return FinetuneConfig(**{**values, **changes})


# ----------------------------------------------------------------- 1. non-UTF-8 file names end to end


def test_a_name_with_a_newline_stays_one_line_of_a_path_list(tmp_path: Path) -> None:
    names = [f"/s/{LATIN1}.jpg", "/s/two\nlines.jpg", "/s/back\\slash\\n.jpg", "/s/cr\r.jpg", "/s/plain.jpg"]
    log = tmp_path / "bad_images.txt"
    append_lines(log, names[:2])
    append_lines(log, names[2:])
    assert len(log.read_bytes().splitlines()) == 5  # one line per name, whatever the name holds
    assert read_lines(log) == names
    assert b"caf\xe9.jpg" in log.read_bytes()  # the name's own bytes, not a replacement character
    assert read_lines(tmp_path / "missing.txt") == []


@pytest.mark.slow
def test_non_utf8_names_train_report_resume_and_evaluate(tmp_path: Path, stars: Path, capsys) -> None:
    root = shutil.copytree(stars, tmp_path / "stars")
    catalogue = load_star_catalogue(root)
    query = Path(catalogue.loc[catalogue["split"] == "test", "path"].iloc[0])
    outing = query.parent.rename(query.parent.with_name(query.parent.name + "_" + LATIN1))  # its folder too
    query = outing / query.name
    query = query.rename(query.with_name(LATIN1 + ".jpg"))
    train = catalogue.loc[catalogue["split"] == "train", "path"].tolist()
    broken = [Path(train[-1]).with_name(f"bad{LATIN1}.jpg"), Path(train[-2]).with_name("two\nlines.jpg")]
    for path, source in zip(broken, train[-2:][::-1], strict=True):
        Path(source).rename(path)
        path.write_bytes(b"\xff\xd8 not a jpeg")
    run = tmp_path / "run"

    assert run_main(finetune.main, ["--output-dir", str(run), "--star-root", str(root), *TINY]) == 0
    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["status"] == "finished" and summary["bad_images"] == 2
    assert sorted(read_lines(run / "bad_images.txt")) == sorted(map(str, broken))
    assert len((run / "bad_images.txt").read_bytes().splitlines()) == 2
    for name in ("star_query_metrics.csv", "star_folder_metrics.csv", "folder_metrics.png", "cmc_curve.png"):
        assert (run / name).is_file(), name
    assert os.fsencode(query) in (run / "star_query_metrics.csv").read_bytes()
    saved = load_embeddings(run / "star_embeddings.npz")
    assert str(query) in saved.query_paths.tolist()

    assert run_main(finetune.main, ["--output-dir", str(run), "--resume", "--epochs", "2"]) == 0
    assert json.loads((run / "run_summary.json").read_text())["bad_images"] == 2
    out = tmp_path / "eval"
    argv = ["--checkpoint", str(run / "best.pth"), "--star-root", str(root), "--output-dir", str(out)]
    assert run_main(evaluate.main, argv) == 0
    assert str(query) in load_embeddings(out / "star_embeddings.npz").query_paths.tolist()
    again = tmp_path / "again"
    argv = ["--embeddings", str(out / "star_embeddings.npz"), "--output-dir", str(again)]
    assert run_main(evaluate.main, argv) == 0
    assert (again / "folder_metrics.png").is_file()

    split = tmp_path / "split.csv"
    code = run_main(cli.main, ["data", "check", "--star-root", str(root), "--export-split", str(split)])
    assert code == 0
    assert os.fsencode(query) in split.read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))


# ----------------------------------------------------------------- 2. the grid takes its phases with it

GRID_TRAIN_ARGS = [
    "--backbone", "test_resnet", "--no-pretrained", "--embedding-dim", "32", "--image-size", "32",
    "--batch-size", "8", "--num-instances", "2", "--workers", "0",
]  # fmt: skip


def processes_mentioning(text: str) -> list[int]:
    """The pids of live processes whose command line holds ``text`` (zombies left out)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if os.fsencode(text) in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def wait_until(condition, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_phase_dies_with_its_runner_even_by_sigkill(tmp_path: Path) -> None:
    marker = str(tmp_path / "phase-marker")
    runner = textwrap.dedent(
        """
        import sys
        from megastarid.experiments.runner import Processes
        marker = sys.argv[1] + "-marker"  # in the phase's command line only, not in this one's
        with open(sys.argv[1] + ".log", "w") as log, Processes().start(
            [sys.executable, "-c", "import time; time.sleep(120)", marker], log
        ) as process:
            print(process.pid, flush=True)
            process.wait()
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", runner, marker.removesuffix("-marker")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert processes_mentioning(marker) == [child]
        parent.kill()
        parent.wait()
        assert wait_until(lambda: not processes_mentioning(marker), 10), "the phase outlived its runner"
    finally:
        parent.kill()
        for pid in processes_mentioning(marker):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM])
def test_hangup_and_terminate_stop_the_grid_like_ctrl_c(signum) -> None:
    from megastarid.experiments.runner import stop_signals_as_interrupt

    before = signal.getsignal(signum)
    with pytest.raises(KeyboardInterrupt), stop_signals_as_interrupt():
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler raises at once
    assert signal.getsignal(signum) == before


@pytest.mark.slow
def test_sigkill_of_the_grid_leaves_no_phase_running_and_the_rerun_completes(
    tmp_path: Path, synthetic_stars: Path
) -> None:
    out = tmp_path / "grid"
    command = [
        sys.executable, "-m", "megastarid.experiments.grid_search", "--strategies", "star_only",
        "--losses", "circle", "--epochs", "2", "--output-dir", str(out), "--star-root", str(synthetic_stars),
        "--", *GRID_TRAIN_ARGS,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEGASTARID_CACHE": str(tmp_path / "cache")}
    run_dir = out / "star_only-circle-seed0" / "finetune"
    grid = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # mid-experiment: the phase holds its run folder and trains
        assert wait_until(lambda: (run_dir / "config.yaml").is_file(), 240, 0.02), "the phase never started"
        phases = processes_mentioning(str(run_dir))
        assert phases, "no phase process found"
        grid.kill()
        grid.wait()
        assert wait_until(lambda: not processes_mentioning(str(run_dir)), 30), (
            f"phase processes survived the grid: {processes_mentioning(str(run_dir))}"
        )
        assert not (run_dir / "run_summary.json").exists()  # stopped with the grid, not left to finish
    finally:
        grid.kill()
        for pid in processes_mentioning(str(run_dir)):
            os.kill(pid, signal.SIGKILL)
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_completed"] == 2
    assert pd.read_csv(out / "grid_results.csv")["status"].tolist() == ["finished"]


# ----------------------------------------------------------------- 3. one run per run folder


def test_a_held_run_folder_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    run = tmp_path / "run"
    refused = pytest.raises(UserError, match=rf"is in use by another run \(pid {os.getpid()}\)")
    with hold_run_folder(run, resume=False, overwrite=False), refused:
        lock_run_folder(run)
    with hold_run_folder(run, resume=False, overwrite=False):  # released at the end of the block
        pass
    # a holder killed without any clean-up leaves no stale lock: the kernel released it
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from megastarid.training.runfolder import lock_run_folder as l; "
         f"from pathlib import Path; import time; l(Path({str(run)!r})); print('held', flush=True); "
         "time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match=rf"\(pid {holder.pid}\)"):
        lock_run_folder(run)
    holder.kill()
    holder.wait()
    os.close(lock_run_folder(run))


@pytest.mark.slow
def test_two_finetunes_started_together_into_one_folder(tmp_path: Path, stars: Path) -> None:
    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "megastarid.finetune", "--output-dir", str(run), "--star-root", str(stars),
        *TINY, "--epochs", "2",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    both = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]  # fmt: skip
    results = [(p.pid, p.wait(timeout=400), p.communicate()[1]) for p in both]
    codes = sorted(code for _, code, _ in results)
    assert codes == [0, 2], results
    (winner,) = [pid for pid, code, _ in results if code == 0]
    (loser_err,) = [err for _, code, err in results if code == 2]
    assert loser_err.strip().splitlines()[-1] == (
        f"megastarid: error: --output-dir {run} is in use by another run (pid {winner}): wait for it to end, "
        "or stop it and --resume"
    )
    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_completed"] == 2
    assert pd.read_csv(run / "history.csv")["epoch"].tolist() == [0, 1, 2]
    assert load_checkpoint(run / "last.pth")["run"]["epoch"] == 2


# ----------------------------------------------------------------- 4 and 10. checkpoints


def write_checkpoint(path: Path, config: object = None, weights=None) -> Path:
    model = build_model("test_resnet", 16)
    config = {"backbone": "test_resnet", "embedding_dim": 16, "image_size": 32} if config is None else config
    state = model.state_dict() if weights is None else weights(model.state_dict())
    torch.save({"model": state, "config": config}, path)
    return path


class Payload:
    def __reduce__(self):
        return (print, ("this would run",))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_text("just some text\n"), "is not a PyTorch checkpoint file"),
        (lambda p: p.write_bytes(b""), "is an empty file"),
        (lambda p: p.mkdir(), "is a folder, not a checkpoint file"),
        (lambda p: write_checkpoint(p, {"embedding_dim": 16}), "config's backbone must be a timm model name"),
        (
            lambda p: write_checkpoint(p, {"backbone": 7, "embedding_dim": 16}),
            "backbone must be a timm model",
        ),
        (
            lambda p: write_checkpoint(p, {"backbone": "test_resnet"}),
            "embedding_dim must be a positive integer",
        ),
        (
            lambda p: write_checkpoint(p, {"backbone": "test_resnet", "embedding_dim": "16"}),
            "embedding_dim must be a positive integer, got '16'",
        ),
        (
            lambda p: write_checkpoint(
                p, {"backbone": "test_resnet", "embedding_dim": 16, "image_size": [1]}
            ),
            "image_size must be a positive integer",
        ),
        (lambda p: write_checkpoint(p, ["not", "a", "mapping"]), "its config is a list, not a mapping"),
        (
            lambda p: write_checkpoint(p, {"backbone": "no_such_net", "embedding_dim": 16, "image_size": 32}),
            "its backbone 'no_such_net' is not a timm model name",
        ),
        (
            lambda p: torch.save({"model": {}, "config": {}, "extra": Payload()}, p),
            "holds code or objects other than tensors and plain values; they are not loaded, for safety",
        ),
        (
            lambda p: write_checkpoint(
                p, weights=lambda w: {**w, "neck.weight": w["neck.weight"] * math.nan}
            ),
            "1 weight tensor(s) hold NaN/inf values (e.g. neck.weight)",
        ),
    ],
)
def test_a_bad_checkpoint_is_one_line_naming_it(tmp_path: Path, capsys, make, message) -> None:
    checkpoint = tmp_path / "model.pth"
    make(checkpoint)
    argv = ["--checkpoint", str(checkpoint), "--output-dir", str(tmp_path / "out")]
    assert run_main(evaluate.main, argv) == 2
    err = one_line_error(capsys)
    assert f"checkpoint {checkpoint}" in err and message in err, err
    assert "weights_only=False" not in err and "--backbone" not in err
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_without_an_image_size_asks_for_it(tmp_path: Path, stars: Path, capsys) -> None:
    checkpoint = write_checkpoint(tmp_path / "model.pth", {"backbone": "test_resnet", "embedding_dim": 16})
    argv = ["--checkpoint", str(checkpoint), "--star-root", str(stars), "--output-dir", str(tmp_path / "out")]
    assert run_main(evaluate.main, argv) == 2
    assert "does not say its image size: pass --image-size" in one_line_error(capsys)


def test_nan_embeddings_are_the_models_fault_not_unreadable_photos(
    tmp_path: Path, stars: Path, capsys
) -> None:
    def broken(weights):  # finite weights whose BatchNorm turns every photo into NaN
        return {**weights, "bn.running_var": -torch.ones_like(weights["bn.running_var"])}

    checkpoint = write_checkpoint(tmp_path / "model.pth", weights=broken)
    out = tmp_path / "out"
    argv = ["--checkpoint", str(checkpoint), "--star-root", str(stars), "--output-dir", str(out)]
    assert run_main(evaluate.main, argv) == 2
    err = one_line_error(capsys)
    assert f"checkpoint {checkpoint}: the model gives NaN/inf embeddings for readable photos" in err
    assert not list(out.glob("star_*"))


# ----------------------------------------------------------------- 5. any --ks, reports whole or not at all


def test_reports_for_ks_without_1(tmp_path: Path, capsys) -> None:
    npz = save_embeddings(tmp_path / "e.npz", EmbeddingSet.from_arrays(**embedding_arrays()))
    out = tmp_path / "out"
    assert run_main(evaluate.main, ["--embeddings", str(npz), "--ks", "5", "--output-dir", str(out)]) == 0
    summary = json.loads((out / "star_evaluation_summary.json").read_text())
    assert "CMC@5" in summary and "CMC@1" not in summary
    assert "CMC@5" in pd.read_csv(out / "star_folder_metrics.csv").columns
    for name in (
        "star_query_metrics.csv",
        "star_identity_metrics.csv",
        "cmc_curve.png",
        "folder_metrics.png",
    ):
        assert (out / name).is_file(), name


def test_a_failing_report_writes_no_part_of_the_set(tmp_path: Path, monkeypatch, capsys) -> None:
    npz = save_embeddings(tmp_path / "e.npz", EmbeddingSet.from_arrays(**embedding_arrays()))
    out = tmp_path / "out"
    out.mkdir()
    (out / "star_identity_metrics.csv").write_text("the earlier report\n")

    def fail(*args, **kwargs):
        raise RuntimeError("the plot failed")

    monkeypatch.setattr("megastarid.evaluation.reports.folders_figure", fail)
    with pytest.raises(RuntimeError, match="the plot failed"):
        evaluate.main(["--embeddings", str(npz), "--output-dir", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["star_identity_metrics.csv"]
    assert (out / "star_identity_metrics.csv").read_text() == "the earlier report\n"


def test_atomic_write_all_is_all_or_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("old a")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write_all({tmp_path / "a.txt": lambda t: t.write_text("new a"), tmp_path / "b.txt": fail})
    assert (
        sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
        and (tmp_path / "a.txt").read_text() == "old a"
    )
    atomic_write_all(
        {tmp_path / "a.txt": lambda t: t.write_text("new a"), tmp_path / "b.txt": lambda t: t.write_text("b")}
    )
    assert (tmp_path / "a.txt").read_text() == "new a" and (tmp_path / "b.txt").read_text() == "b"


# ----------------------------------------------------------------- 6. unwritable output folders


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path: Path, stars: Path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    run = blocker / "run"  # a folder under a regular file: no one, root included, can create it
    assert run_main(finetune.main, ["--output-dir", str(run), "--star-root", str(stars), *TINY]) == 2
    assert f"--output-dir {run}: cannot create it" in one_line_error(capsys)

    npz = save_embeddings(tmp_path / "e.npz", EmbeddingSet.from_arrays(**embedding_arrays()))
    assert run_main(evaluate.main, ["--embeddings", str(npz), "--output-dir", str(run)]) == 2
    assert f"--output-dir {run}: cannot write there" in one_line_error(capsys)


def test_a_folder_without_write_permission_is_one_line(tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pth").write_bytes(b"resume me")
    real_open = os.open

    def refuse(path, *args, **kwargs):
        if Path(path).parent == run:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    refused = rf"^--output-dir {run}: cannot write there \(Permission denied\)$"
    with pytest.raises(UserError, match=refused), hold_run_folder(run, resume=True, overwrite=False):
        pass
    npz = save_embeddings(tmp_path / "e.npz", EmbeddingSet.from_arrays(**embedding_arrays()))
    with pytest.raises(UserError, match=rf"^--output-dir {run}: cannot write there \(Permission denied\)$"):
        evaluate.main(["--embeddings", str(npz), "--output-dir", str(run)])


# ----------------------------------------------------------------- 7 and 9. what a run removes


def test_a_run_removes_the_temp_files_of_its_own_killed_writes_only(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pth").write_bytes(b"x")
    leftovers = [".last.pth.0a1b2c3d.tmp", ".best.pth.deadbeef.tmp", ".history.csv.00000000.tmp",
                 ".star_embeddings.npz.12345678.tmp"]  # fmt: skip
    kept = [".notes.txt.0a1b2c3d.tmp", "my.last.pth.0a1b2c3d.tmp", ".last.pth.tmp", ".last.pth.0A1B2C3D.tmp",
            ".last.pth.0a1b2c3d.tmp.keep", "notes.txt"]  # fmt: skip
    for name in leftovers + kept:
        (run / name).write_bytes(b"1" * 10)
    with hold_run_folder(run, resume=True, overwrite=False):
        pass
    assert sorted(p.name for p in run.iterdir()) == sorted([*kept, "last.pth", RUN_LOCK])


def test_overwrite_removes_exactly_the_files_a_run_writes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "tensorboard").mkdir(parents=True)
    for name in RUN_OUTPUT_FILES:
        (run / name).write_text("from the old run")
    user = ["star_annotations.csv", "star_notes.txt", "notes.md", "wildlife_photos.csv", "best.pth.bak"]
    for name in user:
        (run / name).write_text("the user's")
    (run / "photos").mkdir()
    with hold_run_folder(run, resume=False, overwrite=True):
        pass
    assert sorted(p.name for p in run.iterdir()) == sorted([*user, "photos", RUN_LOCK])


# ----------------------------------------------------------------- 8. a failed start leaves no run behind


def test_start_up_failures_leave_no_run_folder_to_refuse_the_retry(tmp_path: Path, capsys) -> None:
    from conftest import make_star_tree

    one = make_star_tree(tmp_path / "one", {"S": {"a": {"2024-01-01": 4, "2024-02-01": 4, "2024-03-01": 4}}})
    no_queries = make_star_tree(tmp_path / "noq", {"S": {"a": {"2024-01-01": 4}, "b": {"2024-02-01": 4}}})
    run = tmp_path / "run"
    small = [*TINY, "--batch-size", "4"]
    for root in (one, no_queries):
        assert run_main(finetune.main, ["--output-dir", str(run), "--star-root", str(root), *small]) == 2
        one_line_error(capsys)
        assert not run.exists()


# ----------------------------------------------------------------- 11. hostile embeddings files


def npz_with(tmp_path: Path, name: str, member: bytes) -> Path:
    good = save_embeddings(tmp_path / "good.npz", EmbeddingSet.from_arrays(**embedding_arrays()))
    bad = tmp_path / "bad.npz"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(bad, "w") as target:
        for info in source.infolist():
            target.writestr(info.filename, member if info.filename == name else source.read(info))
    return bad


def npy_header(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode() + b" "
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (npy_header((2**36, 1024)) + b"\0" * 64, "claims shape (68719476736, 1024) of float32"),
        (pickle.dumps(np.zeros((12, 8))), "is not a plain .npy array"),
        (npy_header((12, 8), "|O") + pickle.dumps([1] * 96), "holds Python objects (a pickle)"),
    ],
)
def test_a_hostile_embeddings_file_is_one_line(tmp_path: Path, capsys, member: bytes, message: str) -> None:
    bad = npz_with(tmp_path, "query_embeddings.npy", member)
    assert run_main(evaluate.main, ["--embeddings", str(bad), "--output-dir", str(tmp_path / "out")]) == 2
    err = one_line_error(capsys)
    assert f"{bad}: not a readable .npz embeddings file (query_embeddings " in err and message in err, err


# ----------------------------------------------------------------- 12. weights that become NaN


def test_weights_that_become_nan_stop_the_run_and_are_never_saved(
    tmp_path: Path, stars: Path, monkeypatch
) -> None:
    cfg = config(tmp_path / "run", stars, epochs=2)
    real_step = Trainer.step

    def diverging(self: Trainer, images, labels):
        losses = real_step(self, images, labels)
        with torch.no_grad():
            self.module.bn.weight.fill_(math.inf)  # finite loss, weights gone (the BNNeck of every head)
        return losses

    monkeypatch.setattr(Trainer, "step", diverging)
    with pytest.raises(UserError, match=r"weights became NaN/inf in epoch 1: training diverged; lower --lr"):
        fit(cfg, lambda: finetune_task(cfg))
    for name in ("best.pth", "last.pth"):
        if (cfg.output_dir / name).exists():  # the epoch-0 state; loads, as it is finite
            assert load_checkpoint(cfg.output_dir / name)["epoch"] == 0
    assert not (cfg.output_dir / "run_summary.json").exists()
