"""GRPO's arithmetic (DESIGN.md §4 steps 2–4) against numbers worked out by hand in the comments:
invalid-candidate penalties, group advantages, the k3 KL, the PPO-clipped surrogate and aggregation."""

from __future__ import annotations

import math

import pytest
import torch

from adagrpo.lightning_modules.grpo_loss import aggregate, clipped_surrogate, group_advantages, k3_kl, penalise_invalid

T, F = True, False


def close(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


# ----------------------------------------------------------------------------------------- penalise_invalid
REWARDS = torch.tensor([[1.0, 3.0, 5.0], [2.0, 4.0, 0.5]])  # [B=2, G=3]
VALID = torch.tensor([[T, T, F], [F, F, T]])


def test_penalty_explicit_replaces_invalid_only():
    # Valid rewards untouched, the three invalid slots get -2.
    close(penalise_invalid(REWARDS, VALID, penalty=-2.0), [[1.0, 3.0, -2.0], [-2.0, -2.0, 0.5]])


def test_penalty_zero_is_a_penalty_not_the_default():
    # penalty=0.0 is falsy but explicit: invalid → 0 (the default would give 0.0 and -0.5 here).
    close(penalise_invalid(REWARDS, VALID, penalty=0.0), [[1.0, 3.0, 0.0], [0.0, 0.0, 0.5]])


def test_penalty_default_is_group_min_valid_minus_margin():
    # Row 0: valid {1, 3} → min 1 → invalid gets 1 - 1 = 0 (the invalid 5.0 is ignored for the min).
    # Row 1: valid {0.5} → invalid gets 0.5 - 1 = -0.5.
    close(penalise_invalid(REWARDS, VALID), [[1.0, 3.0, 0.0], [-0.5, -0.5, 0.5]])
    # margin 0.25: 1 - 0.25 = 0.75; 0.5 - 0.25 = 0.25.
    close(penalise_invalid(REWARDS, VALID, margin=0.25), [[1.0, 3.0, 0.75], [0.25, 0.25, 0.5]])


def test_penalty_group_with_no_valid_gets_minus_margin():
    rewards = torch.tensor([[7.0, 9.0], [2.0, 6.0]])
    valid = torch.tensor([[F, F], [T, F]])
    # Row 0 has no valid candidate → -margin for all; row 1: 2 - 1 = 1.
    close(penalise_invalid(rewards, valid), [[-1.0, -1.0], [2.0, 1.0]])
    close(penalise_invalid(rewards, valid, margin=0.5), [[-0.5, -0.5], [2.0, 1.5]])
    assert torch.isfinite(penalise_invalid(rewards, valid)).all()


# ----------------------------------------------------------------------------------------- group_advantages
def test_group_scale_uses_unbiased_std():
    # [0, 2, 4]: mean 2, centred [-2, 0, 2], unbiased var (4 + 0 + 4) / 2 = 4 → std 2.
    # eps = 1e-4: A = [-2, 0, 2] / 2.0001. (The biased std sqrt(8/3) = 1.633 would give ±1.2247.)
    r = torch.tensor([[0.0, 2.0, 4.0]], dtype=torch.float64)
    adv, zero = group_advantages(r, "group")
    close(adv, [[-2 / 2.0001, 0.0, 2 / 2.0001]], atol=1e-12)
    assert zero.tolist() == [False]


def test_group_scale_eps_matters_for_small_spreads():
    # [0, 2e-4]: mean 1e-4, centred ±1e-4, unbiased std sqrt(2e-8 / 1) = 1.41421e-4.
    # A = ±1e-4 / (1.41421e-4 + 1e-4) = ±1 / (sqrt 2 + 1) = ±(sqrt 2 - 1) = ±0.414214.
    r = torch.tensor([[0.0, 2e-4]], dtype=torch.float64)
    adv, _ = group_advantages(r, "group", eps=1e-4)
    s = math.sqrt(2) - 1
    close(adv, [[-s, s]], atol=1e-9)
    # With eps = 0 it is the plain z-score ±1/sqrt 2 = ±0.707107.
    adv0, _ = group_advantages(r, "group", eps=0.0)
    close(adv0, [[-1 / math.sqrt(2), 1 / math.sqrt(2)]], atol=1e-9)


def test_batch_and_none_scales():
    # Rows: [0, 2, 4] (mean 2), [2, 2, 2], [2, 2, 2]. Batch mean of all nine = 18 / 9 = 2;
    # batch unbiased var = (4 + 0 + 4 + 0·6) / 8 = 1 → std 1. Centering stays per group.
    r = torch.tensor([[0.0, 2.0, 4.0], [2.0, 2.0, 2.0], [2.0, 2.0, 2.0]], dtype=torch.float64)
    adv, zero = group_advantages(r, "batch", eps=1e-4)
    close(adv, [[-2 / 1.0001, 0.0, 2 / 1.0001], [0.0] * 3, [0.0] * 3], atol=1e-12)
    assert zero.tolist() == [False, True, True]
    # group scale on the same rows: row 0 / 2.0001 instead.
    adv_g, _ = group_advantages(r, "group", eps=1e-4)
    close(adv_g[0], [-2 / 2.0001, 0.0, 2 / 2.0001], atol=1e-12)
    # none: centring only.
    adv_n, _ = group_advantages(r, "none")
    close(adv_n, [[-2.0, 0.0, 2.0], [0.0] * 3, [0.0] * 3], atol=0)


def test_bad_scale_raises():
    with pytest.raises(ValueError, match="group, batch or none"):
        group_advantages(torch.zeros(1, 2), "groups")  # type: ignore[arg-type]


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("value", [0.0, 0.1, 0.7, 1 / 3, -0.37, 123.456])
@pytest.mark.parametrize("g", [2, 3, 7, 16])
def test_zero_variance_group_is_exactly_zero(scale, value, g):
    # A group of G equal float32 rewards: the mean of 7 × 0.1 rounds to 0.1 - 7.45e-9, so a centred-value
    # test would call it non-constant and give A ≈ -7e-5 (≈ -0.07 for 5 × 123.456). It must be exactly 0.
    r = torch.cat([torch.full((1, g), value), torch.arange(g, dtype=torch.float32)[None]], 0)  # [2, G]
    adv, zero = group_advantages(r, scale)
    assert zero.tolist() == [True, False]
    assert (adv[0] == 0).all(), adv[0]
    assert torch.isfinite(adv).all()


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_of_one_is_zero_not_nan(scale):
    # G = 1: the unbiased std of one value is NaN in torch; the advantage must be 0.
    r = torch.tensor([[3.0], [7.0]])
    adv, zero = group_advantages(r, scale)
    assert zero.tolist() == [True, True]
    assert (adv == 0).all()


def test_all_groups_constant_batch_scale_is_zero():
    # Every group constant but the batch std > 0: still A = 0 everywhere.
    r = torch.tensor([[1.0, 1.0], [5.0, 5.0]])
    adv, zero = group_advantages(r, "batch")
    assert zero.all() and (adv == 0).all()


# ----------------------------------------------------------------------------------------- k3_kl
def test_k3_zero_when_equal():
    logp = torch.log(torch.tensor([0.1, 0.5, 0.9]))
    assert (k3_kl(logp, logp.clone()) == 0).all()


def test_k3_hand_values():
    # π = 0.5, π_ref = 0.25: d = ln(0.25 / 0.5) = -ln 2; k3 = e^d - d - 1 = 0.5 + 0.693147 - 1 = 0.193147.
    # π = 0.25, π_ref = 0.5: d = ln 2; k3 = 2 - 0.693147 - 1 = 0.306853.
    logp = torch.log(torch.tensor([0.5, 0.25]))
    ref = torch.log(torch.tensor([0.25, 0.5]))
    close(k3_kl(logp, ref), [0.5 + math.log(2) - 1, 2 - math.log(2) - 1])
    close(k3_kl(logp, ref), [0.193147, 0.306853], atol=1e-6)


def test_k3_nonnegative():
    gen = torch.Generator().manual_seed(0)
    logp = -torch.rand(1000, generator=gen) * 5
    ref = -torch.rand(1000, generator=gen) * 5
    assert (k3_kl(logp, ref) >= 0).all()


# ----------------------------------------------------------------------------------------- clipped_surrogate
def lp(ratios: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp, old_logp) ``[1, G, 1]`` with the given ratios; old_logp = ln 0.4."""
    old = torch.full((1, len(ratios), 1), math.log(0.4))
    return old + torch.log(torch.tensor(ratios)).view(1, -1, 1), old


def test_ratio_one_gives_minus_advantage():
    logp, old = lp([1.0, 1.0])
    adv = torch.tensor([[1.5, -0.5]])
    t = clipped_surrogate(logp, old, None, adv, beta=0.1)  # no reference: KL term 0
    close(t.loss[..., 0], [[-1.5, 0.5]])
    close(t.ratio[..., 0], [[1.0, 1.0]])
    assert not t.clipped.any()
    assert (t.kl == 0).all()


def test_ratio_one_plus_beta_kl():
    # π = 0.4 = π_old; π_ref = 0.2: k3 = 0.5 + ln 2 - 1 = 0.193147; loss = -A + 0.1 · 0.193147.
    logp, old = lp([1.0, 1.0])
    ref = torch.full_like(logp, math.log(0.2))
    adv = torch.tensor([[1.5, -0.5]])
    t = clipped_surrogate(logp, old, ref, adv, beta=0.1)
    kl = 0.5 + math.log(2) - 1
    close(t.kl[..., 0], [[kl, kl]])
    close(t.loss[..., 0], [[-1.5 + 0.1 * kl, 0.5 + 0.1 * kl]])


def test_clipping_both_sides_symmetric():
    # ε = 0.2 → clip range [0.8, 1.2].
    # A = +1, ratio 1.5: min(1.5, 1.2) = 1.2 → loss -1.2, clipped.
    # A = +1, ratio 0.5: min(0.5, 0.8) = 0.5 → loss -0.5, not clipped (pessimistic side is unclipped).
    # A = -1, ratio 0.5: min(-0.5, -0.8) = -0.8 → loss 0.8, clipped.
    # A = -1, ratio 1.5: min(-1.5, -1.2) = -1.5 → loss 1.5, not clipped.
    logp, old = lp([1.5, 0.5, 0.5, 1.5])
    logp.requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    t = clipped_surrogate(logp, old, None, adv, eps_low=0.2, eps_high=0.2)
    close(t.loss[..., 0], [[-1.2, -0.5, 0.8, 1.5]], atol=1e-5)
    close(t.ratio[..., 0], [[1.5, 0.5, 0.5, 1.5]], atol=1e-5)
    assert t.clipped[..., 0].tolist() == [[True, False, True, False]]
    # Gradient d loss / d logp = -A · ratio where unclipped, 0 where clipped: [0, -0.5, 0, 1.5].
    t.loss.sum().backward()
    close(logp.grad[..., 0], [[0.0, -0.5, 0.0, 1.5]], atol=1e-5)


def test_clipping_asymmetric_eps():
    # ε_low = 0.2, ε_high = 0.28 (DAPO's clip-higher): range [0.8, 1.28].
    # A = +1, ratio 1.25 < 1.28: not clipped, loss -1.25 (with ε_high = 0.2 it would be -1.2, clipped).
    # A = +1, ratio 1.3 > 1.28: clipped at 1.28 → loss -1.28.
    # A = -1, ratio 0.75 < 0.8: clipped at 0.8 → loss 0.8.
    # A = -1, ratio 0.85 ≥ 0.8: not clipped → loss 0.85.
    logp, old = lp([1.25, 1.3, 0.75, 0.85])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    t = clipped_surrogate(logp, old, None, adv, eps_low=0.2, eps_high=0.28)
    close(t.loss[..., 0], [[-1.25, -1.28, 0.8, 0.85]], atol=1e-5)
    assert t.clipped[..., 0].tolist() == [[False, True, True, False]]
    sym = clipped_surrogate(logp, old, None, adv, eps_low=0.2, eps_high=0.2)
    close(sym.loss[0, 0, 0], -1.2, atol=1e-5)
    assert sym.clipped[0, 0, 0]


def test_zero_advantage_never_clipped():
    logp, old = lp([2.0, 0.1])
    t = clipped_surrogate(logp, old, None, torch.zeros(1, 2))
    assert not t.clipped.any()
    assert (t.loss == 0).all()


# ----------------------------------------------------------------------------------------- aggregate
def test_aggregate_sequence_vs_token_with_ragged_mask():
    per_token = torch.tensor([
        [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]],
        [[10.0, 20.0, 30.0], [7.0, 7.0, 7.0]],
        [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]],
    ])  # [B=3, G=2, L=3]
    mask = torch.tensor([
        [[T, T, T], [T, F, F]],
        [[T, T, F], [F, F, F]],
        [[F, F, F], [F, F, F]],
    ])
    # Row 0: sequence = mean(mean(1,2,3) = 2, mean(4) = 4) = 3; token = (1+2+3+4) / 4 = 2.5.
    # Row 1: candidate 1 has no tokens and is left out: sequence = mean(10, 20) = 15; token = 30 / 2 = 15.
    # Row 2: nothing → 0 (no NaN).
    close(aggregate(per_token, mask, "sequence"), [3.0, 15.0, 0.0])
    close(aggregate(per_token, mask, "token"), [2.5, 15.0, 0.0])


def test_aggregate_bad_mode():
    with pytest.raises(ValueError, match="sequence or token"):
        aggregate(torch.zeros(1, 1, 1), torch.ones(1, 1, 1, dtype=torch.bool), "mean")  # type: ignore[arg-type]
