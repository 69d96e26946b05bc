"""Per-sample rollout diagnostics (no gradient): how uncertain the policy is about the ground truth,
and how well the reward model separates the ground truth from the rollout's negatives.

These are the signals AdaGRPO's gates read (DESIGN.md §4 step 6), and the strata of the analysis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch


@dataclass
class Diagnostics:
    """All fields are ``[B]``.

    Policy side: ``gt_rank`` — 1-based rank of y* among the group's distinct valid items plus y*, by
    the policy's sequence log-prob (1 = the policy's top choice); ``gt_prob`` — π(y*|x) on the rollout's
    support; ``entropy`` — entropy (nats) of the policy's sequence probabilities renormalised over
    the group's distinct valid items plus y*; ``gt_in_group`` — y* was among the rollouts. Invalid
    SIDs (unconstrained rollouts) name no item, so they take part in neither side.

    Reward side (valid negatives = valid candidates other than y*): ``rm_rank`` — 1 + the number of
    negatives scored above r*; ``rm_margin`` — r* minus the best negative's reward; ``rm_auc`` — the
    share of negatives scored below r* (ties count half); ``num_negatives``. With no valid negative,
    rank, margin and AUC are NaN and a threshold on them does not pass.

    Derived: ``gt_band`` — 1 when y* is in the group but not the policy's top choice; ``rm_gain`` —
    ``gt_rank − rm_rank``, positive when the reward model ranks y* above where the policy does (both ranks
    are over the same pool of distinct valid items).

    Truth (synthetic world only, NaN elsewhere): ``rm_concordance`` / ``policy_concordance`` — the share of
    candidate pairs with different true utility that the reward model / the policy's sequence log-prob orders
    as the truth does (see :func:`concordance`).
    """

    gt_rank: torch.Tensor
    gt_prob: torch.Tensor
    entropy: torch.Tensor
    gt_in_group: torch.Tensor
    rm_rank: torch.Tensor
    rm_margin: torch.Tensor
    rm_auc: torch.Tensor
    num_negatives: torch.Tensor
    gt_band: torch.Tensor | None = None
    rm_gain: torch.Tensor | None = None
    rm_concordance: torch.Tensor | None = None
    policy_concordance: torch.Tensor | None = None

    def __post_init__(self) -> None:
        nan = torch.full_like(self.gt_rank, math.nan)
        if self.gt_band is None:  # y* is in the group but not the policy's first choice
            self.gt_band = ((self.gt_in_group > 0) & (self.gt_rank >= 2)).float()
        if self.rm_gain is None:  # > 0: the reward model ranks y* above where the policy does (same pool)
            self.rm_gain = self.gt_rank - self.rm_rank
        if self.rm_concordance is None:
            self.rm_concordance = nan
        if self.policy_concordance is None:
            self.policy_concordance = nan.clone()

    def __len__(self) -> int:
        return self.gt_rank.shape[0]

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def get(self, name: str) -> torch.Tensor:
        if name not in {f.name for f in fields(self)}:
            raise KeyError(f"no diagnostic {name!r}; have {[f.name for f in fields(self)]}")
        return getattr(self, name)

    def with_truth(self, rm_concordance: torch.Tensor, policy_concordance: torch.Tensor) -> Diagnostics:
        """A copy carrying the within-group concordances with the true utility (synthetic world only)."""
        return replace(self, rm_concordance=rm_concordance, policy_concordance=policy_concordance)


def first_occurrence(items: torch.Tensor) -> torch.Tensor:
    """``[B, G]`` → bool ``[B, G]``: True where the item has not appeared earlier in its row."""
    same = items[:, :, None] == items[:, None, :]  # [B, G, G]
    return ~torch.tril(same, diagonal=-1).any(2)


@torch.no_grad()
def compute_diagnostics(
    cand_items: torch.Tensor,
    cand_valid: torch.Tensor,
    cand_seq_logp: torch.Tensor,
    gt_item: torch.Tensor,
    gt_seq_logp: torch.Tensor,
    cand_reward: torch.Tensor,
    gt_reward: torch.Tensor,
) -> Diagnostics:
    """Diagnostics from a rollout group.

    Args:
        cand_items: ``[B, G]`` item per candidate (-1 invalid); ``cand_valid``: ``[B, G]``.
        cand_seq_logp: ``[B, G]`` policy sequence log-prob of each candidate (rollout support).
        gt_item: ``[B]``; ``gt_seq_logp``: ``[B]`` policy sequence log-prob of y*.
        cand_reward: ``[B, G]`` reward-model scores; ``gt_reward``: ``[B]`` r*.
    """
    is_gt = cand_items == gt_item[:, None]  # [B, G]
    distinct = first_occurrence(cand_items) & ~is_gt & cand_valid  # [B, G] other catalogue items, each once
    # Policy side: y* against the group's other distinct items.
    lp = torch.where(distinct, cand_seq_logp, torch.full_like(cand_seq_logp, -math.inf))  # [B, G]
    gt_rank = 1 + (lp > gt_seq_logp[:, None]).sum(1)  # [B]
    pool = torch.cat([lp, gt_seq_logp[:, None]], 1)  # [B, G+1]
    p = torch.softmax(pool, dim=1)
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(1)  # [B]
    # Reward side: valid negatives only.
    neg = cand_valid & ~is_gt & first_occurrence(cand_items)  # [B, G]
    n_neg = neg.sum(1)  # [B]
    above = (cand_reward > gt_reward[:, None]) & neg
    below = (cand_reward < gt_reward[:, None]) & neg
    ties = (cand_reward == gt_reward[:, None]) & neg
    rm_rank = 1 + above.sum(1).float()
    best_neg = torch.where(neg, cand_reward, torch.full_like(cand_reward, -math.inf)).max(1).values
    has = n_neg > 0
    nan = torch.full_like(gt_reward, math.nan)
    rm_rank = torch.where(has, rm_rank, nan)
    rm_margin = torch.where(has, gt_reward - best_neg, nan)
    rm_auc = torch.where(has, (below.sum(1) + 0.5 * ties.sum(1)) / n_neg.clamp_min(1), nan)
    return Diagnostics(
        gt_rank=gt_rank.float(),
        gt_prob=gt_seq_logp.exp(),
        entropy=entropy,
        gt_in_group=is_gt.any(1),
        rm_rank=rm_rank.float(),
        rm_margin=rm_margin,
        rm_auc=rm_auc,
        num_negatives=n_neg.float(),
    )


@torch.no_grad()
def concordance(scores: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row, the share of pairs ``(j, k)`` of masked-in entries with ``truth_j != truth_k`` that ``scores``
    orders as ``truth`` does (score ties count one half); NaN for a row with no such pair.

    ``scores``, ``truth``: ``[B, G]``; ``mask``: bool ``[B, G]`` (e.g. distinct valid candidates).
    """
    pair = mask[:, :, None] & mask[:, None, :]  # [B, G, G]
    dt = truth[:, :, None] - truth[:, None, :]  # [B, G, G]
    ds = scores[:, :, None] - scores[:, None, :]
    useful = pair & (dt > 0) & torch.isfinite(dt)  # each unordered pair once, oriented by the truth
    agree = (useful & (ds > 0)).sum((1, 2)).float() + 0.5 * (useful & (ds == 0)).sum((1, 2)).float()
    n = useful.sum((1, 2)).float()
    return torch.where(n > 0, agree / n.clamp_min(1), torch.full_like(n, math.nan))  # [B]
