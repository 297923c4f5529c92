"""The bfloat16 kernel check: on a CPU whose bf16 convolution is wrong (oneDNN's AMX kernels in torch 2.14),
hhcl's default oneDNN cap makes it right, and without the cap bf16 is refused with the fix named."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers.tiny_run import TINY

from hhcl.config import load_config
from hhcl.engine import Trainer
from hhcl.kernels import MIN_COSINE, ONEDNN_CAP, KernelError, check_cpu_bf16, cpu_bf16_cosine


def _has_amx() -> bool:
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def test_bf16_convolution_agrees_with_float64_under_hhcl() -> None:
    """hhcl imported first (as here): the probe convolution in bf16 is float64's up to bf16 rounding."""
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == ONEDNN_CAP.split("=")[1]
    gen = torch.Generator().manual_seed(1)
    x, w = torch.randn(4, 256, 4, 2, generator=gen), torch.randn(512, 256, 3, 3, generator=gen) / 48
    exact = F.conv2d(x.double(), w.double(), stride=2, padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = F.conv2d(x, w, stride=2, padding=1)
    assert F.cosine_similarity(low.double().flatten(1), exact.flatten(1)).min() > 0.999
    assert cpu_bf16_cosine() > MIN_COSINE
    check_cpu_bf16("train.amp=bf16")  # no error


def test_uncapped_kernels_refused_exactly_when_wrong() -> None:
    """With the cap lifted by the user, the check raises on an AMX CPU (whose bf16 kernels are wrong) and the
    message names the setting that fixes it; elsewhere it passes."""
    code = (
        "from hhcl.kernels import check_cpu_bf16, cpu_bf16_cosine\n"
        "print(round(cpu_bf16_cosine(), 3))\n"
        "check_cpu_bf16('train.amp=bf16')\n"
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "ALL"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    if _has_amx():
        assert proc.returncode == 1 and "KernelError" in proc.stderr, proc.stderr
        assert ONEDNN_CAP in proc.stderr and "train.amp=bf16" in proc.stderr
        assert float(proc.stdout) < MIN_COSINE  # the probe really disagrees (measured 0.40)
    else:
        assert proc.returncode == 0, proc.stderr
        assert float(proc.stdout) > MIN_COSINE


def test_training_refuses_wrong_bf16_kernels(synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU bf16 run on wrong kernels ends before its first step: a usage error (exit 2) with the fix."""
    import hhcl.kernels

    monkeypatch.setattr(hhcl.kernels, "cpu_bf16_cosine", lambda: 0.40)
    cfg = load_config("demo", [f"data.root={synth_root}", *TINY, "model.bn_group=8", "train.amp=bf16", "train.device=cpu"])
    (tmp_path / "run").mkdir()
    result = Trainer(cfg, tmp_path / "run").fit()
    assert result.exit_code == 2 and ONEDNN_CAP in result.message
    with pytest.raises(KernelError, match="cosine 0.40"):
        check_cpu_bf16("amp bf16")
