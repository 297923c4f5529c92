"""On-device augmentation: exactness of each deterministic op, and statistics of the random draws vs the reference."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from scipy import stats

from hhcl.data import IMAGENET_MEAN, IMAGENET_STD, TrainAugment, normalize
from hhcl.data.augment import erase_boxes, flip_pad_crop

H, W = 64, 32


def reference_erase(height: int, width: int, rnd: random.Random) -> tuple[int, int, int, int] | None:
    """The reference RandomErasing's box (top, left, h, w), or None, with Python's random."""
    if rnd.uniform(0, 1) >= 0.5:
        return None
    for _ in range(100):
        target = rnd.uniform(0.02, 0.4) * height * width
        aspect = rnd.uniform(0.3, 1 / 0.3)
        h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if w < width and h < height:
            return rnd.randint(0, height - h), rnd.randint(0, width - w), h, w
    return None


def coded_images(n: int) -> torch.Tensor:
    """uint8 images whose pixels encode their own position: R = 4*col, G = 2*row + 1, B = 200."""
    rows = torch.arange(H).view(1, H, 1).expand(1, H, W)
    cols = torch.arange(W).view(1, 1, W).expand(1, H, W)
    img = torch.cat([4 * cols, 2 * rows + 1, torch.full((1, H, W), 200)]).to(torch.uint8)
    return img.expand(n, 3, H, W).contiguous()


def test_normalize_equals_totensor_normalize() -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    expected = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(Image.fromarray(arr))
    got = normalize(torch.from_numpy(arr).permute(2, 0, 1)[None])[0]
    assert torch.allclose(got, expected, rtol=0, atol=2e-6)


def test_flip_pad_crop_equals_torchvision_ops() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 3, H, W), generator=g, dtype=torch.uint8)
    flip = torch.rand(12, generator=g) < 0.5
    top, left = torch.randint(0, 21, (12,), generator=g), torch.randint(0, 21, (12,), generator=g)
    got = flip_pad_crop(images, flip, top, left)
    for i in range(12):
        img = TF.hflip(images[i]) if flip[i] else images[i]
        expected = TF.crop(TF.pad(img, [10], fill=0), int(top[i]), int(left[i]), H, W)
        assert torch.equal(got[i], expected)


def decode(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Erased mask [B, H, W] and the uint8 pixels of an augmented batch (denormalised)."""
    fill = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    erased = (out == fill).all(1)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pixels = torch.round((out * std + mean) * 255).long()
    return erased, pixels


def test_train_augment_statistics() -> None:
    n = 2000
    out = TrainAugment(H, W)(coded_images(n), torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and out.shape == (n, 3, H, W)
    erased, px = decode(out)
    valid = ~erased & (px[:, 2] == 200)  # neither erased nor padding
    x = torch.arange(W).view(1, 1, W)
    y = torch.arange(H).view(1, H, 1)
    col, row = px[:, 0] // 4, (px[:, 1] - 1) // 2
    big, small = torch.tensor(10**6), torch.tensor(-(10**6))

    def const(
        v: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # is v constant over valid pixels, and its value
        hi = torch.where(valid, v, small).amax((1, 2))
        lo = torch.where(valid, v, big).amin((1, 2))
        return hi == lo, hi

    plain, d_plain = const(col - x)
    flipped, d_flip = const(col + x)
    assert (plain ^ flipped).all()  # each image is either flipped or not, consistently
    left = torch.where(plain, d_plain + 10, W - 1 - d_flip + 10)
    same_top, d_top = const(row - y)
    assert same_top.all()
    top = d_top + 10
    # flip rate 0.5, crop offsets uniform on 0..20
    assert abs(flipped.float().mean().item() - 0.5) < 4 * math.sqrt(0.25 / n)
    for offsets in (top, left):
        assert offsets.min() >= 0 and offsets.max() <= 20
        assert stats.chisquare(torch.bincount(offsets, minlength=21).numpy()).pvalue > 1e-4
    # padding is black: a pixel is padding exactly where the source row/col falls outside the image
    src_row = y + top.view(-1, 1, 1) - 10
    src_col = torch.where(
        flipped.view(-1, 1, 1), W - 1 - (x + left.view(-1, 1, 1) - 10), x + left.view(-1, 1, 1) - 10
    )
    inside = (src_row >= 0) & (src_row < H) & (src_col >= 0) & (src_col < W)
    assert torch.equal((px[:, 2] == 200) | erased, inside | erased)
    assert (px.permute(1, 0, 2, 3)[:, ~inside & ~erased] == 0).all()  # padded pixels are black
    # erasing: whole rectangles filled with the normalised-space constants, at the reference's rate and sizes
    rnd = random.Random(0)
    ref = [reference_erase(H, W, rnd) for _ in range(20000)]
    ref_boxes = [b for b in ref if b is not None]
    hit = erased.any((1, 2))
    assert abs(hit.float().mean().item() - len(ref_boxes) / len(ref)) < 4 * math.sqrt(0.25 / n)
    hs, ws, tops, lefts = [], [], [], []
    for m in erased[hit]:
        rows, cols = torch.nonzero(m.any(1)).squeeze(1), torch.nonzero(m.any(0)).squeeze(1)
        h, w = len(rows), len(cols)
        assert rows[-1] - rows[0] + 1 == h and cols[-1] - cols[0] + 1 == w and m.sum() == h * w  # a rectangle
        hs.append(h), ws.append(w), tops.append(int(rows[0])), lefts.append(int(cols[0]))
    ref_top, ref_left, ref_h, ref_w = (list(v) for v in zip(*ref_boxes, strict=True))
    for ours, theirs in ((hs, ref_h), (ws, ref_w), (tops, ref_top), (lefts, ref_left)):
        assert stats.ks_2samp(ours, theirs).pvalue > 1e-4


def test_erase_boxes_match_the_reference_at_256x128() -> None:
    n = 20000
    hit, top, left, h, w = erase_boxes(n, 256, 128, torch.Generator().manual_seed(1), torch.device("cpu"))
    rnd = random.Random(1)
    ref = [b for b in (reference_erase(256, 128, rnd) for _ in range(n)) if b is not None]
    assert abs(hit.float().mean().item() - len(ref) / n) < 0.02
    area = (h * w).double()[hit] / (256 * 128)
    aspect = (h.double() / w.double())[hit]
    assert 0.02 * 0.8 < area.min() and area.max() < 0.4 * 1.1  # U(0.02, 0.4) up to rounding
    assert 0.3 * 0.85 < aspect.min() and aspect.max() < 3.34 * 1.15  # U(0.3, 3.33), not log-uniform
    ref_top, ref_left, ref_h, ref_w = (np.array(v) for v in zip(*ref, strict=True))
    for ours, theirs in ((h, ref_h), (w, ref_w), (top, ref_top), (left, ref_left)):
        assert stats.ks_2samp(ours[hit].numpy(), theirs).pvalue > 1e-4
    assert ((top + h <= 256) & (left + w <= 128))[hit].all()


def test_deterministic_and_device_checked() -> None:
    images = coded_images(8)
    aug = TrainAugment(H, W)
    a = aug(images, torch.Generator().manual_seed(5))
    b = aug(images, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, aug(images, torch.Generator().manual_seed(6)))
    with pytest.raises(ValueError, match="expects 32x16"):
        TrainAugment(32, 16)(images, torch.Generator())


def test_pad_is_the_references_10_at_256_and_scales_elsewhere() -> None:
    from hhcl.data.augment import scaled_pad

    assert scaled_pad(256) == 10  # the paper presets' 256x128: exactly the reference's Pad(10)
    assert (scaled_pad(128), scaled_pad(64), scaled_pad(32)) == (5, 2, 1)
