"""GRPOModule's ``train_dtype: bfloat16`` (rollout, reference pass, policy forward/backward under autocast; float32
master weights, logits, log-probs and losses) against float32 on one fixed batch, and the consecutive-skip limit
``max_skipped_steps`` of the training modules (a constructor argument, so settable from YAML)."""

from __future__ import annotations

import math
import re

import lightning as L
import pytest
import torch
from grpo_helpers import TINY, make_grpo, quiet_trainer

from adagrpo.errors import ConfigError
from adagrpo.lightning_modules.finite import NonFiniteTraining
from adagrpo.lightning_modules.grpo import GRPOModule
from adagrpo.lightning_modules.policy import LlamaPolicy
from adagrpo.lightning_modules.sft import SFTModule


def step(g: GRPOModule, batch, ro):
    """Loss, flat gradient, token log-probs and losses of one first pass of ``g`` on rollout ``ro``."""
    ref = g.reference_logprobs(batch, ro)
    g.policy.train()
    g.policy.zero_grad(set_to_none=True)
    out, logp = g.losses(batch, ro, None, ref)
    loss = (out.nll + out.grpo).mean()
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in g.policy.parameters() if p.grad is not None])
    return loss.detach(), grad, logp, ref, out


def test_bf16_loss_and_gradients_stay_close_to_float32(rl_dm, sft_ckpt, batch):
    g32 = make_grpo(rl_dm, sft_ckpt, num_generations=8, beta=0.04)
    g16 = make_grpo(rl_dm, sft_ckpt, num_generations=8, beta=0.04, train_dtype="bfloat16")
    ro = g32.rollout(batch)  # one rollout scored by both: the difference is the forward/backward precision alone
    loss32, grad32, logp32, _, _ = step(g32, batch, ro)
    loss16, grad16, logp16, _, out16 = step(g16, batch, ro)
    assert logp16.dtype == torch.float32 and out16.nll.dtype == torch.float32  # log-probs and losses in float32
    assert not torch.equal(grad16, grad32)  # the bfloat16 path really ran
    loss_err = float((loss16 - loss32).abs() / loss32.abs())
    grad_err = float((grad16 - grad32).norm() / grad32.norm())
    finite = torch.isfinite(logp32)
    logp_err = float((logp16 - logp32)[finite].abs().max())
    assert torch.equal(finite, torch.isfinite(logp16))  # the same support (the trie mask is exact in both)
    # Measured here (AVX2 CPU, emulated bfloat16): loss 1.2e-5, gradient 1.7e-3 relative, token log-prob 4e-4 at
    # most; on the trained policy_mini of the synthetic world (32 prompts x 16 beams) loss 2.3e-4, gradient 6.1e-3,
    # token log-prob 1.5e-2 at most. The bounds are about 10x the tiny model's, for other CPUs' kernels.
    assert loss_err < 2e-4, loss_err
    assert grad_err < 2e-2, grad_err
    assert logp_err < 5e-3, logp_err
    cos = float(torch.nn.functional.cosine_similarity(grad16, grad32, 0))
    assert cos > 0.9995, cos


def test_bf16_step_zero_ratio_one_and_kl_to_the_reference_zero(rl_dm, sft_ckpt, batch):
    # The old log-probs are the first training pass's (same precision as every later pass), and the reference
    # pass runs the same bfloat16 computation on the same prompt groups: at step 0 ratio 1 and KL 0 exactly.
    torch.manual_seed(0)
    g = make_grpo(rl_dm, sft_ckpt, rollout_mode="sample", beta=0.04, train_dtype="bfloat16")
    ro = g.rollout(batch)
    _, _, logp, ref, out = step(g, batch, ro)
    assert torch.equal(logp, ref)
    assert (out.ratio_mean == 1).all() and (out.kl == 0).all()


@pytest.mark.parametrize("mode", ["beam", "sample"])
def test_bf16_rollouts_are_valid_and_scored_like_the_decoder(rl_dm, sft_ckpt, batch, mode):
    torch.manual_seed(0)
    g = make_grpo(rl_dm, sft_ckpt, rollout_mode=mode, num_generations=6, train_dtype="bfloat16")
    ro = g.rollout(batch)
    assert ro.valid.all()  # constrained decoding under autocast still returns catalogue items only
    with g.training_precision(g.policy):
        cands = g.engine.generate(g.policy.eval(), batch.prompt_ids, batch.prompt_mask, batch.position_ids,
                                  g.rollout_config, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ro.tokens = cands.tokens
        _, logp = g.losses(batch, ro, None, None)
    # The decoder (KV cache, bfloat16) and the training forward (tree attention, bfloat16) see the same distribution
    # up to bfloat16 rounding; in float32 they agree to 1e-5 (test_grpo_module.py).
    torch.testing.assert_close(logp, cands.logprobs, atol=0.1, rtol=0)
    assert float((logp - cands.logprobs).abs().mean()) < 0.02


def test_train_dtype_is_checked(rl_dm, sft_ckpt):
    with pytest.raises(ConfigError, match="train_dtype"):
        GRPOModule(init_from=sft_ckpt, reward=None, train_dtype="float16")


# ------------------------------------------------------------------------------------------ max_skipped_steps
def test_max_skipped_steps_is_checked():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="max_skipped_steps"):
            SFTModule(max_skipped_steps=bad)


def test_grpo_stops_after_max_skipped_steps(rl_dm, sft_ckpt, monkeypatch):
    L.seed_everything(0)
    g = make_grpo(rl_dm, sft_ckpt, max_skipped_steps=2)
    assert g.finite_guard.max_consecutive == 2
    combine = g.balancer.combine
    monkeypatch.setattr(g.balancer, "combine", lambda *a: (combine(*a)[0] * math.nan, combine(*a)[1]))
    trainer = quiet_trainer(max_steps=10)
    with pytest.raises(NonFiniteTraining, match="2 consecutive training steps"):
        trainer.fit(g, datamodule=rl_dm)
    assert g.finite_guard.skipped_steps == 2 and trainer.global_step == 0


def test_sft_stops_after_max_skipped_steps(tiny_world_dm, monkeypatch):
    L.seed_everything(0)
    module = SFTModule(policy=LlamaPolicy(**TINY), max_skipped_steps=4)
    forward = module.sft_forward
    monkeypatch.setattr(module, "sft_forward", lambda b: (forward(b)[0] * math.nan, forward(b)[1]))
    with pytest.raises(NonFiniteTraining, match="4 consecutive training steps"):
        quiet_trainer(max_steps=10).fit(module, datamodule=tiny_world_dm)
    assert module.finite_guard.skipped_steps == 4


@pytest.mark.parametrize("cls", ["GRPOModule", "SFTModule"])
def test_model_help_lists_the_new_arguments(cls, capsys):
    from adagrpo.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model.help", f"adagrpo.lightning_modules.{cls}"])
    assert exit_info.value.code == 0
    out = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert "--model.max_skipped_steps MAX_SKIPPED_STEPS optimizer steps in a row skipped" in out
    assert "--model.train_dtype {float32,bfloat16,auto} ``float32``, or ``bfloat16``" in out


@pytest.mark.parametrize("native", [True, False])
def test_auto_train_dtype_is_bfloat16_only_where_native(native, monkeypatch):
    """``train_dtype: auto`` (the shipped SFT default) trains in bfloat16 on a CPU with native bfloat16 matmuls and in
    float32 on one without (where emulated bfloat16 is several times slower); an explicit choice is kept."""
    from adagrpo.lightning_modules import base
    from adagrpo.lightning_modules.sft import SFTModule

    monkeypatch.setattr(base, "bf16_native_cpu", lambda: native)
    cpu = torch.device("cpu")
    auto = SFTModule(train_dtype="auto")
    assert auto.resolved_train_dtype(cpu) == ("bfloat16" if native else "float32")
    with auto.train_autocast(cpu):
        assert torch.is_autocast_enabled("cpu") == native
    assert SFTModule(train_dtype="float32").resolved_train_dtype(cpu) == "float32"
    assert SFTModule(train_dtype="bfloat16").resolved_train_dtype(cpu) == "bfloat16"
