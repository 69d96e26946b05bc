"""Fixtures of the reliability tests: a tiny RL DataModule on the conftest world, a two-step SFT checkpoint, and a
working directory with its own MLflow store and run records for commands through the CLI."""

from __future__ import annotations

import lightning as L
import pytest
from reliability_helpers import TINY
from tiny_world import quiet_trainer
from tiny_world import tiny_world_kwargs as world_kwargs

from adagrpo import datamodules
from adagrpo.lightning_modules.policy import LlamaPolicy
from adagrpo.lightning_modules.sft import SFTModule


@pytest.fixture(scope="session")
def rl_dm():
    dm = datamodules.SeqRecDataModule(**world_kwargs(), train_mode="prompts", batch_size=8, eval_batch_size=32)
    dm.prepare()
    return dm


@pytest.fixture(scope="session")
def sft_ckpt(tiny_world_dm, tmp_path_factory) -> str:
    L.seed_everything(0)
    module = SFTModule(policy=LlamaPolicy(**TINY))
    trainer = quiet_trainer(max_steps=2)
    trainer.fit(module, datamodule=tiny_world_dm)
    path = tmp_path_factory.mktemp("sft") / "sft.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


@pytest.fixture
def world(tmp_path, monkeypatch):
    """``tmp_path`` as the working directory of ``adagrpo`` commands: its own ``mlflow.db`` and ``runs/``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("ADAGRPO_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("ADAGRPO_EXPERIMENT", "")
    monkeypatch.setenv("ADAGRPO_RECORD_DIR", "")
    monkeypatch.setenv("ADAGRPO_DEBUG", "")
    return tmp_path
