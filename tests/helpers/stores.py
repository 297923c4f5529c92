"""An in-memory image store with the ImageStore interface, for tests that need no files."""

from __future__ import annotations

import torch


class TinyStore:
    """uint8 [N, 3, H, W] images with their pids and camids; ``gather`` indexes them like ImageStore."""

    def __init__(self, images, pids, camids):
        self.images, self.device = images, images.device
        self.pids, self.camids = torch.as_tensor(pids), torch.as_tensor(camids)

    def __len__(self):
        return len(self.images)

    def gather(self, idx):
        return self.images[idx]
