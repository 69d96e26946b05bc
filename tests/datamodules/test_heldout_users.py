"""``rl_users: heldout``: a seeded slice of users no model is fit on supplies the RL prompts.

No held-out user's event may reach SFT windows, the reward model's training log or interaction-based SIDs;
RL prompts come only from held-out users; validation and test stay every user's.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from adagrpo import datamodules
from adagrpo.datamodules.errors import ConfigError
from adagrpo.datamodules.splits import heldout_users

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "data"


class RecordingSids(datamodules.RQKMeansSids):
    """RQ-KMeans SIDs that remember the training ends they were built from."""

    def build(self, data, use_cache=True, train_end=None):  # noqa: ANN001, ANN201
        self.seen_train_end = None if train_end is None else np.asarray(train_end).copy()
        return super().build(data, use_cache=use_cache, train_end=train_end)


def tiny(cls=datamodules.SeqRecDataModule, **kwargs):  # noqa: ANN001, ANN201
    dm = cls(source=datamodules.SyntheticSource(num_users=120, num_items=80, max_length=15, seed=3),
             sids=RecordingSids(embeddings=datamodules.TextEmbeddings(dim=16), levels=3, codebook_size=8, iters=10),
             max_history=5, batch_size=16, eval_batch_size=64, use_cache=False, **kwargs)
    dm.prepare()
    return dm


@pytest.fixture(scope="module")
def heldout_dms():
    opts = dict(rl_users="heldout", heldout_fraction=0.25, heldout_seed=5)
    return {"sft": tiny(**opts), "rl": tiny(train_mode="prompts", seed=9, **opts),
            "reward": tiny(datamodules.RewardDataModule, **opts)}


def test_heldout_users_seeded_sized_and_independent_of_the_training_seed(heldout_dms):
    mask = heldout_users(120, 0.25, seed=5)
    assert mask.sum() == 30
    assert np.array_equal(mask, heldout_users(120, 0.25, seed=5))
    assert not np.array_equal(mask, heldout_users(120, 0.25, seed=6))
    # SFT (seed 0), RL (seed 9) and reward data agree on the slice: it follows heldout_seed only.
    for dm in heldout_dms.values():
        assert np.array_equal(dm.split.heldout_mask(), mask)


def test_no_heldout_event_reaches_sft_windows(heldout_dms):
    dm = heldout_dms["sft"]
    held = dm.split.heldout_mask()
    assert len(dm.sft_windows) > 0 and not held[dm.sft_window_users].any()
    # The windows' items are exactly the fitted users' training prefixes (every item but each user's first is a
    # target once), so no held-out item sequence can hide in them.
    expected = Counter()
    for u in np.flatnonzero(~held):
        expected.update(dm.data.sequence(int(u))[1: int(dm.split.train_end[u])].tolist())
    got = Counter()
    for w in dm.sft_windows:
        got.update(w[w >= 0][1:].tolist())
    assert got == expected
    # And the loader serves exactly those windows.
    assert sum(len(b) for b in dm.train_dataloader()) == len(dm.sft_windows)


def test_no_heldout_event_reaches_reward_training(heldout_dms):
    dm = heldout_dms["reward"]
    held = dm.split.heldout_mask()
    users = np.concatenate([b.user.numpy() for b in dm.train_dataloader()])
    assert len(users) == len(dm.logs.train) > 0
    assert not held[users].any()
    # Fitted users keep all their training events: compare with the same data without a held-out slice.
    full = tiny(datamodules.RewardDataModule)
    assert len(dm.logs.train) == int((~held[full.logs.train.user]).sum())
    # Validation and test logs still cover held-out users.
    assert held[dm.logs.val.user].any() and held[dm.logs.test.user].any()


def test_heldout_events_shape_no_sids(heldout_dms):
    dm = heldout_dms["sft"]
    held = dm.split.heldout_mask()
    ends = dm.sid_builder.seen_train_end
    assert (ends[held] == 0).all()
    assert np.array_equal(ends[~held], dm.split.train_end[~held])


def test_rl_prompts_come_only_from_heldout_users_and_evaluation_covers_everyone(heldout_dms):
    dm = heldout_dms["rl"]
    held = dm.split.heldout_mask()
    expected = [(u, p) for u in np.flatnonzero(held) for p in range(1, int(dm.split.train_end[u]))]
    assert [tuple(t) for t in dm.rl_targets.tolist()] == expected
    users = np.concatenate([b.user.numpy() for b in dm.train_dataloader()])
    assert len(users) == len(expected) and held[users].all()
    assert sorted(dm.test_targets[:, 0].tolist()) == list(range(dm.data.num_users))
    assert sorted(dm.val_targets[:, 0].tolist()) == list(range(dm.data.num_users))
    assert dm.report()["heldout_users"] == 30


def test_default_holds_out_nobody():
    dm = tiny(train_mode="prompts")
    assert not dm.split.heldout_mask().any()
    assert len(np.unique(dm.rl_targets[:, 0])) == int((dm.split.train_end >= 2).sum())


@pytest.mark.parametrize("kwargs,key", [(dict(rl_users="some"), "data.rl_users"),
                                        (dict(rl_users="heldout", heldout_fraction=1.0), "data.heldout_fraction"),
                                        (dict(rl_users="heldout", heldout_fraction=0.0), "data.heldout_fraction"),
                                        (dict(rl_prompts="first"), "data.rl_prompts")])
def test_bad_options_name_the_key(kwargs, key):
    with pytest.raises(ConfigError) as info:
        datamodules.SeqRecDataModule(**kwargs)
    assert key in str(info.value)


def test_shipped_heldout_configs_agree():
    """SFT, reward and RL data configs of the held-out pipeline share the source, SIDs and held-out slice."""
    names = ["synthetic_heldout.yaml", "synthetic_reward_heldout.yaml", "synthetic_rl_heldout.yaml"]
    cfgs = [yaml.safe_load((CONFIGS / n).read_text())["init_args"] for n in names]
    for key in ("source", "sids", "split", "max_history", "rl_users", "heldout_fraction", "heldout_seed"):
        assert len({str(c.get(key)) for c in cfgs}) == 1, (key, [c.get(key) for c in cfgs])
    assert cfgs[0]["rl_users"] == "heldout"
    assert cfgs[2]["train_mode"] == "prompts" and cfgs[0]["train_mode"] == "sft"
