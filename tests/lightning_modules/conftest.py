"""Module-scoped fixtures of the GRPO module tests: the RL prompt DataModule of the conftest world, a tiny SFT
checkpoint trained on it, and one prompt batch."""

from __future__ import annotations

import pytest
from grpo_helpers import train_sft_checkpoint, world_source

from adagrpo import datamodules


@pytest.fixture(scope="module")
def rl_dm():
    dm = datamodules.SeqRecDataModule(**world_source(0), train_mode="prompts", batch_size=16, eval_batch_size=32)
    dm.prepare()
    return dm


@pytest.fixture(scope="module")
def sft_ckpt(tiny_world_dm, tmp_path_factory) -> str:
    return train_sft_checkpoint(tiny_world_dm, tmp_path_factory.mktemp("sft") / "sft.ckpt")


@pytest.fixture(scope="module")
def batch(rl_dm):
    return next(iter(rl_dm.train_dataloader()))
