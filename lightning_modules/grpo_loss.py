"""GRPO's arithmetic as pure functions: rewards with invalid-candidate penalties, group advantages,
the PPO-clipped surrogate with a k3 KL penalty, and per-sample aggregation (DESIGN.md §4 steps 2–4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch


def penalise_invalid(rewards: torch.Tensor, valid: torch.Tensor, penalty: float | None = None,
                     margin: float = 1.0) -> torch.Tensor:
    """Rewards ``[B, G]`` with invalid candidates replaced: by ``penalty`` if given, else by the group's
    minimum valid reward minus ``margin`` (−margin when no candidate of the group is valid).

    A NaN/inf reward counts as invalid: it gets the penalty and never enters the group minimum."""
    valid = valid & torch.isfinite(rewards)  # [B, G]
    if penalty is not None:
        return torch.where(valid, rewards, torch.full_like(rewards, penalty))
    big = torch.finfo(rewards.dtype).max
    group_min = torch.where(valid, rewards, torch.full_like(rewards, big)).min(1, keepdim=True).values  # [B, 1]
    group_min = torch.where(valid.any(1, keepdim=True), group_min, torch.zeros_like(group_min))
    return torch.where(valid, rewards, group_min - margin)


def group_advantages(rewards: torch.Tensor, scale: Literal["group", "batch", "none"] = "group",
                     eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """``A = (r - mean_group) / (std + eps)`` for ``rewards [B, G]``.

    ``scale``: ``group`` (std of the group; unbiased, as TRL), ``batch`` (std over the whole batch) or
    ``none`` (centering only). A group whose rewards are all equal gets A = 0 exactly, never NaN; so does a
    group holding a NaN/inf reward (it is dropped from the GRPO term, and from the ``batch`` std).
    Returns ``(advantages [B, G], zero_std [B])``.
    """
    bad = ~torch.isfinite(rewards).all(1)  # [B] a group with a NaN/inf reward
    rewards = torch.where(bad[:, None], torch.zeros_like(rewards), rewards)  # [B, G] (constant: A = 0 below)
    mean = rewards.mean(1, keepdim=True)  # [B, 1]
    centred = rewards - mean  # [B, G]
    g = rewards.shape[1]
    std = rewards.std(1, keepdim=True) if g > 1 else torch.zeros_like(mean)  # [B, 1]
    zero = (rewards == rewards[:, :1]).all(1)  # [B] exact: the mean's rounding must not make 0.1 x G non-constant
    if scale == "group":
        adv = centred / (std + eps)
    elif scale == "batch":
        kept = rewards[~bad]  # [B', G] the finite groups
        adv = centred / (kept.std() + eps if kept.numel() > 1 else eps)
    elif scale == "none":
        adv = centred
    else:
        raise ValueError(f"scale must be group, batch or none, got {scale!r}")
    return torch.where(zero[:, None], torch.zeros_like(adv), adv), zero  # bad groups are constant: in zero


@dataclass
class SurrogateTerms:
    """Per-token pieces ``[B, G, L]`` of the GRPO loss."""

    loss: torch.Tensor  # -(clipped surrogate - beta * kl)
    ratio: torch.Tensor
    kl: torch.Tensor
    clipped: torch.Tensor  # bool: the clip was active


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(π_θ ‖ π_ref) per token: ``exp(ref - logp) - (ref - logp) - 1`` (≥ 0, 0 when equal)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
                      advantages: torch.Tensor, eps_low: float = 0.2, eps_high: float = 0.2,
                      beta: float = 0.0) -> SurrogateTerms:
    """PPO-clipped surrogate with a k3 KL penalty.

    Args:
        logp, old_logp, ref_logp: ``[B, G, L]`` token log-probs under π_θ (with grad), the rollout
            policy and the reference.
        advantages: ``[B, G]``.
    """
    ratio = torch.exp(logp - old_logp)  # [B, G, L]
    a = advantages[..., None]  # [B, G, 1]
    unclipped = ratio * a
    clipped_ratio = ratio.clamp(1 - eps_low, 1 + eps_high)
    surrogate = torch.minimum(unclipped, clipped_ratio * a)  # [B, G, L]
    clipped = ((ratio < 1 - eps_low) & (a < 0)) | ((ratio > 1 + eps_high) & (a > 0))
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    return SurrogateTerms(loss=-(surrogate - beta * kl), ratio=ratio, kl=kl, clipped=clipped)


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: Literal["sequence", "token"] = "sequence"
              ) -> torch.Tensor:
    """Per-sample loss ``[B]`` from ``per_token [B, G, L]`` over the tokens in ``mask [B, G, L]``.

    ``sequence``: mean over each candidate's tokens, then over the group's candidates (GRPO);
    ``token``: mean over all the group's tokens (DAPO-style token-level averaging).
    """
    m = mask.float()
    if mode == "sequence":
        per_cand = (per_token * m).sum(2) / m.sum(2).clamp_min(1)  # [B, G]
        has = (m.sum(2) > 0).float()  # [B, G]
        return (per_cand * has).sum(1) / has.sum(1).clamp_min(1)
    if mode == "token":
        return (per_token * m).sum((1, 2)) / m.sum((1, 2)).clamp_min(1)
    raise ValueError(f"aggregation must be sequence or token, got {mode!r}")
