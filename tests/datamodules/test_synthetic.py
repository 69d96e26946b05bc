"""The synthetic world: determinism, sizes, no re-buys, exposure bias, true utility, text, and generation speed."""

from __future__ import annotations

import math

import pytest
import torch

from adagrpo.datamodules.errors import ConfigError
from adagrpo.datamodules.synthetic import SyntheticSource, SyntheticWorld

SMALL = dict(num_users=150, num_items=100, num_categories=4, subcategories=3, min_length=4, max_length=12)


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld(**SMALL, seed=3)


def test_same_seed_same_world(world):
    again = SyntheticWorld(**SMALL, seed=3)
    assert again.sequences == world.sequences
    for name in ("user", "step", "slates", "clicked"):
        assert torch.equal(getattr(again.impressions, name), getattr(world.impressions, name))
    assert again.titles == world.titles
    assert torch.equal(again.item_factors, world.item_factors)


def test_different_seed_different_world(world):
    other = SyntheticWorld(**SMALL, seed=4)
    assert other.sequences != world.sequences
    assert not torch.equal(other.item_factors, world.item_factors)


def test_sizes_and_lengths(world):
    assert len(world.sequences) == 150
    lengths = [len(s) for s in world.sequences]
    assert min(lengths) >= 4 and max(lengths) <= 12
    assert all(0 <= i < 100 for s in world.sequences for i in s)
    assert world.item_factors.shape == (100, world.dim)
    assert world.user_factors.shape == (150, world.dim)
    torch.testing.assert_close(world.item_factors.norm(dim=1), torch.ones(100))
    imp = world.impressions
    # One slate per click: sum of lengths impressions, each of slate_size items.
    assert imp.slates.shape == (sum(lengths), world.slate_size)
    assert imp.user.shape == imp.step.shape == imp.clicked.shape == (sum(lengths),)


def test_impressions_agree_with_sequences(world):
    imp = world.impressions
    clicked_in_slate = (imp.slates == imp.clicked[:, None]).any(1)
    assert clicked_in_slate.all()
    for u, t, c in zip(imp.user.tolist(), imp.step.tolist(), imp.clicked.tolist()):
        assert world.sequences[u][t] == c


def test_no_repeated_items_per_user(world):
    for seq in world.sequences:
        assert len(set(seq)) == len(seq)


def _head_share_of_popularity_slots(alpha: float) -> float:
    w = SyntheticWorld(num_users=300, num_items=200, max_length=10, exposure_bias=alpha, seed=1)
    n_ret = round(w.retriever_share * w.slate_size)
    pop_part = w.impressions.slates[:, : w.slate_size - n_ret]  # the popularity-driven slots come first
    head = torch.topk(w.item_popularity, w.num_items // 10).indices  # top-10% items by base popularity
    return float(torch.isin(pop_part, head).double().mean())


def test_exposure_bias_concentrates_exposure_on_head_items():
    uniform = _head_share_of_popularity_slots(0.0)
    biased = _head_share_of_popularity_slots(2.0)
    # α=0: exposure is popularity-blind, so the top 10% get about 10% of the slots.
    assert 0.05 < uniform < 0.15
    # α=2 with a Zipf(1) base rate: exposure ∝ rank^-2, the head takes nearly all popularity slots.
    assert biased > 0.8
    assert biased > uniform + 0.5


def test_utility_shapes_and_invalid_items(world):
    users = torch.tensor([0, 5, 7])
    last = torch.tensor([-1, 3, 10])
    full = world.utility(users, last)
    assert full.shape == (3, 100)
    items = torch.tensor([[0, 1, -1], [4, -1, -1], [99, 2, 3]])
    picked = world.utility(users, last, items)
    assert picked.shape == (3, 3)
    assert torch.isneginf(picked[items < 0]).all()
    ok = items >= 0
    torch.testing.assert_close(picked[ok], full.gather(1, items.clamp_min(0))[ok])
    # Hand check of one entry: U = s·v + γ b with s = normalise((1-ρ) u + ρ v_last).
    s = (1 - world.seq_strength) * world.user_factors[5] + world.seq_strength * world.item_factors[3]
    s = s / s.norm()
    expected = float(s @ world.item_factors[4] + world.appeal_weight * world.item_appeal[4])
    assert math.isclose(float(picked[1, 0]), expected, rel_tol=1e-5, abs_tol=1e-6)
    # No history (-1): the state is the user's taste alone.
    expected0 = float(world.user_factors[0] @ world.item_factors[1] + world.appeal_weight * world.item_appeal[1])
    assert math.isclose(float(picked[0, 1]), expected0, rel_tol=1e-5, abs_tol=1e-6)


def test_catalogue_text_present(world):
    data = world.interactions()
    assert data.num_users == 150 and data.num_items == 100
    assert data.catalog.has_text()
    assert all(data.catalog.text["title"]) and all(data.catalog.text["categories"])
    assert data.catalog.item_ids[:2] == ["i0", "i1"]
    # Items of one sub-category share its word in the category text.
    sub = world.item_subcategory * 100 + world.item_category
    same = torch.nonzero(sub == sub[0]).flatten().tolist()
    words = {data.catalog.text["categories"][i] for i in same}
    assert len(words) == 1


def test_source_loads_world_and_validates():
    src = SyntheticSource(**SMALL, seed=3)
    data = src.load()
    assert data.num_users == 150
    assert [data.sequence(u).tolist() for u in range(3)] == src.world.sequences[:3]
    with pytest.raises(ConfigError, match="exposure_bias"):
        SyntheticWorld(num_users=5, num_items=30, exposure_bias=-1.0)
    with pytest.raises(ConfigError, match="num_items"):
        SyntheticWorld(num_users=5, num_items=10, slate_size=20)


def test_default_world_has_its_documented_size():
    w = SyntheticWorld()
    assert len(w.sequences) == 5000 and w.num_items == 2000


@pytest.mark.parametrize("min_length,max_length", [(5, 8), (6, 6)])
def test_narrow_length_range(min_length, max_length):
    w = SyntheticWorld(num_users=20, num_items=40, min_length=min_length, max_length=max_length)
    assert all(min_length <= len(s) <= max_length for s in w.sequences)
