"""The lr schedule: StepLR for HHCL, O2CAP's WarmupMultiStepLR (copied below from its train.py) for the o2cap presets."""

from __future__ import annotations

from bisect import bisect_right

import pytest
import torch

from hhcl.config import ConfigError, load_config
from hhcl.schedule import lr_schedule


class WarmupMultiStepLR(torch.optim.lr_scheduler._LRScheduler):
    """The authors' scheduler (github:Terminator8758/O2CAP train.py), unchanged but for its unused error paths."""

    def __init__(self, optimizer, milestones, gamma=0.1, warmup_factor=1.0 / 3, warmup_iters=500,
                 warmup_method="linear", last_epoch=-1):
        self.milestones = milestones
        self.gamma = gamma
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        warmup_factor = 1
        if self.last_epoch < self.warmup_iters:
            if self.warmup_method == "constant":
                warmup_factor = self.warmup_factor
            elif self.warmup_method == "linear":
                alpha = float(self.last_epoch) / float(self.warmup_iters)
                warmup_factor = self.warmup_factor * (1 - alpha) + alpha
        return [
            base_lr * warmup_factor * self.gamma ** bisect_right(self.milestones, self.last_epoch)
            for base_lr in self.base_lrs
        ]


def _lrs(scheduler: torch.optim.lr_scheduler.LRScheduler, epochs: int) -> list[float]:
    out = []
    for _ in range(epochs):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def _adam(lr: float) -> torch.optim.Adam:
    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)


@pytest.mark.parametrize("preset", ["o2cap-market", "o2cap-duke", "o2cap-msmt17"])
def test_o2cap_presets_follow_the_authors_warmup_schedule(preset):
    cfg = load_config(preset)
    ours = _lrs(lr_schedule(_adam(cfg.optim.lr), cfg.optim), cfg.train.epochs)
    theirs = _lrs(WarmupMultiStepLR(_adam(3.5e-4), [20, 40], gamma=0.1, warmup_factor=0.01, warmup_iters=10), 50)
    assert cfg.train.epochs == 50
    assert ours == pytest.approx(theirs, rel=1e-12, abs=0)
    assert ours[0] == pytest.approx(3.5e-6) and ours[10] == pytest.approx(3.5e-4) and ours[45] == pytest.approx(3.5e-6)


@pytest.mark.parametrize("preset", ["market", "duke", "msmt17", "demo"])
def test_hhcl_presets_keep_the_reference_steplr(preset):
    cfg = load_config(preset)
    scheduler = lr_schedule(_adam(cfg.optim.lr), cfg.optim)
    assert type(scheduler) is torch.optim.lr_scheduler.StepLR  # its checkpoint state is unchanged for old runs
    lrs = _lrs(scheduler, 60)
    step = 12 if preset == "demo" else 20  # the demo settles for its last 8 of 20 epochs (README, "The demo")
    assert cfg.optim.step_size == step
    assert lrs == pytest.approx([cfg.optim.lr * 0.1 ** (e // step) for e in range(60)], rel=1e-12, abs=0)


@pytest.mark.parametrize(("key", "value"), [("optim.warmup_epochs", "-1"), ("optim.warmup_factor", "0"),
                                            ("optim.warmup_factor", "1.5")])
def test_bad_warmup_values_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("demo", [f"{key}={value}"])
