"""A check that this CPU's bfloat16 kernels compute what float32 does, before a run trusts them.

torch 2.14's oneDNN returns wrong bf16 convolutions on CPUs with AMX tiles (Intel Sapphire Rapids and later):
ResNet's 3x3 stride-2 256->512 convolution on a 4x2 map, the shape of ``layer4`` at 64x32, comes out with
cosine 0.40 to float32, and later layers turn NaN. Nothing fails loudly, so ``amp=bf16`` on such a CPU would
train and evaluate on garbage. :func:`check_cpu_bf16` runs that convolution once per process and refuses
with the fix (capping oneDNN below AMX, which must be set before torch starts) when it is wrong.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from hhcl.config import ConfigError

#: the environment setting that keeps oneDNN off the AMX kernels (read once, when torch starts)
ONEDNN_CAP = "ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16"
#: cosine to float32 below which the bf16 kernels are wrong rather than rounded (rounding gives > 0.9999)
MIN_COSINE = 0.99


class KernelError(ConfigError):
    """This machine's low-precision kernels are wrong; the message says which setting avoids them (a usage
    error: the same config and environment would meet it again)."""


@functools.cache
def cpu_bf16_cosine() -> float:
    """Smallest per-sample cosine between a bf16-autocast and a float32 convolution of the probe shape."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 256, 4, 2, generator=gen)
    weight = torch.randn(512, 256, 3, 3, generator=gen) / 48
    with torch.inference_mode():
        ref = F.conv2d(x, weight, stride=2, padding=1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = F.conv2d(x, weight, stride=2, padding=1)
    cos = F.cosine_similarity(low.float().flatten(1), ref.flatten(1), dim=1).nan_to_num(-1.0)
    return float(cos.min())


def check_cpu_bf16(what: str) -> None:
    """Raise :class:`KernelError` naming ``what`` (the setting that asked for bf16) when this CPU's bf16
    convolution disagrees with float32."""
    cos = cpu_bf16_cosine()
    if cos < MIN_COSINE:
        raise KernelError(
            f"{what}: this CPU's bfloat16 convolution kernels are wrong in torch {torch.__version__} "
            f"(a probe convolution agrees with float32 to cosine {cos:.2f}; oneDNN's AMX kernels): start hhcl "
            f"with {ONEDNN_CAP} in the environment, or use float32 (amp off)"
        )
