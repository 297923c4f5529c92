"""Atomic writes of the run layer: the old file survives a failed write, interrupted writes are cleaned up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from hhcl.atomic import atomic_torch_save, atomic_write_bytes, remove_stray_tmp, write_tmp


def test_atomic_writes_leave_old_file_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "sub" / "file.bin"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"

    def broken(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"a": torch.ones(2)}, target)
    monkeypatch.undo()
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]
    atomic_torch_save({"a": torch.ones(2)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.ones(2))


def test_remove_stray_tmp_deletes_only_interrupted_writes(tmp_path: Path) -> None:
    keep = tmp_path / "last.safetensors"
    keep.write_bytes(b"w")
    stray = write_tmp(keep, b"half")  # what a process killed between write and rename leaves
    other = tmp_path / "notes.tmp"  # not one of ours: no leading dot
    other.write_text("x")
    assert remove_stray_tmp(tmp_path) == [stray]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors", "notes.tmp"]
