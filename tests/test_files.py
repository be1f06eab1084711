"""The one atomic writer: all or nothing, the umask's file mode, any file name in a text file."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from megastarid.core.errors import UserError
from megastarid.core.files import append_text, atomic_write, atomic_write_text, read_text, write_json
from megastarid.data.resize import _atomic
from megastarid.models.checkpoints import save_checkpoint
from megastarid.models.network import build_model

#: a file name that is not UTF-8 (Latin-1 "é"), as Linux allows; Python holds it as a lone surrogate
LATIN1_NAME = os.fsdecode(b"caf\xe9.jpg")


@pytest.fixture
def restore_umask():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failure_mid_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path: Path, error) -> None:
    target = tmp_path / "history.csv"
    target.write_text("old\n")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("half a fi")
        raise error

    with pytest.raises(type(error)):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv"]


def test_the_new_content_replaces_the_old_in_one_step(tmp_path: Path) -> None:
    target = tmp_path / "run_summary.json"
    target.write_text("old")
    seen = []
    atomic_write(target, lambda tmp: (seen.append(tmp), tmp.write_text("new")))
    assert target.read_text() == "new"
    (tmp,) = seen
    assert tmp.parent == tmp_path and tmp.name.startswith(".run_summary.json.") and tmp.suffix == ".tmp"
    assert not tmp.exists()
    assert write_json(target, {"a": [1, 2]}) == target
    assert target.read_text() == '{\n  "a": [\n    1,\n    2\n  ]\n}\n'
    assert json.loads(target.read_text()) == {"a": [1, 2]}


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
@pytest.mark.usefixtures("restore_umask")
def test_the_file_mode_follows_the_umask(tmp_path: Path, mask: int) -> None:
    os.umask(mask)
    atomic_write_text(tmp_path / "history.csv", "epoch\n")
    save_checkpoint(tmp_path / "best.pth", build_model("test_resnet", 8), {"backbone": "test_resnet"})
    (tmp_path / "plain.txt").write_text("made by open()")
    expected = 0o666 & ~mask
    assert _mode(tmp_path / "plain.txt") == expected
    assert _mode(tmp_path / "history.csv") == expected
    assert _mode(tmp_path / "best.pth") == expected


def test_a_non_utf8_file_name_round_trips_through_a_text_file(tmp_path: Path) -> None:
    listed = f"/data/{LATIN1_NAME}\n"
    atomic_write_text(tmp_path / "paths.txt", listed)
    assert (tmp_path / "paths.txt").read_bytes() == b"/data/caf\xe9.jpg\n"  # the bytes as they were
    assert read_text(tmp_path / "paths.txt") == listed
    append_text(tmp_path / "paths.txt", listed)
    assert read_text(tmp_path / "paths.txt").splitlines() == [listed.strip()] * 2
    # ... and the target's own name may be such a name too
    atomic_write_text(tmp_path / LATIN1_NAME, "x")
    assert sorted(os.listdir(os.fsencode(tmp_path))) == [b"caf\xe9.jpg", b"paths.txt"]


def test_a_very_long_file_name_still_gets_a_temp_file(tmp_path: Path) -> None:
    name = "x" * 250 + ".csv"
    atomic_write_text(tmp_path / name, "ok")
    assert (tmp_path / name).read_text() == "ok"


def test_prepare_turns_a_write_error_into_one_line_naming_the_file(tmp_path: Path) -> None:
    out = tmp_path / "dst" / "img.jpg"

    def disk_full(tmp: Path) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(UserError, match=rf"cannot write {out}: No space left on device"):
        _atomic(out, disk_full)
    assert list((tmp_path / "dst").iterdir()) == []
