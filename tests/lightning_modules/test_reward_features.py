"""Reward-side information a learned reward model can use and the policy cannot: the synthetic world's noisy user
features, read by ``RewardModelModule(user_features=True)`` and carried by its checkpoint into ``TrainedReward``."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch

from adagrpo import datamodules
from adagrpo.datamodules.errors import ConfigError
from adagrpo.datamodules.exposure import WorldExposure
from adagrpo.datamodules.reward_data import RewardDataModule
from adagrpo.lightning_modules.reward import RewardModelModule, RewardNet, TrainedReward


def make_dm(user_feature_noise: float | None) -> RewardDataModule:
    dm = RewardDataModule(
        source=datamodules.SyntheticSource(num_users=200, num_items=120, max_length=20, seed=0,
                                           user_feature_noise=user_feature_noise),
        sids=datamodules.RQKMeansSids(embeddings=datamodules.TextEmbeddings(dim=16), levels=3, codebook_size=8,
                                      iters=20),
        exposure=WorldExposure(), max_history=5, batch_size=32, eval_batch_size=256, use_cache=False)
    dm.prepare()
    return dm


def quiet_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, **kwargs)


def test_reward_model_reads_user_features_and_its_checkpoint_carries_them(tmp_path):
    L.seed_everything(0, verbose=False)
    dm = make_dm(user_feature_noise=0.1)
    module = RewardModelModule(dim=16, num_layers=1, num_heads=2, dropout=0.0, user_features=True,
                               optimizer=partial(torch.optim.AdamW, lr=5e-3), report_users=50)
    trainer = quiet_trainer(max_steps=5, check_val_every_n_epoch=1000)
    trainer.fit(module, dm)
    net = module.net
    torch.testing.assert_close(net.user_features, dm.source.world.user_features.float())
    batch = dm.prompt_batch(dm.split.test[:8])
    items = torch.arange(10).expand(8, -1)
    with torch.no_grad():
        a = net(batch.history, items, batch.user)
        b = net(batch.history, items, batch.user.roll(1))  # the same histories, other users' features
    assert not torch.allclose(a, b)  # the score depends on who the user is, not only on the history
    with pytest.raises(ValueError, match="user features"):
        net(batch.history, items)
    ckpt = tmp_path / "rm.ckpt"
    trainer.save_checkpoint(ckpt)
    reward = TrainedReward(str(ckpt))
    reward.attach(dm)
    torch.testing.assert_close(reward.score(batch.history, items, batch.user), a)
    with pytest.raises(ValueError, match="users"):
        reward.score(batch.history, items)


def test_user_features_need_a_world_that_has_them():
    dm = make_dm(user_feature_noise=None)
    module = RewardModelModule(dim=16, num_layers=1, num_heads=2, user_features=True)
    module.data = dm
    with pytest.raises(ConfigError, match="user_feature_noise"):
        module.configure_model()


def test_without_features_the_network_ignores_users():
    codes = torch.tensor([[0, 0], [0, 1], [1, 0]])
    net = RewardNet(codes, [2, 2], dim=8, num_layers=1, num_heads=2, max_history=3).eval()
    h = torch.tensor([[-1, 0, 1]])
    items = torch.tensor([[2, 0]])
    torch.testing.assert_close(net(h, items), net(h, items, torch.tensor([5])))
