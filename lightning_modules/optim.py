"""Optimizers for the training modules: built from the factories LightningCLI injects, and checked."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.optim import Optimizer

from adagrpo.errors import ConfigError


def build_optimizers(module: L.LightningModule, optimizer_factory: Any, scheduler_factory: Any) -> Any:
    """``configure_optimizers`` output for ``module``'s trainable parameters.

    ``optimizer_factory``/``scheduler_factory`` are the callables LightningCLI builds from
    ``optimizer:``/``scheduler:`` (``class_path`` + ``init_args``); without an optimizer, AdamW (lr 1e-3,
    weight decay 0.01). Schedulers step every optimizer step; a :class:`WarmupCosine` without
    ``total_steps`` gets the trainer's estimate.
    """
    from adagrpo.lightning_modules.schedules import WarmupCosine

    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = optimizer_factory(params) if optimizer_factory is not None else torch.optim.AdamW(
        params, lr=1e-3, weight_decay=0.01)
    if module._trainer is not None:
        check_optimizer_strategy(optimizer, strategy_kind(module.trainer.strategy))
    if scheduler_factory is None:
        return optimizer
    scheduler = scheduler_factory(optimizer)
    if isinstance(scheduler, WarmupCosine) and scheduler.total_steps is None and module._trainer is not None:
        scheduler.total_steps = int(module.trainer.estimated_stepping_batches)
        scheduler.total_steps_estimated = True
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def strategy_kind(strategy: Any) -> str:
    """The Lightning strategy class a strategy is (or derives from), by name: ``FSDP2Strategy`` (our
    ``ModelParallelStrategy`` subclass) is a ``"ModelParallelStrategy"``."""
    names = [cls.__name__ for cls in type(strategy).__mro__]
    for known in ("ModelParallelStrategy", "FSDPStrategy", "DeepSpeedStrategy", "DDPStrategy"):
        if known in names:
            return known
    return names[0]


def check_optimizer_strategy(optimizer: Optimizer, strategy_name: str) -> None:
    """Fail early, with a message naming the config key, for combinations that cannot work.

    bitsandbytes' 8-bit optimizers keep quantised state per plain tensor and do not accept the DTensor
    parameters FSDP2 (``ModelParallelStrategy``) produces; they work with single-device and DDP training.
    """
    is_bnb = type(optimizer).__module__.split(".")[0] == "bitsandbytes"
    if is_bnb and strategy_name == "ModelParallelStrategy":
        raise ConfigError(
            "model.init_args.optimizer",
            f"{type(optimizer).__name__} (bitsandbytes) cannot optimise FSDP2-sharded (DTensor) parameters; "
            "use torch.optim.AdamW with configs/trainer/fsdp.yaml, or keep the 8-bit optimizer with "
            "configs/trainer/ddp.yaml or a single device",
        )
