"""Optimizer checks shared by the training modules."""

from __future__ import annotations

from torch.optim import Optimizer

from datamodules.errors import ConfigError


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
