"""Shared pieces of the GRPO module tests: the tiny policy size, the tiny world (``tests/tiny_world.py``), a quiet
trainer, a two-step SFT checkpoint and a GRPOModule built on them (fixtures using them: ``conftest.py``)."""

from __future__ import annotations

import lightning as L
from tiny_world import quiet_trainer
from tiny_world import tiny_world_kwargs as world_source

from adagrpo.lightning_modules.grpo import GRPOModule
from adagrpo.lightning_modules.policy import LlamaPolicy
from adagrpo.lightning_modules.reward import OracleReward, RewardModel
from adagrpo.lightning_modules.sft import SFTModule

__all__ = ["TINY", "make_grpo", "quiet_trainer", "train_sft_checkpoint", "world_source"]

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)

def train_sft_checkpoint(dm, path) -> str:
    L.seed_everything(0)
    module = SFTModule(policy=LlamaPolicy(**TINY))
    module.attach(dm)
    module.configure_model()
    trainer = quiet_trainer(max_steps=2)
    trainer.fit(module, datamodule=dm)
    trainer.save_checkpoint(path)
    return str(path)


def make_grpo(rl_dm, sft_ckpt, reward: RewardModel | None = None, **kwargs) -> GRPOModule:
    kwargs.setdefault("num_generations", 4)
    module = GRPOModule(init_from=sft_ckpt, reward=reward or OracleReward(), **kwargs)
    module.attach(rl_dm)
    module.configure_model()
    return module
