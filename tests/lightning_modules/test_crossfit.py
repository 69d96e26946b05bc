"""Cross-fitting: the reward data's crossfit options drop one fold of users from training, and CrossFitReward
scores every user with the model of their fold (the one trained without them)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adagrpo import datamodules
from adagrpo.datamodules.errors import ConfigError
from adagrpo.datamodules.splits import user_folds
from adagrpo.lightning_modules.crossfit import CrossFitReward
from adagrpo.lightning_modules.reward import RewardModel


def test_user_folds_balanced_and_seeded():
    folds = user_folds(103, 4, seed=2)
    assert sorted(np.bincount(folds).tolist()) == [25, 26, 26, 26]
    assert np.array_equal(folds, user_folds(103, 4, seed=2))
    assert not np.array_equal(folds, user_folds(103, 4, seed=3))
    for bad in (1, 104):
        with pytest.raises(ConfigError, match="crossfit_folds"):
            user_folds(103, bad, seed=0)


def reward_dm(**kwargs):
    dm = datamodules.RewardDataModule(
        source=datamodules.SyntheticSource(num_users=90, num_items=60, max_length=12, seed=4),
        sids=datamodules.RQKMeansSids(embeddings=datamodules.TextEmbeddings(dim=16), levels=3, codebook_size=8,
                                      iters=10),
        max_history=5, use_cache=False, **kwargs)
    dm.prepare()
    return dm


def test_a_fold_model_never_trains_on_its_fold():
    full = reward_dm()
    folds = user_folds(90, 3, seed=1)
    for f in range(3):
        dm = reward_dm(crossfit_folds=3, crossfit_fold=f, crossfit_seed=1)
        users = np.concatenate([b.user.numpy() for b in dm.train_dataloader()])
        assert len(users) > 0 and not (folds[users] == f).any()
        # Only the fold's users are dropped, from training only.
        assert len(dm.logs.train) == int((folds[full.logs.train.user] != f).sum())
        assert len(dm.logs.val) == len(full.logs.val) and len(dm.logs.test) == len(full.logs.test)


@pytest.mark.parametrize("kwargs,key", [(dict(crossfit_folds=1), "data.crossfit_folds"),
                                        (dict(crossfit_folds=3, crossfit_fold=3), "data.crossfit_fold")])
def test_bad_crossfit_options_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        datamodules.RewardDataModule(**kwargs)


class Constant(RewardModel):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def score(self, histories, items, users=None):
        return torch.full(items.shape, self.value)


def test_crossfit_reward_dispatches_each_user_to_their_fold_model(tiny_world_dm):
    dm = tiny_world_dm
    reward = CrossFitReward(members=[Constant(10.0), Constant(20.0), Constant(30.0)], seed=7)
    reward.attach(dm)
    users = torch.arange(dm.data.num_users)
    items = torch.randint(0, dm.num_items, (len(users), 4))
    items[::5, 0] = -1  # padding slots score 0
    scores = reward.score(torch.full((len(users), 3), -1), items, users)
    folds = torch.from_numpy(user_folds(dm.data.num_users, 3, seed=7))
    expected = (10.0 * (folds + 1).float())[:, None].expand_as(items).masked_fill(items < 0, 0.0)
    assert torch.equal(scores, expected)
    with pytest.raises(ValueError, match="users"):
        reward.score(torch.full((2, 3), -1), items[:2])


def test_crossfit_reward_arguments():
    with pytest.raises(ConfigError, match="reward.checkpoints"):
        CrossFitReward()
    with pytest.raises(ConfigError, match="reward.checkpoints"):
        CrossFitReward(members=[Constant(1.0)])
