"""Non-finite safety: NaN/inf rewards are masked and counted, steps with a NaN/inf loss or gradient norm are
skipped and counted, a run of them stops the fit, and a NaN policy is never saved."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from reliability_helpers import TINY
from tiny_world import quiet_trainer
from torch import nn

from adagrpo.lightning_modules.finite import (
    MASKED_REWARDS,
    SKIPPED_STEPS,
    FiniteGuard,
    NonFiniteTraining,
    mask_nonfinite_rewards,
)
from adagrpo.lightning_modules.grpo import GRPOModule
from adagrpo.lightning_modules.grpo_loss import group_advantages, penalise_invalid
from adagrpo.lightning_modules.policy import LlamaPolicy
from adagrpo.lightning_modules.reward import TorchReward
from adagrpo.lightning_modules.sft import SFTModule

nan, inf = math.nan, math.inf
T, F = True, False


# ------------------------------------------------------------------------------------------------ pure functions
def test_penalise_invalid_treats_nan_as_invalid():
    # Row 0: NaN is invalid → valid {1, 3}, min 1 → penalty 1 - 1 = 0 for the NaN slot.
    # Row 1: inf and the invalid slot → valid {2} → both get 2 - 1 = 1.
    rewards = torch.tensor([[1.0, nan, 3.0], [2.0, inf, 5.0]])
    valid = torch.tensor([[T, T, T], [T, T, F]])
    out = penalise_invalid(rewards, valid)
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0, 3.0], [2.0, 1.0, 1.0]]))
    torch.testing.assert_close(penalise_invalid(rewards, valid, penalty=-5.0),
                               torch.tensor([[1.0, -5.0, 3.0], [2.0, -5.0, -5.0]]))


def test_group_advantages_drop_a_group_with_nan():
    # Row 0 holds NaN → A = 0 and counted as zero-variance; row 1: [0, 2] → centred [-1, 1], std sqrt(2).
    rewards = torch.tensor([[nan, 1.0], [0.0, 2.0]], dtype=torch.float64)
    adv, zero = group_advantages(rewards, "group")
    assert zero.tolist() == [True, False]
    s = math.sqrt(2) + 1e-4
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.0], [-1 / s, 1 / s]], dtype=torch.float64))
    # batch scale: the std over the finite groups only ([0, 2] → sqrt(2)).
    adv_b, _ = group_advantages(rewards, "batch")
    torch.testing.assert_close(adv_b, torch.tensor([[0.0, 0.0], [-1 / s, 1 / s]], dtype=torch.float64))
    adv_n, _ = group_advantages(torch.tensor([[inf, -inf], [1.0, 3.0]]), "none")
    torch.testing.assert_close(adv_n, torch.tensor([[0.0, 0.0], [-1.0, 1.0]]))


def test_mask_nonfinite_rewards_counts_valid_ones_only():
    raw = torch.tensor([[1.0, nan, inf], [-inf, 2.0, nan]])
    valid = torch.tensor([[T, T, F], [T, T, T]])
    clean, kept, masked = mask_nonfinite_rewards(raw, valid)
    assert masked == 3  # the invalid inf is not counted
    torch.testing.assert_close(clean, torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]))
    assert kept.tolist() == [[T, F, F], [F, T, F]]


def test_guard_stops_after_consecutive_skips():
    guard = FiniteGuard(max_consecutive=3)
    guard.skip("x", 0)
    guard.skip("x", 0)
    guard.ok()  # a good step resets the run
    guard.skip("x", 1)
    guard.skip("x", 1)
    with pytest.raises(NonFiniteTraining, match="3 consecutive training steps"):
        guard.skip("loss is nan", 1)
    assert guard.skipped_steps == 5


# ------------------------------------------------------------------------------------------------ SFT (automatic)
class FlakySFT(SFTModule):
    """SFT whose loss is NaN at the ``nan_loss`` batches and whose gradients are NaN at the ``nan_grad`` ones;
    it keeps the policy's weights as they were before each step."""

    def __init__(self, nan_loss=(), nan_grad=(), **kwargs) -> None:
        super().__init__(**kwargs)
        self.nan_loss, self.nan_grad = set(nan_loss), set(nan_grad)
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def training_step(self, batch, batch_idx):
        self.snapshots[batch_idx] = {k: v.detach().clone() for k, v in self.policy.state_dict().items()}
        if batch_idx in self.nan_loss:  # what a NaN loss meets: the module's own check
            return self.finite_loss(torch.tensor(nan, requires_grad=True))
        loss = super().training_step(batch, batch_idx)
        return NaNGradient.apply(loss) if batch_idx in self.nan_grad else loss


class NaNGradient(torch.autograd.Function):
    """Identity in the forward pass, NaN gradients in the backward pass."""

    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        return x.clone()

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        return torch.full_like(grad, nan)


def _sft_fit(tiny_world_dm, steps, **kwargs):
    L.seed_everything(0)
    module = FlakySFT(policy=LlamaPolicy(**TINY), **kwargs)
    trainer = quiet_trainer(max_steps=steps, log_every_n_steps=1)
    trainer.fit(module, datamodule=tiny_world_dm)
    return module, trainer


def _same(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_sft_skips_a_nan_loss_step_and_counts_it(tiny_world_dm):
    module, trainer = _sft_fit(tiny_world_dm, 4, nan_loss={1})
    assert module.finite_guard.skipped_steps == 1
    assert float(trainer.callback_metrics[SKIPPED_STEPS]) == 1.0
    assert _same(module.snapshots[1], module.snapshots[2])  # step 1 changed nothing
    assert not _same(module.snapshots[2], module.snapshots[3])  # later steps train
    assert all(torch.isfinite(p).all() for p in module.policy.parameters())


def test_sft_skips_a_nan_gradient_step_without_touching_optimizer_state(tiny_world_dm):
    L.seed_everything(0)
    module = FlakySFT(nan_grad={2}, policy=LlamaPolicy(**TINY))
    trainer = quiet_trainer(max_steps=4, log_every_n_steps=1)
    trainer.fit(module, datamodule=tiny_world_dm)
    assert module.finite_guard.skipped_steps == 1
    assert _same(module.snapshots[2], module.snapshots[3])
    assert not _same(module.snapshots[1], module.snapshots[2])
    assert all(torch.isfinite(p).all() for p in module.policy.parameters())
    opt = trainer.optimizers[0]
    steps = {int(s["step"]) for s in opt.state.values() if "step" in s}
    assert steps == {3}, steps  # AdamW's step count skipped the bad step for every parameter


def test_sft_stops_after_consecutive_nan_steps_and_saves_nothing(tiny_world_dm, tmp_path):
    L.seed_everything(0)
    module = FlakySFT(nan_grad=set(range(1, 50)), policy=LlamaPolicy(**TINY))
    module.max_skipped_steps = 3
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1)
    trainer = quiet_trainer(max_steps=20, enable_checkpointing=True, callbacks=[ckpt])
    with pytest.raises(NonFiniteTraining, match="3 consecutive training steps"):
        trainer.fit(module, datamodule=tiny_world_dm)
    assert module.finite_guard.skipped_steps == 3
    for path in tmp_path.glob("*.ckpt"):
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path


def test_a_nan_policy_is_never_saved(tiny_world_dm, tmp_path):
    L.seed_everything(0)
    module = SFTModule(policy=LlamaPolicy(**TINY))
    trainer = quiet_trainer(max_steps=1)
    trainer.fit(module, datamodule=tiny_world_dm)
    with torch.no_grad():
        next(module.policy.parameters())[0, 0] = nan
    with pytest.raises(NonFiniteTraining, match="refusing to save a checkpoint"):
        trainer.save_checkpoint(tmp_path / "nan.ckpt")
    assert not (tmp_path / "nan.ckpt").exists()


# ------------------------------------------------------------------------------------------------ GRPO (manual)
class SometimesNaN(nn.Module):
    """A reward whose score is NaN or inf for ~``share`` of (history, item) pairs (a fixed hash), else a dot
    product of learned-free item features."""

    def __init__(self, share: float = 0.05) -> None:
        super().__init__()
        self.share = share

    def forward(self, histories: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        score = torch.cos(items.float() * 0.37 + histories[:, -1:].float() * 0.11)  # [B, N]
        key = (items * 7919 + histories[:, -1:].clamp_min(0) * 104729) % 1000  # [B, N]
        bad = key < 1000 * self.share
        return torch.where(bad, torch.where(key % 2 == 0, torch.full_like(score, nan), torch.full_like(score, inf)),
                           score)


def _grpo(rl_dm, sft_ckpt, share: float) -> GRPOModule:
    g = GRPOModule(init_from=sft_ckpt, reward=TorchReward(module=SometimesNaN(share)), num_generations=4,
                   optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3), beta=0.01)
    return g


def test_grpo_with_nan_rewards_stays_finite_and_counts(rl_dm, sft_ckpt):
    L.seed_everything(0)
    g = _grpo(rl_dm, sft_ckpt, share=0.2)
    trainer = quiet_trainer(max_steps=6, log_every_n_steps=1)
    trainer.fit(g, datamodule=rl_dm)
    assert trainer.global_step == 6
    assert all(torch.isfinite(p).all() for p in g.policy.parameters())
    m = trainer.callback_metrics
    assert float(m[MASKED_REWARDS]) > 0 and float(m[MASKED_REWARDS]) == g.finite_guard.masked_rewards
    assert float(m[SKIPPED_STEPS]) == 0.0
    for name in ("loss/total", "loss/grpo", "reward/mean", "reward/gt"):
        assert math.isfinite(float(m[name])), (name, m[name])


def test_grpo_skips_a_nan_loss_step(rl_dm, sft_ckpt, monkeypatch):
    L.seed_everything(0)
    g = _grpo(rl_dm, sft_ckpt, share=0.0)
    calls = {"n": 0}
    combine = g.balancer.combine

    def nan_once(nll, grpo, admission, diagnostics):
        calls["n"] += 1
        loss, w = combine(nll, grpo, admission, diagnostics)
        return (loss * nan if calls["n"] == 2 else loss), w

    monkeypatch.setattr(g.balancer, "combine", nan_once)
    trainer = quiet_trainer(max_steps=3, log_every_n_steps=1)
    trainer.fit(g, datamodule=rl_dm)
    assert g.finite_guard.skipped_steps == 1
    assert trainer.global_step == 3 and calls["n"] == 4  # the skipped rollout did not count as a step
    assert all(torch.isfinite(p).all() for p in g.policy.parameters())


class RewardLog(L.Callback):
    """Keeps the logged mean reward of every step."""

    def __init__(self) -> None:
        self.rewards: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rewards.append(float(trainer.callback_metrics["reward/mean"]))


@pytest.mark.slow
def test_200_steps_with_5_percent_nan_rewards_track_a_clean_run(rl_dm, sft_ckpt):
    """~5 % of candidates get NaN/inf rewards for 200 steps: the policy stays finite, the masked candidates and
    (zero) skipped steps are logged, and the reward curve stays within noise of the same run with clean rewards."""
    curves, guards = {}, {}
    for share in (0.0, 0.05):
        L.seed_everything(0)
        g = _grpo(rl_dm, sft_ckpt, share=share)
        log = RewardLog()
        trainer = quiet_trainer(max_steps=200, log_every_n_steps=1, callbacks=[log])
        trainer.fit(g, datamodule=rl_dm)
        assert trainer.global_step == 200
        assert all(torch.isfinite(p).all() for p in g.policy.parameters())
        curves[share], guards[share] = torch.tensor(log.rewards), g.finite_guard
        assert float(trainer.callback_metrics[MASKED_REWARDS]) == g.finite_guard.masked_rewards
    assert guards[0.0].masked_rewards == 0 and guards[0.05].masked_rewards > 100
    assert guards[0.05].skipped_steps == 0
    clean, noisy = curves[0.0], curves[0.05]
    assert torch.isfinite(noisy).all()
    # Both runs learn the same way: the last 50 steps' mean reward gains over the first 50 agree within noise.
    spread = clean[-50:].std() / 50 ** 0.5 + noisy[-50:].std() / 50 ** 0.5
    gain_clean = clean[-50:].mean() - clean[:50].mean()
    gain_noisy = noisy[-50:].mean() - noisy[:50].mean()
    assert abs(gain_clean - gain_noisy) < 4 * spread + 0.05, (float(gain_clean), float(gain_noisy), float(spread))
