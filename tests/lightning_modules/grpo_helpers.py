"""Shared pieces of the GRPO module tests: the tiny policy size, the conftest world's source, a quiet
trainer, a two-step SFT checkpoint and a GRPOModule built on them (fixtures using them: ``conftest.py``)."""

from __future__ import annotations

import lightning as L

from adagrpo import datamodules
from adagrpo.lightning_modules.grpo import GRPOModule
from adagrpo.lightning_modules.policy import LlamaPolicy
from adagrpo.lightning_modules.reward import OracleReward, RewardModel
from adagrpo.lightning_modules.sft import SFTModule

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)

def world_source(seed: int = 0):
    # Same world and SID settings as the conftest `tiny_world_dm` (so checkpoints trained there fit here).
    return dict(
        source=datamodules.SyntheticSource(num_users=200, num_items=120, max_length=20, seed=seed),
        sids=datamodules.RQKMeansSids(embeddings=datamodules.TextEmbeddings(dim=16), levels=3, codebook_size=8,
                                      iters=20),
        max_history=5,
        use_cache=False,
    )


def quiet_trainer(**kwargs) -> L.Trainer:
    base = dict(logger=False, enable_checkpointing=False, accelerator="cpu", enable_progress_bar=False,
                enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    base.update(kwargs)
    return L.Trainer(**base)


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
