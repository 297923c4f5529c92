"""Batched on-device augmentation with the reference's train transform (reference 3.1, fact 9.7).

Train: horizontal flip (p 0.5) -> pad 10 black + random crop back to H x W (offsets uniform in 0..20) ->
ToTensor + ImageNet normalise -> the reference's RandomErasing (p 0.5; up to 100 attempts of area
U(0.02, 0.4)·H·W and aspect U(0.3, 1/0.3), h/w rounded half-to-even, accepted when h < H and w < W, top/left
uniform inclusive; filled with 0.485/0.456/0.406 *in normalised space*). The images arrive already resized
(the cache holds the PIL-bicubic resize). Test: normalise only. Every sample's draws come from one torch
generator on the images' device, with the distributions of the reference's per-image Python draws.
"""

from __future__ import annotations

import torch

from hhcl.data.sampler import same_device

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ERASE_FILL = (0.485, 0.456, 0.406)
PAD = 10
ERASE_P, ERASE_AREA, ERASE_RATIO, ERASE_ATTEMPTS = 0.5, (0.02, 0.4), 0.3, 100


def scaled_pad(height: int) -> int:
    """The reference's 10-pixel pad at its 256-pixel height, scaled to other heights (10 at 256x128)."""
    return max(1, round(PAD * height / 256))


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float32 ImageNet-normalised (ToTensor + Normalize; the test transform)."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 [B, 3, H, W] images, got {images.dtype} {tuple(images.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    out = images.float()  # (x / 255 - mean) / std as one in-place multiply-add (equal up to float rounding)
    return out.mul_(1 / (255 * std)).sub_(mean / std)


def flip_pad_crop(
    images: torch.Tensor, flip: torch.Tensor, top: torch.Tensor, left: torch.Tensor, pad: int = PAD
) -> torch.Tensor:
    """Flip the rows where ``flip``, pad by ``pad`` with zeros, and crop H x W at (top, left) of the padded image."""
    b, c, h, w = images.shape
    dev = images.device
    rows = torch.arange(h, device=dev)[None, :] + top[:, None] - pad  # [B, H] source rows
    cols = torch.arange(w, device=dev)[None, :] + left[:, None] - pad  # [B, W] source cols in the flipped image
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    cols = torch.where(flip[:, None], w - 1 - cols, cols)
    # two gathers with broadcast (stride-0) indices: rows, then columns; then black where the source is padding
    out = images.gather(2, rows.clamp(0, h - 1)[:, None, :, None].expand(b, c, h, w))
    out = out.gather(3, cols.clamp(0, w - 1)[:, None, None, :].expand(b, c, h, w))
    return out.masked_fill_(~inside[:, None], 0)


def erase_boxes(
    batch: int, height: int, width: int, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample (erase?, top, left, h, w) of the reference RandomErasing (first accepted of 100 attempts)."""
    kw = {"generator": generator, "device": device, "dtype": torch.float64}
    apply = torch.rand(batch, **kw) < ERASE_P
    area = (ERASE_AREA[0] + (ERASE_AREA[1] - ERASE_AREA[0]) * torch.rand(batch, ERASE_ATTEMPTS, **kw)) * (
        height * width
    )
    aspect = ERASE_RATIO + (1 / ERASE_RATIO - ERASE_RATIO) * torch.rand(batch, ERASE_ATTEMPTS, **kw)
    hs = torch.round(torch.sqrt(area * aspect)).long()  # round half to even, like Python's round()
    ws = torch.round(torch.sqrt(area / aspect)).long()
    ok = (ws < width) & (hs < height)
    first = torch.argmax(ok.int(), 1)  # the first accepted attempt
    hit = ok.any(1) & apply
    h = hs.gather(1, first[:, None]).squeeze(1)
    w = ws.gather(1, first[:, None]).squeeze(1)
    u = torch.rand(batch, 2, **kw)
    top = (u[:, 0] * (height - h + 1)).long().clamp_max(height - h)
    left = (u[:, 1] * (width - w + 1)).long().clamp_max(width - w)
    return hit, top, left, h, w


class TrainAugment:
    """The reference's train transform after the resize, for a uint8 batch on any device (see module doc)."""

    def __init__(self, height: int, width: int, pad: int = PAD):
        self.height, self.width, self.pad = height, width, pad

    def __call__(
        self, images_uint8: torch.Tensor, generator: torch.Generator, *, part: tuple[int, int] = (0, 1)
    ) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> float32 augmented, normalised batch on the same device.

        ``part=(rank, world)``: the batch is this rank's contiguous share of a ``B * world`` global batch; the
        random parameters are drawn for the whole global batch and sliced, so DDP ranks augment exactly as
        one process would.
        """
        b, _, h, w = images_uint8.shape
        rank, world = part
        if (h, w) != (self.height, self.width):
            raise ValueError(f"images are {h}x{w} but the augmentation expects {self.height}x{self.width}")
        dev = images_uint8.device
        if not same_device(generator.device, dev):
            raise ValueError(f"the generator is on {generator.device} but the images are on {dev}")
        share = slice(rank * b, (rank + 1) * b)
        flip = (torch.rand(b * world, generator=generator, device=dev) < 0.5)[share]
        offsets = torch.randint(0, 2 * self.pad + 1, (b * world, 2), generator=generator, device=dev)[share]
        x = normalize(flip_pad_crop(images_uint8, flip, offsets[:, 0], offsets[:, 1], self.pad))
        hit, top, left, eh, ew = (t[share] for t in erase_boxes(b * world, h, w, generator, dev))
        rows = torch.arange(h, device=dev)[None, :]
        cols = torch.arange(w, device=dev)[None, :]
        in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])
        in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])
        mask = in_rows[:, :, None] & in_cols[:, None, :] & hit[:, None, None]
        for channel, value in enumerate(ERASE_FILL):  # three channels, not a loop over samples
            x[:, channel].masked_fill_(mask, value)
        return x
