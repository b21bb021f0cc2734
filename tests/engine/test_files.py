"""Tests of bundle/engine/files.py: the one atomic writer and the one checkpoint loader."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from bundle.engine.errors import CheckpointError
from bundle.engine.files import (
    atomic_path,
    remove_stale_temporaries,
    safe_load,
    save_atomic,
    write_json_atomic,
    write_text_atomic,
)


def test_atomic_path_keeps_the_old_file_on_error(tmp_path: Path) -> None:
    target = write_text_atomic(tmp_path / "sub" / "a.txt", "old")
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(target) as tmp:
            assert tmp.parent == target.parent and tmp.name == f".a.txt.tmp.{os.getpid()}"
            tmp.write_text("partial")
            raise OSError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]  # no temporary left


def test_atomic_path_suffix_and_stale_temporaries(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "m.nii.gz", ".nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.name.startswith(".m.nii.gz.tmp.")
        tmp.write_bytes(b"x")
    (tmp_path / ".m.nii.gz.tmp.1.nii.gz").write_bytes(b"left by a kill")
    (tmp_path / ".other.pt.tmp.7").write_bytes(b"left by a kill")
    assert [p.name for p in remove_stale_temporaries(tmp_path, "m.nii.gz")] == [".m.nii.gz.tmp.1.nii.gz"]
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [".other.pt.tmp.7"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.nii.gz"]


def test_json_and_checkpoints_round_trip(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "s.json", {"a": [1, 2]})
    assert (tmp_path / "s.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ]\n}\n'
    save_atomic({"w": torch.arange(3)}, tmp_path / "c.pt")
    assert torch.equal(safe_load(tmp_path / "c.pt")["w"], torch.arange(3))


def test_safe_load_names_the_problem(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        safe_load(tmp_path / "missing.pt")
    save_atomic({"w": torch.arange(100000.0)}, tmp_path / "bad.pt")
    (tmp_path / "bad.pt").write_bytes((tmp_path / "bad.pt").read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        safe_load(tmp_path / "bad.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="the file is empty"):
        safe_load(tmp_path / "empty.pt")
    (tmp_path / "notes.pt").write_text("not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        safe_load(tmp_path / "notes.pt")
    torch.save({"obj": Path("x")}, tmp_path / "code.pt")
    with pytest.raises(CheckpointError, match="refused to load .* for safety") as err:
        safe_load(tmp_path / "code.pt")
    assert "weights_only=False" not in str(err.value) and "\n" not in str(err.value)
