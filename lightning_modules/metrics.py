"""Recommendation metrics as torchmetrics ``Metric``s with sum/count states.

Every state is a running sum reduced by summation across processes, so memory does not grow with
the number of evaluated users and DDP/FSDP evaluation is exact. Only :class:`Coverage` keeps a
catalogue-sized vector (which items were recommended at all).
"""

from __future__ import annotations

import math

import torch
from torchmetrics import Metric


class RankingMetrics(Metric):
    """HR@K and NDCG@K for one held-out target per user.

    ``update(ranked [B, R], target [B])``: ``ranked`` lists recommended item indices best first
    (-1 = no item / invalid SID, never a hit). With a single relevant item, NDCG@K is
    ``1 / log2(rank + 2)`` if the target's 0-based rank is below K, else 0.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, ks: tuple[int, ...] = (1, 5, 10, 20)) -> None:
        super().__init__()
        self.ks = tuple(int(k) for k in ks)
        self.add_state("hits", default=torch.zeros(len(self.ks), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("ndcg", default=torch.zeros(len(self.ks), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, ranked: torch.Tensor, target: torch.Tensor) -> None:
        match = (ranked == target[:, None]) & (ranked >= 0)  # [B, R]
        found = match.any(1)  # [B]
        miss = max(ranked.shape[1], *self.ks)  # a miss ranks past every K, even when the list is shorter than K
        rank = torch.where(found, match.float().argmax(1), torch.full_like(target, miss))  # [B]
        ks = torch.tensor(self.ks, device=ranked.device)
        hit = rank[:, None] < ks[None, :]  # [B, nK]
        gain = 1.0 / torch.log2(rank.double() + 2.0)  # [B]
        self.hits += hit.double().sum(0)
        self.ndcg += (hit.double() * gain[:, None]).sum(0)
        self.count += ranked.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp_min(1)
        out = {}
        for i, k in enumerate(self.ks):
            out[f"hr_{k}"] = (self.hits[i] / n).float()
            out[f"ndcg_{k}"] = (self.ndcg[i] / n).float()
        return out


class HallucinationRate(Metric):
    """Share of returned SIDs that name no catalogue item. ``update(valid [B, R])``."""

    full_state_update = False
    higher_is_better = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("invalid", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, valid: torch.Tensor) -> None:
        self.invalid += (~valid).sum()
        self.total += valid.numel()

    def compute(self) -> torch.Tensor:
        return (self.invalid / self.total.clamp_min(1)).float()


class Coverage(Metric):
    """Share of the catalogue that appears in anyone's top-K. ``update(ranked [B, R])``."""

    full_state_update = False

    def __init__(self, num_items: int, k: int = 10) -> None:
        super().__init__()
        self.k = k
        self.num_items = num_items
        self.add_state("seen", default=torch.zeros(num_items, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, ranked: torch.Tensor) -> None:
        top = ranked[:, : self.k]
        top = top[top >= 0]
        self.seen += torch.bincount(top, minlength=self.num_items).double()

    def compute(self) -> torch.Tensor:
        return ((self.seen > 0).double().mean()).float()


class MeanPopularity(Metric):
    """Mean training popularity (interaction count) of the valid items in top-K.
    ``update(ranked [B, R], popularity [N])``."""

    full_state_update = False

    def __init__(self, k: int = 10) -> None:
        super().__init__()
        self.k = k
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, ranked: torch.Tensor, popularity: torch.Tensor) -> None:
        top = ranked[:, : self.k]
        ok = top >= 0
        self.total += popularity[top.clamp_min(0)].double()[ok].sum()
        self.count += ok.sum()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1)).float()


class MeanValue(Metric):
    """Mean of a per-sample value (e.g. the true utility of what was recommended). ``update(values [B])``;
    non-finite values are skipped."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: torch.Tensor) -> None:
        ok = torch.isfinite(values)
        self.total += values.double()[ok].sum()
        self.count += ok.sum()

    def compute(self) -> torch.Tensor:
        if self.count == 0:
            return torch.tensor(math.nan)
        return (self.total / self.count).float()


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC of binary ``labels`` (1/0) by ``scores`` (ties count one half); NaN if a class is missing.

    Exact (average ranks, float64); agrees with ``torchmetrics.functional.classification.binary_auroc`` on ties
    (tested), but is NaN rather than a warning and 0 when the labels hold one class only."""
    scores, labels = scores.double().flatten(), labels.flatten()
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    allv = torch.cat([pos, neg])
    ranks = _average_ranks(allv)
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks with ties averaged."""
    order = torch.argsort(x)
    sorted_x = x[order]
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=x.dtype)
    uniq, inverse, counts = torch.unique(sorted_x, return_inverse=True, return_counts=True)
    if len(uniq) < len(x):
        sums = torch.zeros(len(uniq), dtype=x.dtype).index_add_(0, inverse, ranks[order])
        ranks[order] = (sums / counts)[inverse]
    return ranks
