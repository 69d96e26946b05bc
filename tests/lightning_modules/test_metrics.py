"""Recommendation metrics: against torchmetrics' retrieval metrics, by hand, and O(1) state."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate, RetrievalNormalizedDCG

from adagrpo.lightning_modules.metrics import Coverage, HallucinationRate, MeanPopularity, MeanValue, RankingMetrics


def random_rankings(b: int, r: int, n_items: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``ranked [B, R]`` distinct items per row with some -1 (invalid) slots, and ``target [B]`` — in the list
    for about half of the users."""
    gen = torch.Generator().manual_seed(seed)
    ranked = torch.stack([torch.randperm(n_items, generator=gen)[:r] for _ in range(b)])
    ranked[torch.rand(b, r, generator=gen) < 0.2] = -1
    in_list = torch.rand(b, generator=gen) < 0.5
    pos = torch.randint(r, (b,), generator=gen)
    target = torch.randint(n_items, (b,), generator=gen)
    from_list = ranked[torch.arange(b), pos]
    target = torch.where(in_list & (from_list >= 0), from_list, target)
    return ranked, target


def as_retrieval(ranked: torch.Tensor, target: torch.Tensor, pad_to: int = 0):
    """One query per user: a document per list slot scored by its rank (first = highest), relevant iff it is the
    target (a -1 slot is a non-relevant document); when absent, the target itself is appended below everything,
    after non-relevant filler up to ``pad_to`` documents so it never lands inside a top-K."""
    preds, rel, idx = [], [], []
    b, r = ranked.shape
    for u in range(b):
        row = ranked[u].tolist()
        tgt = int(target[u])
        found = False
        for j, item in enumerate(row):
            hit = item >= 0 and item == tgt and not found
            found |= hit
            preds.append(float(r - j))
            rel.append(hit)
            idx.append(u)
        if not found:  # the target ranks below everything, and past every K even when R < K
            for pad in range(pad_to - r):
                preds.append(-1.0 - pad)
                rel.append(False)
                idx.append(u)
            preds.append(-1.0 - pad_to)
            rel.append(True)
            idx.append(u)
    return torch.tensor(preds), torch.tensor(rel), torch.tensor(idx)


@pytest.mark.parametrize("seed,r", [(0, 10), (1, 10), (2, 20), (3, 4)])
def test_ranking_metrics_match_torchmetrics(seed, r):
    ks = (1, 3, 5, 10)
    ours = RankingMetrics(ks)
    refs = {k: (RetrievalHitRate(top_k=k), RetrievalNormalizedDCG(top_k=k)) for k in ks}
    for chunk in range(3):  # several updates accumulate
        ranked, target = random_rankings(40, r, 50, seed * 10 + chunk)
        ours.update(ranked, target)
        preds, rel, idx = as_retrieval(ranked, target, pad_to=max(ks))
        for hr, ndcg in refs.values():
            hr.update(preds, rel, indexes=idx + 100 * chunk)
            ndcg.update(preds, rel, indexes=idx + 100 * chunk)
    got = ours.compute()
    for k, (hr, ndcg) in refs.items():
        torch.testing.assert_close(got[f"hr_{k}"], hr.compute().float(), atol=1e-6, rtol=0)
        torch.testing.assert_close(got[f"ndcg_{k}"], ndcg.compute().float(), atol=1e-6, rtol=0)
    assert 0 < float(got["hr_10"]) < 1  # the random case has both hits and misses


def test_ranking_metrics_by_hand():
    m = RankingMetrics(ks=(1, 2, 3))
    ranked = torch.tensor([[3, 1, 2], [5, -1, 4], [-1, -1, -1], [7, 8, 9]])
    target = torch.tensor([1, 4, 7, 7])
    # Ranks: user0 -> 1, user1 -> 2, user2 -> miss, user3 -> 0.
    m.update(ranked[:2], target[:2])
    m.update(ranked[2:], target[2:])
    out = m.compute()
    g1, g2 = 1 / math.log2(3), 1 / math.log2(4)
    expected = {
        "hr_1": 1 / 4, "hr_2": 2 / 4, "hr_3": 3 / 4,
        "ndcg_1": 1 / 4, "ndcg_2": (1 + g1) / 4, "ndcg_3": (1 + g1 + g2) / 4,
    }
    assert set(out) == set(expected)
    for name, value in expected.items():
        assert float(out[name]) == pytest.approx(value, abs=1e-6), name


def test_invalid_entries_never_hit():
    m = RankingMetrics(ks=(1, 3))
    # A -1 target must not match -1 (invalid) slots.
    m.update(torch.tensor([[-1, -1, 2]]), torch.tensor([-1]))
    out = m.compute()
    assert float(out["hr_3"]) == 0.0 and float(out["ndcg_3"]) == 0.0
    # Duplicates: the first occurrence decides the rank.
    m = RankingMetrics(ks=(1, 2))
    m.update(torch.tensor([[4, 2, 2]]), torch.tensor([2]))
    assert float(m.compute()["ndcg_2"]) == pytest.approx(1 / math.log2(3))


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_a_list_shorter_than_k_never_turns_a_miss_into_a_hit():
    m = RankingMetrics(ks=(1, 5, 10))
    m.update(torch.tensor([[1, 2, 3], [7, 8, 9]]), torch.tensor([1, 2]))  # R = 3 < K = 5, 10; user1 misses
    out = m.compute()
    assert [float(out[f"hr_{k}"]) for k in (1, 5, 10)] == [0.5, 0.5, 0.5]
    assert [float(out[f"ndcg_{k}"]) for k in (1, 5, 10)] == [0.5, 0.5, 0.5]


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_hallucination_rate_by_hand():
    m = HallucinationRate()
    m.update(torch.tensor([[True, False, True], [False, False, True]]))
    assert float(m.compute()) == pytest.approx(3 / 6)
    m.update(torch.ones(2, 3, dtype=torch.bool))
    assert float(m.compute()) == pytest.approx(3 / 12)
    assert float(HallucinationRate().compute()) == 0.0  # nothing seen yet


def test_coverage_by_hand():
    m = Coverage(num_items=5, k=2)
    m.update(torch.tensor([[0, 1, 2], [1, -1, 4]]))  # top-2: {0, 1} and {1}; 2 and 4 are beyond K
    assert float(m.compute()) == pytest.approx(2 / 5)
    m.update(torch.tensor([[-1, 3, 0]]))
    assert float(m.compute()) == pytest.approx(3 / 5)


def test_mean_popularity_by_hand():
    m = MeanPopularity(k=2)
    popularity = torch.tensor([10, 20, 30, 40, 50])
    m.update(torch.tensor([[0, 1, 2], [-1, 4, 3]]), popularity)  # valid top-2 items: 0, 1, 4
    assert float(m.compute()) == pytest.approx((10 + 20 + 50) / 3)
    m.update(torch.tensor([[3, 3, 3]]), popularity)
    assert float(m.compute()) == pytest.approx((10 + 20 + 50 + 40 + 40) / 5)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_mean_value_by_hand():
    m = MeanValue()
    assert math.isnan(float(m.compute()))
    m.update(torch.tensor([1.0, math.inf, 2.0, math.nan, -3.0, -math.inf]))  # finite: 1, 2, -3
    assert float(m.compute()) == pytest.approx(0.0)
    m.update(torch.tensor([6.0]))
    assert float(m.compute()) == pytest.approx(6.0 / 4)


def test_reset():
    m = RankingMetrics(ks=(1,))
    m.update(torch.tensor([[1]]), torch.tensor([1]))
    m.reset()
    m.update(torch.tensor([[2]]), torch.tensor([1]))
    assert float(m.compute()["hr_1"]) == 0.0


def test_metric_state_is_constant_size():
    metrics = {
        "ranking": (RankingMetrics(), lambda r, t, v: (r, t)),
        "halluc": (HallucinationRate(), lambda r, t, v: (v,)),
        "coverage": (Coverage(num_items=50, k=10), lambda r, t, v: (r,)),
        "popularity": (MeanPopularity(k=10), lambda r, t, v: (r, torch.arange(50))),
        "value": (MeanValue(), lambda r, t, v: (t.double(),)),
    }

    def sizes(metric):
        return {name: tuple(value.shape) for name, value in metric.metric_state.items()}

    ranked, target = random_rankings(16, 20, 50, seed=0)
    valid = ranked >= 0
    before = {}
    for name, (metric, args) in metrics.items():
        metric.update(*args(ranked, target, valid))
        before[name] = sizes(metric)
        assert all(isinstance(v, torch.Tensor) for v in metric.metric_state.values()), name  # no growing lists
    for step in range(200):
        ranked, target = random_rankings(16, 20, 50, seed=step + 1)
        for _name, (metric, args) in metrics.items():
            metric.update(*args(ranked, target, ranked >= 0))
    for name, (metric, _) in metrics.items():
        assert sizes(metric) == before[name], name
    assert float(metrics["ranking"][0].count) == 16 * 201


@pytest.mark.parametrize("seed", range(4))
def test_auc_agrees_with_torchmetrics_binary_auroc_on_ties(seed):
    # auc (metrics.py; the reward model's validation AUC and the bias report) against torchmetrics' binary_auroc,
    # with few distinct scores (many ties, each counted one half) and with continuous scores.
    from torchmetrics.functional.classification import binary_auroc

    from adagrpo.lightning_modules.metrics import auc

    gen = torch.Generator().manual_seed(seed)
    n = 80 + 23 * seed
    labels = (torch.rand(n, generator=gen) < 0.35).long()
    labels[0], labels[1] = 1, 0
    for scores in (torch.randint(0, 5, (n,), generator=gen).float(), torch.randn(n, generator=gen)):
        assert auc(scores, labels) == pytest.approx(float(binary_auroc(scores, labels)), abs=1e-6)
    # all scores tied: one half on both sides
    assert auc(torch.zeros(n), labels) == pytest.approx(float(binary_auroc(torch.zeros(n), labels))) == 0.5


def test_auc_is_nan_when_labels_hold_one_class():
    from adagrpo.lightning_modules.metrics import auc

    assert math.isnan(auc(torch.randn(6), torch.ones(6)))
