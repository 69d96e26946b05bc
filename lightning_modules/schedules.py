"""Learning-rate schedules usable from YAML (``scheduler: class_path: adagrpo.lightning_modules.WarmupCosine``)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosine(LambdaLR):
    """Linear warmup over ``warmup_steps``, then cosine decay to ``min_lr_ratio`` × the base rate at
    ``total_steps``. Stepped every optimizer step. ``total_steps=None`` lets the module fill in the
    trainer's estimate (``trainer.estimated_stepping_batches``) before training starts.

    Args:
        optimizer: the optimizer whose learning rate is scheduled (passed by the module).
        warmup_steps: optimizer steps of linear warmup from ~0 to the base rate.
        total_steps: optimizer step at which the cosine reaches its floor (None = the trainer's estimate).
        min_lr_ratio: the floor, as a fraction of the base learning rate.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int = 100,
        total_steps: int | None = None,
        min_lr_ratio: float = 0.1,
    ) -> None:
        self.warmup_steps = max(0, int(warmup_steps))
        self.total_steps = total_steps
        self.min_lr_ratio = float(min_lr_ratio)
        super().__init__(optimizer, self._factor)

    def _factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if not self.total_steps or self.total_steps <= self.warmup_steps:
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
