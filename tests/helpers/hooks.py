"""Training hooks the tests share."""

from __future__ import annotations

from hhcl.engine import Hook, Trainer


class StopAt(Hook):
    """Asks the trainer to stop after the step (epoch, it), 0-based: a mid-epoch checkpoint, as Ctrl-C leaves one."""

    def __init__(self, epoch: int, it: int) -> None:
        self.at = (epoch, it)

    def after_step(self, trainer: Trainer, epoch: int, it: int) -> None:
        if (epoch, it) == self.at:
            trainer.stop_requested = True
