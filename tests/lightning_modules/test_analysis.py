"""`adagrpo analyze`'s strata: defined before the outcome (unchanged when the test items are permuted across
users), every user in exactly one stratum per family, and the per-stratum metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adagrpo.lightning_modules.analysis import (
    POST_HOC,
    format_strata,
    plot_strata,
    post_hoc_strata,
    pre_outcome_strata,
    stratified_analysis,
    terciles,
    with_permuted_test_items,
)
from adagrpo.lightning_modules.policy import LlamaPolicy
from adagrpo.lightning_modules.reward import NoisyReward

GROUP, PROMPTS, USERS = 4, 2, 48


def tiny_policy(dm, seed: int):
    torch.manual_seed(seed)
    model, _ = LlamaPolicy(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64).build(dm.vocab)
    return model.eval()


@pytest.fixture(scope="module")
def setup(tiny_world_dm):
    dm = tiny_world_dm
    targets = dm.split.test[:USERS]
    return dm, tiny_policy(dm, 0), NoisyReward(noise=0.3, noise_on="uniform"), targets


def test_pre_outcome_strata_unchanged_when_test_items_are_permuted(setup):
    dm, sft, reward, targets = setup
    permuted = with_permuted_test_items(dm, seed=1)
    # The permutation reaches the test items (and only them).
    before, after = dm.prompt_batch(targets), permuted.prompt_batch(targets)
    assert (before.target != after.target).float().mean() > 0.5
    assert torch.equal(before.history, after.history)
    kwargs = dict(group=GROUP, train_prompts=PROMPTS, batch_size=64)
    a = pre_outcome_strata(dm, sft, reward, targets, **kwargs)
    b = pre_outcome_strata(permuted, sft, reward, targets, **kwargs)
    assert [f.key for f in a] == ["gate_share", "gate_cell_last", "history_popularity", "history_length",
                                  "truth_concordance"]
    for fa, fb in zip(a, b):
        assert fa.pre_outcome and fa.labels == fb.labels
        assert np.array_equal(fa.assign, fb.assign), fa.key
        assert len(np.unique(fa.assign[fa.assign >= 0])) >= 2, (fa.key, fa.assign)  # the strata do split the users
    # The post-hoc cell reads the test item: it moves under the same permutation (the check above has teeth).
    pa = post_hoc_strata(dm, sft, reward, targets, GROUP)
    pb = post_hoc_strata(permuted, sft, reward, targets, GROUP)
    assert not pa.pre_outcome and POST_HOC in pa.title
    assert not np.array_equal(pa.assign, pb.assign)


def test_terciles_by_hand():
    assign, labels = terciles(np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, math.nan]), "{:.0f}")
    assert assign.tolist() == [0, 0, 1, 1, 2, 2, -1]
    assert labels == ["low (1–2)", "mid (3–4)", "high (5–6)"]
    # Ties stay in one bin (edges 0 and 1/3 here), so a bin can be empty.
    assign, labels = terciles(np.array([0.0, 0.0, 0.0, 0.0, 1.0, 2.0]))
    assert assign.tolist() == [0, 0, 0, 0, 2, 2]
    assert labels == ["low (0.00–0.00)", "mid (empty)", "high (1.00–2.00)"]


def test_analysis_rows_table_and_plot(setup, tmp_path):
    dm, sft, reward, _ = setup
    policies = {"sft": sft, "other": tiny_policy(dm, 1)}
    result = stratified_analysis(dm, sft, policies, reward, k=10, group=GROUP, train_prompts=PROMPTS,
                                 post_hoc=True, max_users=USERS, batch_size=64, progress=False)
    rows = result.rows()
    assert rows[-1]["stratum"] == "all" and rows[-1]["users"] == USERS
    for fam in result.families:
        mine = [r for r in rows if r["family"] == fam.key]
        assert sum(r["users"] for r in mine) == USERS, fam.key  # every user in exactly one stratum (or undefined)
    keys = result.metric_keys()
    assert {"hr_10", "true_hr_10", "true_utility_10", "repeat_rate_10"} <= set(keys)
    for r in rows:
        for p in policies:
            for key in ("hr_10", "true_hr_10", "repeat_rate_10"):
                v = r["metrics"][p][key]
                assert (r["users"] == 0 and math.isnan(v)) or 0.0 <= v <= 1.0, (r["stratum"], p, key, v)
    # The 'all' row is the user-weighted mean of any family's strata.
    fam = [r for r in rows if r["family"] == "history_length"]
    pooled = sum(r["users"] * r["metrics"]["other"]["hr_10"] for r in fam if r["users"]) / USERS
    assert pooled == pytest.approx(rows[-1]["metrics"]["other"]["hr_10"])
    flat = result.table()
    assert all(set(r) == {"stratum", "users", "sft", "other"} for r in flat)
    assert len({r["stratum"] for r in flat}) == len(flat)
    text = format_strata(result)
    assert "other − sft" in text and POST_HOC in text and "pre-outcome" in text
    png = plot_strata(result, tmp_path / "strata.png", "test")
    assert png.stat().st_size > 1000


def test_heldout_only_analyses_the_heldout_slice(setup):
    dm, sft, reward, _ = setup
    from adagrpo.datamodules.errors import ConfigError

    with pytest.raises(ConfigError, match="rl_users"):
        stratified_analysis(dm, sft, {"sft": sft}, reward, heldout_only=True, progress=False)
    from adagrpo import datamodules

    held_dm = datamodules.SeqRecDataModule(
        source=datamodules.SyntheticSource(num_users=60, num_items=50, max_length=10, seed=2),
        sids=datamodules.RQKMeansSids(embeddings=datamodules.TextEmbeddings(dim=16), levels=3, codebook_size=6,
                                      iters=10),
        max_history=5, use_cache=False, train_mode="prompts", rl_users="heldout", heldout_fraction=0.25)
    held_dm.prepare()
    policy = tiny_policy(held_dm, 0)
    result = stratified_analysis(held_dm, policy, {"sft": policy}, NoisyReward(noise=0.3, noise_on="uniform"),
                                 group=GROUP, train_prompts=1, heldout_only=True, progress=False)
    held = held_dm.split.heldout_mask()
    assert len(result.targets) == int(held.sum()) == 15 and held[result.targets[:, 0]].all()
