"""GRPOModule on a tiny synthetic world (DESIGN.md §4): step-0 identities (ratio 1, KL 0), the NLL of y*
against the SFT loss, constrained rollouts on the masked support, checkpoint compatibility, learning from
the oracle reward, μ > 1, inject_gt / filter_zero_std, and a Lightning fit that logs the §4 metrics.

The SFT checkpoint is made programmatically: a tiny LLaMA trained for two steps on the conftest world.
"""

from __future__ import annotations

import copy
import math

import lightning as L
import pytest
import torch
from grpo_helpers import make_grpo, quiet_trainer, train_sft_checkpoint, world_source

from adagrpo import datamodules
from adagrpo.callbacks.gates import Gate, PolicyDifficultyGate, RewardDiscriminabilityGate
from adagrpo.lightning_modules.balancers import FixedWeight, GatedBalance
from adagrpo.lightning_modules.base import IncompatibleCheckpoint
from adagrpo.lightning_modules.decoding import additive_mask, candidate_logits, prompt_attention, token_logprobs
from adagrpo.lightning_modules.grpo import GRPOModule
from adagrpo.lightning_modules.reward import OracleReward, RewardModel, RewardModelModule, TrainedReward
from adagrpo.lightning_modules.sft import sft_loss


# ============================================================================ (a) step 0: ratio 1, KL 0
@pytest.mark.parametrize("mode", ["beam", "sample"])
def test_step_zero_ratio_one_kl_zero(rl_dm, sft_ckpt, batch, mode):
    torch.manual_seed(0)
    g = make_grpo(rl_dm, sft_ckpt, rollout_mode=mode, beta=0.04)
    ro = g.rollout(batch)
    ref = g.reference_logprobs(batch, ro)
    assert ref is not None and ref.shape == ro.tokens.shape
    g.policy.train()
    out, logp = g.losses(batch, ro, None, ref)
    # The policy is the reference: identical token log-probs, so every ratio is 1 and every k3 term 0.
    assert torch.equal(logp, ref)
    assert (out.ratio_mean == 1).all(), out.ratio_mean
    assert (out.kl == 0).all(), out.kl
    assert (out.clip_frac == 0).all()
    # With ratio 1 and KL 0 the per-sample loss is -mean_j A_j = 0 (advantages are centred per group)...
    torch.testing.assert_close(out.grpo.detach(), torch.zeros(len(batch)), atol=1e-5, rtol=0)
    # ...but its gradient is not, and it reaches the policy only.
    out.grpo.sum().backward()
    grads = [p.grad for p in g.policy.parameters() if p.grad is not None]
    assert grads and any(gr.abs().sum() > 0 for gr in grads)
    assert all(p.grad is None for p in g.reference.parameters())
    assert not any(p.requires_grad for p in g.reference.parameters())


def test_beta_zero_skips_the_reference(rl_dm, sft_ckpt, batch):
    g = make_grpo(rl_dm, sft_ckpt, beta=0.0)
    ro = g.rollout(batch)
    assert g.reference_logprobs(batch, ro) is None
    out, _ = g.losses(batch, ro, None, None)
    assert (out.kl == 0).all()


# ============================================================================ (b) NLL of y* == SFT loss
def test_tree_attention_nll_equals_plain_sft_loss(rl_dm, sft_ckpt, batch):
    g = make_grpo(rl_dm, sft_ckpt)
    g.policy.eval()
    ro = g.rollout(batch)
    with torch.no_grad():
        out, _ = g.losses(batch, ro, None, None)
    # A plain causal forward over prompt + y*'s tokens, the SFT mask and loss, one sample at a time.
    b, p = batch.prompt_ids.shape
    depth = batch.target_tokens.shape[1]
    ids = torch.cat([batch.prompt_ids, batch.target_tokens], 1)  # [B, P + L]
    real = torch.cat([batch.prompt_mask.bool(), torch.ones(b, depth, dtype=torch.bool)], 1)
    n_real = batch.prompt_mask.sum(1, keepdim=True)
    positions = torch.cat([batch.position_ids, n_real + torch.arange(depth)[None]], 1)
    labels = torch.cat([torch.full((b, p), -100), batch.target_tokens], 1)
    with torch.no_grad():
        logits = g.policy(input_ids=ids, attention_mask=additive_mask(prompt_attention(real), torch.float32),
                          position_ids=positions, use_cache=False).logits
    per_sample = torch.stack([sft_loss(logits[i:i + 1], labels[i:i + 1]) for i in range(b)])
    torch.testing.assert_close(out.nll, per_sample, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.nll.mean(), sft_loss(logits, labels), atol=1e-5, rtol=1e-5)
    assert (out.nll > 0).all()


# ============================================================================ (c) constrained rollouts
@pytest.mark.parametrize("mode,extra", [("beam", {}), ("sample", {}), ("sample", {"temperature": 2.0, "top_k": 3})])
def test_constrained_rollouts_valid_and_on_support(rl_dm, sft_ckpt, batch, mode, extra):
    torch.manual_seed(1)
    g = make_grpo(rl_dm, sft_ckpt, rollout_mode=mode, num_generations=6, **extra)
    ro = g.rollout(batch)
    assert ro.valid.all() and (ro.items >= 0).all()  # invalid rate 0
    assert torch.equal(g.engine.items_of(ro.tokens), ro.items)
    if mode == "beam":  # beam candidates are distinct items
        assert all(len(set(row)) == len(row) for row in ro.items.tolist())
    g.policy.eval()
    with torch.no_grad():
        _, logp = g.losses(batch, ro, None, None)
    assert torch.isfinite(logp).all() and (logp <= 0).all()

    # Every step's support: a token's log-prob is renormalised over the codes the trie allows after its prefix,
    # under the distribution the rollout sampled from (logits / T when sampling at temperature T).
    temp = extra.get("temperature", 1.0) if mode == "sample" else 1.0
    with torch.no_grad():
        logits = candidate_logits(g.policy, batch.prompt_ids, batch.prompt_mask, batch.position_ids, ro.tokens) / temp
    full = token_logprobs(logits, ro.tokens)  # full vocabulary
    assert (logp >= full - 1e-6).all()  # renormalising over a subset only raises log-probs
    b, gsz, depth = ro.tokens.shape
    for level in range(depth):
        codes = g.engine.token_of[level]  # [C] token id of each code of this level
        c = len(codes)
        alt = ro.tokens[:, :, None, :].repeat(1, 1, c, 1)  # [B, G, C, L]: level `level` replaced by each code
        alt[:, :, :, level] = codes
        alt_lp = token_logprobs(logits[:, :, None].expand(b, gsz, c, depth, -1).reshape(b, gsz * c, depth, -1),
                                alt.reshape(b, gsz * c, depth), g.engine, constrained=True)
        step = alt_lp[..., level].reshape(b, gsz, c)  # [B, G, C] log-prob of every code after this prefix
        lse = torch.logsumexp(step, -1)
        torch.testing.assert_close(lse, torch.zeros_like(lse), atol=1e-5, rtol=0)
        # Allowed codes are exactly the finite ones, and the rollout's own token is one of them.
        prefix_state = g.engine.trie.root(b * gsz).reshape(b, gsz)
        for lv in range(level):
            prefix_state = g.engine.trie.step(prefix_state, g.engine.token_code(ro.tokens[..., lv], lv), lv)
        allowed = g.engine.trie.allowed(prefix_state, level)  # [B, G, C]
        assert torch.equal(torch.isfinite(step), allowed)
        own = g.engine.token_code(ro.tokens[..., level], level)
        torch.testing.assert_close(step.gather(-1, own[..., None])[..., 0], logp[..., level], atol=1e-5, rtol=0)


def test_training_logprobs_match_the_decoder(rl_dm, sft_ckpt, batch):
    # The rollout's own per-token log-probs (decoding engine, KV cache) equal the training-time tree forward's.
    g = make_grpo(rl_dm, sft_ckpt, rollout_mode="beam", num_generations=5)
    g.policy.eval()
    cands = g.engine.generate(g.policy, batch.prompt_ids, batch.prompt_mask, batch.position_ids, g.rollout_config)
    ro = g.rollout(batch)
    assert torch.equal(cands.tokens, ro.tokens)
    with torch.no_grad():
        _, logp = g.losses(batch, ro, None, None)
    torch.testing.assert_close(logp, cands.logprobs, atol=1e-5, rtol=1e-5)


# ============================================================================ (d) incompatible checkpoints
def test_missing_sft_checkpoint_fails_in_configure_model(rl_dm, tmp_path, monkeypatch):
    rollouts = []
    monkeypatch.setattr(GRPOModule, "rollout", lambda self, b: rollouts.append(b))
    missing = tmp_path / "nowhere" / "sft.ckpt"
    g = GRPOModule(init_from=str(missing), reward=OracleReward(), num_generations=4)
    with pytest.raises(IncompatibleCheckpoint, match="nowhere") as err:
        quiet_trainer(max_steps=1).fit(g, datamodule=rl_dm)
    assert str(missing) in str(err.value)
    assert rollouts == []
    assert g.policy is None


def test_sft_checkpoint_from_other_sids(rl_dm, tmp_path):
    other = datamodules.SeqRecDataModule(**world_source(1), batch_size=16)
    other.prepare()
    assert other.sids.fingerprint() != rl_dm.sids.fingerprint()
    ckpt = train_sft_checkpoint(other, tmp_path / "other_sft.ckpt")
    g = GRPOModule(init_from=ckpt, reward=OracleReward(), num_generations=4)
    g.attach(rl_dm)
    with pytest.raises(IncompatibleCheckpoint, match="fingerprint") as err:
        g.configure_model()
    assert ckpt in str(err.value)
    assert g.policy is None


def train_reward_checkpoint(source_seed: int, path) -> str:
    dm = datamodules.RewardDataModule(**world_source(source_seed), batch_size=64, eval_batch_size=64)
    L.seed_everything(0)
    module = RewardModelModule(dim=16, num_layers=1, num_heads=2)
    trainer = quiet_trainer(max_steps=1)
    trainer.fit(module, datamodule=dm)
    trainer.save_checkpoint(path)
    return str(path)


def test_reward_checkpoint_compatibility(rl_dm, sft_ckpt, batch, tmp_path):
    # From the same data: attaches and scores [B, N].
    good = TrainedReward(train_reward_checkpoint(0, tmp_path / "rm_same.ckpt"))
    g = make_grpo(rl_dm, sft_ckpt, reward=good)
    ro = g.rollout(batch)
    assert ro.rewards.shape == (len(batch), 4) and torch.isfinite(ro.rewards).all()
    # From other data (another world seed → other SIDs): fails in attach, naming the file.
    bad_path = train_reward_checkpoint(1, tmp_path / "rm_other.ckpt")
    with pytest.raises(IncompatibleCheckpoint, match="fingerprint") as err:
        TrainedReward(bad_path).attach(rl_dm)
    assert bad_path in str(err.value)
    # ...and so the GRPO module fails in configure_model, before any rollout.
    g2 = GRPOModule(init_from=sft_ckpt, reward=TrainedReward(bad_path), num_generations=4)
    g2.attach(rl_dm)
    with pytest.raises(IncompatibleCheckpoint, match="rm_other"):
        g2.configure_model()
    # An SFT checkpoint is not a reward checkpoint.
    with pytest.raises(IncompatibleCheckpoint, match="not a reward-model checkpoint"):
        TrainedReward(sft_ckpt).attach(rl_dm)
    with pytest.raises(IncompatibleCheckpoint, match="not found"):
        TrainedReward(str(tmp_path / "missing.ckpt")).attach(rl_dm)


# ============================================================================ (e) learning from the oracle
def test_oracle_reward_improves_with_pure_grpo(rl_dm, sft_ckpt):
    L.seed_everything(0)
    g = make_grpo(rl_dm, sft_ckpt, rollout_mode="sample", num_generations=8, beta=0.0,
                  balancer=FixedWeight(0.0, 1.0))
    opt = torch.optim.AdamW(g.policy.parameters(), lr=3e-3, weight_decay=0.0)

    def batches():
        while True:
            yield from rl_dm.train_dataloader()

    rewards = []
    for _, b in zip(range(40), batches()):
        ro = g.rollout(b)
        ref = g.reference_logprobs(b, ro)
        g.policy.train()
        out, _ = g.losses(b, ro, None, ref)
        loss, _ = g.balancer.combine(out.nll, out.grpo, torch.ones(len(b)), out.diagnostics)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(g.policy.parameters(), 1.0)
        opt.step()
        rewards.append(ro.rewards.mean().item())
    first, last = sum(rewards[:8]) / 8, sum(rewards[-8:]) / 8
    assert last > first + 0.1, (first, last, rewards)


# ============================================================================ (f) μ = 2
def test_mu_two_takes_two_steps_per_rollout(rl_dm, sft_ckpt, monkeypatch):
    L.seed_everything(0)
    g = make_grpo(rl_dm, sft_ckpt, mu=2, beta=0.01, balancer=FixedWeight(0.0, 1.0),
                  optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2))
    calls = []
    losses = g.losses

    def spy(batch, ro, old_logp, ref_logp):
        out, logp = losses(batch, ro, old_logp, ref_logp)
        calls.append((old_logp, logp, out))
        return out, logp

    monkeypatch.setattr(g, "losses", spy)
    rollouts = []
    rollout = g.rollout
    monkeypatch.setattr(g, "rollout", lambda b: rollouts.append(1) or rollout(b))
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=1)
    trainer.fit(g, datamodule=rl_dm)
    assert len(rollouts) == 1 and len(calls) == 2
    assert trainer.global_step == 2  # two optimizer steps for one rollout
    (old1, logp1, out1), (old2, logp2, out2) = calls
    assert old1 is None and torch.equal(old2, logp1)  # pass 2's "old" log-probs are pass 1's
    assert (out1.ratio_mean == 1).all()
    ratio2 = torch.exp(logp2 - old2)
    assert ((ratio2 - 1).abs() > 1e-6).any()  # the policy moved: ratio ≠ 1 somewhere in the second pass
    assert (out2.kl > 0).any()


# ============================================================================ (g) inject_gt, filter_zero_std
def test_inject_gt_puts_ground_truth_in_every_group(rl_dm, sft_ckpt, batch):
    g0 = make_grpo(rl_dm, sft_ckpt, num_generations=3)
    ro0 = g0.rollout(batch)
    missing = ~(ro0.items == batch.target[:, None]).any(1)
    assert missing.any(), "the tiny policy should miss y* in some groups"
    g = make_grpo(rl_dm, sft_ckpt, num_generations=3, inject_gt=True)
    ro = g.rollout(batch)
    assert (ro.items == batch.target[:, None]).any(1).all()
    # Groups that lacked y* have it in the last slot, with its tokens, valid, and its own reward r*.
    assert torch.equal(ro.items[missing, -1], batch.target[missing])
    assert torch.equal(ro.tokens[missing, -1], batch.target_tokens[missing])
    assert ro.valid[missing, -1].all()
    torch.testing.assert_close(ro.rewards[missing, -1], ro.gt_reward[missing])
    # Groups that had it are untouched.
    assert torch.equal(ro.items[~missing], ro0.items[~missing])
    out, _ = g.losses(batch, ro, None, None)
    assert out.diagnostics.gt_in_group.all()


class HalfConstantReward(RewardModel):
    """Rows with an even user index get the same reward for every item (zero-variance groups)."""

    def score(self, histories, items, users=None):
        varying = items.float() / 100
        even = (users % 2 == 0)[:, None]
        return torch.where(even, torch.full_like(varying, 0.3), varying).masked_fill(items < 0, 0.0)


class RecordingBalance(GatedBalance):
    def __init__(self):
        super().__init__()
        self.admissions = []

    def combine(self, nll, grpo, admission, diagnostics):
        self.admissions.append(admission.detach().clone())
        return super().combine(nll, grpo, admission, diagnostics)


@pytest.mark.parametrize("filter_zero_std", [False, True])
def test_filter_zero_std(rl_dm, sft_ckpt, batch, filter_zero_std):
    # Repeats off: a penalised repeat would give a constant-reward group some variance.
    g = make_grpo(rl_dm, sft_ckpt, reward=HalfConstantReward(), balancer=RecordingBalance(),
                  filter_zero_std=filter_zero_std, repeat_penalty=0.0)
    ro = g.rollout(batch)
    even = batch.user % 2 == 0
    assert even.any() and (~even).any()
    assert torch.equal(ro.zero_std, even)
    assert (ro.advantages[even] == 0).all()
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=1)
    trainer.fit(g, datamodule=rl_dm)
    (admission,) = g.balancer.admissions
    users = next(iter(rl_dm.train_dataloader())).user  # the batch the trainer saw (same seeded order)
    expected = (users % 2 != 0).float() if filter_zero_std else torch.ones(len(users))
    assert torch.equal(admission, expected)
    torch.testing.assert_close(trainer.callback_metrics["gate/open_rate"], expected.mean())
    torch.testing.assert_close(trainer.callback_metrics["adv/zero_std_frac"], (users % 2 == 0).float().mean())


# ============================================================================ (h) Lightning fit: metrics, params
DESIGN_METRICS = [
    "loss/total", "loss/nll", "loss/grpo", "reward/mean", "reward/std", "reward/gt", "adv/zero_std_frac", "kl",
    "clip_frac", "entropy", "gate/open_rate", "rollout/invalid_rate", "rollout/gt_in_group_rate",
    "rollout/unique_rate", "perf/rollout_s", "perf/step_s", "perf/samples_per_s",
]


class AdmitAll(Gate):
    def admit(self, diagnostics):
        return torch.ones(len(diagnostics))


def test_fit_logs_design_metrics_and_trains_policy_only(rl_dm, sft_ckpt):
    L.seed_everything(0)
    g = make_grpo(rl_dm, sft_ckpt, gates=[PolicyDifficultyGate(), RewardDiscriminabilityGate(threshold=0.5)],
                  optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3))
    policy0 = copy.deepcopy(g.policy.state_dict())
    reference0 = copy.deepcopy(g.reference.state_dict())
    extra_gate = AdmitAll(name="cb_gate")
    trainer = quiet_trainer(max_steps=3, log_every_n_steps=1, callbacks=[extra_gate])
    trainer.fit(g, datamodule=rl_dm)
    assert trainer.global_step == 3
    metrics = trainer.callback_metrics
    names = DESIGN_METRICS + ["gate/difficulty/open_rate", "gate/discriminability/open_rate",
                              "gate/cb_gate/open_rate"]
    missing = [n for n in names if n not in metrics]
    assert not missing, f"not logged: {missing}; logged: {sorted(metrics)}"
    for n in names:
        assert math.isfinite(float(metrics[n])), (n, metrics[n])
    assert float(metrics["rollout/invalid_rate"]) == 0.0
    assert float(metrics["gate/cb_gate/open_rate"]) == 1.0
    assert 0.0 <= float(metrics["gate/open_rate"]) <= 1.0
    assert [gate.name for gate in g.gates()] == ["difficulty", "discriminability", "cb_gate"]
    # The policy moved; the frozen reference did not.
    changed = [k for k, v in g.policy.state_dict().items() if not torch.equal(v, policy0[k])]
    assert changed, "no policy parameter changed"
    assert all(torch.equal(v, reference0[k]) for k, v in g.reference.state_dict().items())
    assert not any(p.requires_grad for p in g.reference.parameters())


def test_repeats_are_a_separate_component_scaled_by_the_group_spread(rl_dm, sft_ckpt, batch):
    # A candidate already in the user's history keeps its reward-model score and loses repeat_penalty x the std of
    # its group's valid non-repeat rewards; the component is logged separately and 0 switches it off.
    g = make_grpo(rl_dm, sft_ckpt, reward=OracleReward(), repeat_penalty=2.0, num_generations=8)
    first = g.rollout(batch).items[:, 0]
    batch = copy.copy(batch)
    batch.history = batch.history.clone()
    batch.history[:, 0] = first  # the same prompt decodes the same beams: candidate 0 is now a repeat
    batch.seen = None  # the (edited) history stands for everything the user had
    ro = g.rollout(batch)
    assert ro.repeat[:, 0].all()
    expected = (ro.items[:, :, None] == batch.history[:, None, :]).any(-1) & (ro.items >= 0)
    assert torch.equal(ro.repeat, expected)
    ok = ro.valid & ~ro.repeat
    for b in range(len(batch)):
        spread = ro.raw[b][ok[b]].std()  # unbiased, as group_spread
        torch.testing.assert_close(ro.repeat_component[b], -2.0 * spread * ro.repeat[b].float())
        torch.testing.assert_close(ro.rewards[b][ro.valid[b]], (ro.raw[b] + ro.repeat_component[b])[ro.valid[b]])
    off = make_grpo(rl_dm, sft_ckpt, reward=OracleReward(), num_generations=8, repeat_penalty=0.0).rollout(batch)
    assert off.repeat[:, 0].all() and (off.repeat_component == 0).all()
    torch.testing.assert_close(off.rewards[off.valid], off.raw[off.valid])


def test_group_spread_hand_computed():
    from adagrpo.lightning_modules.grpo import group_spread

    rewards = torch.tensor([[1.0, 3.0, 100.0], [2.0, 0.0, 0.0], [5.0, 5.0, 1.0]])
    mask = torch.tensor([[True, True, False], [True, False, False], [True, True, False]])
    # row 0: std(1, 3) = sqrt(2); row 1 has one reward, row 2 zero spread: both get the mean of the usable rows
    expected = torch.tensor([[2**0.5], [2**0.5], [2**0.5]])
    torch.testing.assert_close(group_spread(rewards, mask), expected)


def test_exclude_seen_rollouts_never_propose_a_history_item(rl_dm, sft_ckpt, batch):
    g = make_grpo(rl_dm, sft_ckpt, reward=OracleReward(), num_generations=8)
    first = g.rollout(batch).items[:, :2]
    batch = copy.copy(batch)
    batch.history = batch.history.clone()
    batch.history[:, :2] = first  # the unfiltered rollout's top two are now in every history
    assert g.rollout(batch).repeat.any()
    f = make_grpo(rl_dm, sft_ckpt, reward=OracleReward(), num_generations=8, exclude_seen=True)
    ro = f.rollout(batch)
    assert not ro.repeat.any() and ro.valid.all()
    # ratio and KL use the rollout's support: at step 0 the ratio is exactly 1 and the KL 0
    ref = f.reference_logprobs(batch, ro)
    out, _ = f.losses(batch, ro, None, ref)
    torch.testing.assert_close(out.ratio_mean, torch.ones_like(out.ratio_mean))
    torch.testing.assert_close(out.kl, torch.zeros_like(out.kl), atol=1e-6, rtol=0)
