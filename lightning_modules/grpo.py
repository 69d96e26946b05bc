"""GRPO and AdaGRPO in one LightningModule: a trainable policy, a frozen reference, a frozen reward model.

Each training step (DESIGN.md §4):

1. **rollout** — G candidates per prompt with the shared decoding engine (beam or sampling,
   trie-constrained or not), the prompt prefilled once;
2. **reward** — the reward model scores the candidates and the ground truth in one call; invalid candidates
   get a penalty; an optional exact-hit bonus and the repeat penalty are separate, logged components;
3. **advantages** — group z-scores (zero-variance groups get 0);
4. **forward** (:meth:`GRPOModule.policy_logprobs`) — one tree-attention forward computes the candidates' and
   the ground truth's token log-probs (the prompt encoded once, with gradients, shared by the group);
5. **loss** (:meth:`GRPOModule.loss_terms`) — the PPO-clipped surrogate with a k3 KL to the reference, and the
   NLL of the ground truth, per sample;
6. **diagnostics → gates → balancer** (:meth:`GRPOModule.rollout_diagnostics`, computed from the first pass's
   forward without gradients) — gates (:mod:`~adagrpo.lightning_modules.gating`) admit GRPO per sample; the
   balancer combines NLL, GRPO and admissions into the loss.

:meth:`GRPOModule.losses` chains 4–6 for one optimisation pass. μ passes reuse one rollout: the first pass's
log-probs are the "old" ones (the rollout policy's; dropout is off in the shipped policies), and the diagnostics
and gate admissions are decided once, on that first pass.

**Cost.** The rollout, the reference pass and the policy pass split the batch by prompt length
(:func:`~adagrpo.lightning_modules.decoding.prompt_groups`: no model call encodes columns that are padding in all
its rows; the reference and policy passes use the same groups). ``train_dtype: bfloat16`` runs all three under
autocast (:meth:`~adagrpo.lightning_modules.base.PolicyModule.training_precision`) with float32 attention and
logits; the ratio's old log-probs come from the first training pass, never from the decoder, so both sides of
the ratio have the same precision (at step 0 the ratio is exactly 1 and the KL to an identical reference exactly
0 in bfloat16 too). Measured on the synthetic world's trained policy_mini (32 prompts x 16 beams): bfloat16 token
log-probs differ from float32 ones by 8e-4 on average, 1.5e-2 at most — what a ratio mixing a float32 side with a
bfloat16 side would be off by per token — while the bfloat16 decoder and the bfloat16 training forward agree to
1e-6 (as the float32 ones do), so the rollouts sample the distribution the ratio's old side describes; the loss
moved by 2e-4 and the gradient by 6e-3 (relative) against float32, beam candidates 99.6 % the same.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from adagrpo.datamodules.sequence import PromptBatch
from adagrpo.errors import ConfigError
from adagrpo.lightning_modules.balancers import Balancer, GatedBalance
from adagrpo.lightning_modules.base import CKPT_KEY, IncompatibleCheckpoint, PolicyModule, check_signature
from adagrpo.lightning_modules.checkpoint_io import load_checkpoint
from adagrpo.lightning_modules.decoding import (
    DecodingConfig,
    PromptGroups,
    candidate_logits,
    prompt_groups,
    token_logprobs,
)
from adagrpo.lightning_modules.diagnostics import Diagnostics, compute_diagnostics, concordance, first_occurrence
from adagrpo.lightning_modules.finite import guarded_manual_step, mask_nonfinite_rewards, nan_if_nonfinite
from adagrpo.lightning_modules.gating import Gate, combine_gates
from adagrpo.lightning_modules.grpo_loss import aggregate, clipped_surrogate, group_advantages, penalise_invalid
from adagrpo.lightning_modules.policy import PolicySpec, spec_from_description
from adagrpo.lightning_modules.reward import RewardModel
from adagrpo.lightning_modules.schedules import WarmupCosine
from adagrpo.lightning_modules.sharding import gathered, is_sharded, shard_model

log = logging.getLogger(__name__)


@dataclass
class Rollout:
    """One rollout batch. ``tokens [B, G, L]``, ``items/valid/repeat/rewards/advantages [B, G]`` (``repeat``:
    the item is already in the user's history),
    ``gt_reward/zero_std [B]``; ``hit_bonus [B, G]`` is the rule component included in ``rewards``."""

    tokens: torch.Tensor
    items: torch.Tensor
    valid: torch.Tensor
    repeat: torch.Tensor
    rewards: torch.Tensor
    hit_bonus: torch.Tensor
    gt_reward: torch.Tensor
    advantages: torch.Tensor
    zero_std: torch.Tensor
    seconds: float
    raw: torch.Tensor | None = None  # [B, G] the reward model's scores alone
    repeat_component: torch.Tensor | None = None  # [B, G] the (non-positive) repeat term included in ``rewards``
    truth: torch.Tensor | None = None  # [B, G] true utility of each candidate (synthetic world only)


@dataclass
class PolicyPass:
    """One forward of the policy over a rollout group plus the ground truth (:meth:`GRPOModule.policy_logprobs`).

    ``logits [B, G+1, L, V]`` (the last slot is y*); ``logp [B, G, L]`` the candidates' token log-probs on the
    rollout's support at the rollout's temperature (with gradients); ``gt_support [B, 1, L]`` y*'s on that support
    at temperature 1; ``gt_full [B, 1, L]`` y*'s over the full vocabulary."""

    logits: torch.Tensor
    logp: torch.Tensor
    gt_support: torch.Tensor
    gt_full: torch.Tensor


@dataclass
class StepLosses:
    """Per-sample losses ``[B]`` of one pass (:meth:`GRPOModule.loss_terms`). ``diagnostics``: the rollout
    policy's diagnostics, which :meth:`GRPOModule.losses` adds on the first pass (None on later passes)."""

    nll: torch.Tensor
    grpo: torch.Tensor
    kl: torch.Tensor
    clip_frac: torch.Tensor
    ratio_mean: torch.Tensor
    diagnostics: Diagnostics | None = None


class GRPOModule(PolicyModule):
    """GRPO / AdaGRPO post-training of an SFT policy against a reward model.

    Args:
        init_from: the SFT checkpoint the policy starts from (and the reference copies). Its SID map must
            match the data's; its policy architecture is used unless ``policy`` is given.
        reward: the reward model (``class_path`` of a :class:`~adagrpo.lightning_modules.reward.RewardModel`).
        balancer: how NLL, GRPO and gate admissions combine (default :class:`GatedBalance`).
        gates: gates (``class_path`` of :class:`~adagrpo.lightning_modules.gating.Gate` subclasses), the one place to
            register them; their admissions are multiplied (AND) and their state is saved in this module's
            checkpoint. A gate listed under ``trainer.callbacks`` is moved here when the fit starts (with a warning).
        num_generations: G, candidates per prompt.
        rollout_mode: ``beam`` (distinct candidates) or ``sample``.
        constrained: trie-constrained rollouts (log-probs for ratio and KL then use the masked support).
        temperature: sampling temperature of the rollouts (``sample`` mode).
        top_k: sample among the k most likely tokens only (``sample`` mode; None = all).
        beta: KL weight.
        epsilon_low: lower PPO clip: the ratio is clipped below at ``1 - ε_low``.
        epsilon_high: upper PPO clip: the ratio is clipped above at ``1 + ε_high``.
        mu: optimisation passes per rollout batch (``trainer.max_steps`` counts optimizer steps, so it is
            ``max_steps / mu`` rollout batches).
        scale_rewards: advantage scaling: ``group`` std, ``batch`` std, ``spread`` (group std floored at the
            batch's median group std, so a group whose rewards barely differ — mostly noise — is not blown up to
            unit variance) or ``none``.
        aggregation: ``sequence`` or ``token`` averaging of the per-token loss.
        invalid_penalty: reward of invalid candidates (None = group minimum valid reward − ``invalid_margin``).
        invalid_margin: see above.
        hit_bonus: added to the reward of a candidate equal to the ground truth (rule component).
        inject_gt: put the ground truth into any group that lacks it (replacing the last candidate).
        filter_zero_std: exclude groups whose rewards are all equal from the GRPO term.
        repeat_penalty: candidates already in the user's history lose ``repeat_penalty`` × the group's reward
            spread (std of its valid, non-repeat rewards; the batch's mean spread when a group has none) — a
            separate, logged reward component (``reward/repeat``) on the reward's own scale; 0 switches it off
            (repeats are then scored by the reward model like any item).
        exclude_seen: rollouts never propose an item of the user's history (seen-item filter in decoding).
        grad_clip: gradient-norm clipping (manual optimisation; do not set the trainer's gradient_clip_val).
        reference_sharding: under FSDP2, keep a full reference copy on every device (``replicate``) or shard
            it like the policy (``shard``: less memory, one all-gather per layer per reference forward).
        reference: build the frozen reference from this spec instead of copying the SFT policy — e.g. a
            :class:`~adagrpo.lightning_modules.policy.PretrainedPolicy` of ``adagrpo export``'s folder loaded in 8-bit
            or 4-bit (bitsandbytes, GPU). Its SID tokens must have the policy's token ids.
        policy: the policy architecture (default: the one recorded in ``init_from``).
        optimizer: e.g. ``torch.optim.AdamW`` with its ``init_args`` (default AdamW, lr 1e-3, wd 0.01).
        scheduler: e.g. :class:`~adagrpo.lightning_modules.schedules.WarmupCosine`, stepped every optimizer step.
        beam_width: candidates decoded per user in evaluation.
        ks: HR/NDCG cut-offs.
        val_unconstrained: also evaluate unconstrained decoding (hallucination rate) in validation.
        test_unconstrained: also evaluate unconstrained decoding (hallucination rate) in test.
        test_prefix: metric prefix of ``test`` (``adagrpo test --checkpoint last`` sets ``test_last``).
        val_filter_seen: also rank with the history excluded in validation (``val/filtered/...``).
        test_filter_seen: also rank with the history excluded in test (``test/filtered/...``).
        train_dtype: ``float32``, or ``bfloat16`` to run the rollouts (decoding), the reference pass and the policy's
            forward and backward under autocast: bfloat16 matmuls; float32 master weights, optimizer state,
            attention, output layer (logits) and every log-prob, ratio, KL and loss; evaluation is float32. The
            old log-probs of the ratio are the first training pass's (same precision as later passes), never
            the rollout's, so the ratio is not biased by the precision. Pays on CPUs with native bfloat16 matmuls
            (AVX512-BF16 / AMX) and on GPUs; elsewhere it is slower (a warning says so). ``auto``: bfloat16 where
            it is native on the training device, float32 elsewhere.
        max_skipped_steps: optimizer steps in a row skipped for a NaN/inf loss or gradient norm after which the fit
            stops with ``NonFiniteTraining`` (skips are counted and logged as ``nonfinite/skipped_steps``).
    """

    #: GRPO trains on prompt batches (``configs/data/*_rl.yaml``)
    required_train_mode = "prompts"

    def __init__(
        self,
        init_from: str,
        reward: RewardModel,
        balancer: Balancer | None = None,
        gates: list[Gate] | None = None,
        num_generations: int = 16,
        rollout_mode: Literal["beam", "sample"] = "beam",
        constrained: bool = True,
        temperature: float = 1.0,
        top_k: int | None = None,
        beta: float = 1e-3,
        epsilon_low: float = 0.2,
        epsilon_high: float = 0.2,
        mu: int = 1,
        scale_rewards: Literal["group", "batch", "spread", "none"] = "group",
        aggregation: Literal["sequence", "token"] = "sequence",
        invalid_penalty: float | None = None,
        invalid_margin: float = 1.0,
        hit_bonus: float = 0.0,
        inject_gt: bool = False,
        filter_zero_std: bool = False,
        repeat_penalty: float = 1.0,
        exclude_seen: bool = False,
        grad_clip: float | None = 1.0,
        reference_sharding: Literal["replicate", "shard"] = "replicate",
        reference: PolicySpec | None = None,
        policy: PolicySpec | None = None,
        optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedulerCallable | None = None,
        beam_width: int = 20,
        ks: tuple[int, ...] = (1, 5, 10, 20),
        val_unconstrained: bool = True,
        test_unconstrained: bool = True,
        test_prefix: str = "test",
        val_filter_seen: bool = True,
        test_filter_seen: bool = True,
        train_dtype: Literal["float32", "bfloat16", "auto"] = "float32",
        max_skipped_steps: int = 10,
    ) -> None:
        super().__init__(policy=policy, optimizer=optimizer, scheduler=scheduler, beam_width=beam_width, ks=ks,
                         val_unconstrained=val_unconstrained, test_unconstrained=test_unconstrained,
                         test_prefix=test_prefix, val_filter_seen=val_filter_seen, test_filter_seen=test_filter_seen,
                         train_dtype=train_dtype, max_skipped_steps=max_skipped_steps)
        self._explicit_policy = policy is not None
        checks = {
            "num_generations": num_generations >= 2,
            "mu": mu >= 1,
            "beta": beta >= 0,
            "epsilon_low": 0 <= epsilon_low < 1,
            "epsilon_high": epsilon_high >= 0,
            "temperature": temperature > 0,
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"model.{key}", f"invalid value {locals()[key]!r}")
        if scale_rewards not in ("group", "batch", "spread", "none"):
            raise ConfigError("model.scale_rewards", f"must be group, batch, spread or none, got {scale_rewards!r}")
        if rollout_mode not in ("beam", "sample"):
            raise ConfigError("model.rollout_mode", f"must be beam or sample, got {rollout_mode!r}")
        self.init_from = str(init_from)
        object.__setattr__(self, "reward_model", reward)  # frozen, not a submodule: not in our checkpoints
        self.balancer = balancer or GatedBalance()
        gates = list(gates or [])
        for gate in gates:
            if not isinstance(gate, Gate):
                raise ConfigError("model.gates", f"{type(gate).__name__} is not a Gate "
                                                 "(adagrpo.lightning_modules.gating.Gate)")
        names = [g.name for g in gates]
        for i, gate in enumerate(gates):  # two gates of one kind keep separate state and open rates
            if names.count(gate.name) > 1:
                gate.name = f"{gate.name}{names[:i].count(gate.name) + 1}"
        self.module_gates: list[Gate] = []
        self.adopt_gates(gates)
        self.num_generations = num_generations
        self.rollout_config = DecodingConfig(rollout_mode, num_generations, constrained, temperature, top_k)
        self.beta = beta
        self.epsilon_low = epsilon_low
        self.epsilon_high = epsilon_high
        self.mu = mu
        self.scale_rewards = scale_rewards
        self.aggregation = aggregation
        self.invalid_penalty = invalid_penalty
        self.invalid_margin = invalid_margin
        self.hit_bonus = hit_bonus
        self.inject_gt = inject_gt
        self.filter_zero_std = filter_zero_std
        if repeat_penalty < 0:
            raise ConfigError("model.repeat_penalty", f"must be >= 0, got {repeat_penalty}")
        self.repeat_penalty = float(repeat_penalty)
        self.exclude_seen = exclude_seen
        self.grad_clip = grad_clip
        if reference_sharding not in ("replicate", "shard"):
            raise ConfigError("model.reference_sharding", f"must be replicate or shard, got {reference_sharding!r}")
        self.reference_sharding = reference_sharding
        self.reference_spec = reference
        self.automatic_optimization = False
        self.reference: nn.Module | None = None
        self._logged_kl0 = False
        # Sampled rollouts draw from their own generator (seeded from torch.initial_seed(), i.e. the run's seed),
        # saved in every checkpoint: a resumed fit samples what the uninterrupted one would have, whatever else
        # (DataLoader iterators, validation) drew from the global RNG in between.
        self._rollout_generator: torch.Generator | None = None
        self._rollout_rng_state: torch.Tensor | None = None  # restored from a checkpoint, applied on first use

    # ------------------------------------------------------------------------------- model building
    def configure_model(self) -> None:
        if self.policy is not None:
            return
        if self._evaluating_checkpoint():
            # test/validate/predict of a GRPO checkpoint: its own record describes the policy and Lightning restores
            # the weights; the SFT start, the reference and the reward model are not needed.
            path, self._init_ckpt = Path(self.trainer.ckpt_path), None
            info = load_checkpoint(path, what="checkpoint (--ckpt_path)").get(CKPT_KEY)
        else:
            path = Path(self.init_from)
            if not path.exists():
                raise IncompatibleCheckpoint(f"SFT checkpoint not found: {path} (model.init_from)")
            self._init_ckpt = load_checkpoint(path, what="SFT checkpoint (model.init_from)")
            info = self._init_ckpt.get(CKPT_KEY)
        check_signature(info, self.sid_signature(), str(path))
        if not self._explicit_policy and info.get("policy"):
            self.policy_spec = spec_from_description(info["policy"])
        super().configure_model()  # builds the policy, then on_policy_built, then shards under FSDP2
        if self._init_ckpt is not None:
            self._init_ckpt = None
            self.reward_model.attach(self.data)  # fails here, before any rollout, if it does not fit the data

    def _evaluating_checkpoint(self) -> bool:
        if self._trainer is None or not self.trainer.ckpt_path:
            return False
        return self.trainer.state.fn in ("test", "validate", "predict")

    def on_policy_built(self) -> None:
        if self._init_ckpt is None:  # evaluating a GRPO checkpoint: weights come from it
            return
        path, ckpt = self.init_from, self._init_ckpt
        state = {k.removeprefix("policy."): v for k, v in ckpt["state_dict"].items() if k.startswith("policy.")}
        try:
            self.policy.load_state_dict(state)
        except RuntimeError as err:
            raise IncompatibleCheckpoint(
                f"{path}: its policy weights do not fit the configured policy {self.policy_spec.describe()} "
                f"(checkpoint policy: {ckpt[CKPT_KEY].get('policy')}): {str(err).splitlines()[0]}") from None
        if self.reference_spec is None:
            reference = copy.deepcopy(self.policy)
        else:
            reference, ref_vocab = self.reference_spec.build(self.data.vocab)
            same = ref_vocab.vocab_size == self.data.vocab.vocab_size and all(
                torch.equal(a, b) for a, b in zip(ref_vocab.token_of, self.data.vocab.token_of))
            if not same:
                raise IncompatibleCheckpoint(
                    f"model.reference {self.reference_spec.describe()} places the SID tokens at other token ids "
                    "than the policy; export the SFT policy with `adagrpo export` and load that folder")
        reference.eval().requires_grad_(False)
        object.__setattr__(self, "reference", reference)  # frozen, not a submodule: not in our checkpoints

    def on_policy_sharded(self, mesh) -> None:  # noqa: ANN001
        if self.reference is not None and self.reference_sharding == "shard":
            shard_model(self.reference, mesh)

    def run_label(self) -> str:
        gates = "+".join(g.name for g in self.gates()) or "none"
        return f"{self.balancer.describe()} gates={gates}"

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if getattr(self.reference, "hf_quantizer", None) is None:  # bitsandbytes models are placed at load
            self.reference.to(self.device)
        self.reward_model.to(self.device)
        gates = self.gates()
        if gates and not self.balancer.uses_gates:
            log.warning("gates %s are attached but balancer %s ignores them",
                        [g.name for g in gates], self.balancer.describe())

    def adopt_gates(self, gates: list[Gate]) -> None:
        """Append ``gates`` to the module's gates; a gate whose name is taken is renamed (``difficulty`` →
        ``difficulty2``) so that it keeps a separate state and open rate."""
        for gate in gates:
            if any(gate is g for g in self.module_gates):
                continue
            names = [g.name for g in self.module_gates]
            if gate.name in names:
                base, n = gate.name, 2
                while f"{base}{n}" in names:
                    n += 1
                gate.name = f"{base}{n}"
            self.module_gates.append(gate)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self._adopt_trainer_gates()

    def _adopt_trainer_gates(self) -> None:
        """Gates listed under ``trainer.callbacks`` become the module's gates and leave the callback list, so their
        state is saved once, in this module's checkpoint (``model.init_args.gates`` is the documented place)."""
        listed = [cb for cb in self.trainer.callbacks if isinstance(cb, Gate)]
        if not listed:
            return
        self.trainer.callbacks[:] = [cb for cb in self.trainer.callbacks if not isinstance(cb, Gate)]
        log.warning("gates %s are listed under trainer.callbacks; the GRPO module uses them as its own gates (state "
                    "saved with the module) — list them under model.init_args.gates instead",
                    [g.name for g in listed])
        self.adopt_gates(listed)

    def gates(self) -> list[Gate]:
        """The module's gates (followed by any gate still listed under ``trainer.callbacks`` before ``setup``)."""
        attached = [cb for cb in self.trainer.callbacks if isinstance(cb, Gate)] if self._trainer is not None else []
        return self.module_gates + [g for g in attached if all(g is not m for m in self.module_gates)]

    # ------------------------------------------------------------------------------- rollout
    @torch.no_grad()
    def rollout(self, batch: PromptBatch) -> Rollout:
        start = time.perf_counter()
        self.policy.eval()
        # under FSDP2: one all-gather for the whole rollout, not one per token
        with gathered(self.policy), self.training_precision(self.policy):
            cands = self.engine.generate(self.policy, batch.prompt_ids, batch.prompt_mask, batch.position_ids,
                                         self.rollout_config, generator=self.rollout_generator(batch.prompt_ids.device),
                                         exclude=self.excluded(batch))
        tokens, items, valid = cands.tokens, cands.items, cands.valid  # [B, G, L], [B, G], [B, G]
        if self.inject_gt:
            missing = ~(items == batch.target[:, None]).any(1)  # [B]
            tokens[missing, -1] = batch.target_tokens[missing]
            items[missing, -1] = batch.target[missing]
            valid[missing, -1] = True
        g = items.shape[1]
        # One reward call for the group and the ground truth: [B, G+1], y* in the last slot.
        scores = self.reward_model.score(batch.history, torch.cat([items, batch.target[:, None]], 1),
                                         batch.user).float()
        raw, gt_reward = scores[:, :g], nan_if_nonfinite(scores[:, g])  # [B, G], [B]
        raw, valid, masked = mask_nonfinite_rewards(raw, valid)  # a NaN/inf reward: the candidate counts as invalid
        self.finite_guard.count_masked(masked)
        hit = self.hit_bonus * (items == batch.target[:, None]).float()  # [B, G]
        # Items the user already has: nobody re-consumes in the logs, so a repeat is a wasted slot. It is its own
        # reward component, sized by the group's reward spread so that it means the same at any reward scale.
        repeat = (items[:, :, None] == batch.seen_items[:, None, :]).any(-1) & (items >= 0)  # [B, G]
        repeat_term = -self.repeat_penalty * repeat.float() * group_spread(raw, valid & ~repeat)  # [B, G]
        rewards = penalise_invalid(raw + hit + repeat_term, valid, self.invalid_penalty, self.invalid_margin)
        advantages, zero_std = self.advantages(rewards)
        truth = self.true_utility(batch, items)
        return Rollout(tokens, items, valid, repeat, rewards, hit, gt_reward, advantages, zero_std,
                       time.perf_counter() - start, raw, repeat_term, truth)

    def rollout_generator(self, device: torch.device) -> torch.Generator | None:
        """The generator sampled rollouts draw from (None for beams), on ``device``; a checkpoint's state is
        applied when it was saved on the same kind of device (else the generator is seeded afresh)."""
        if self.rollout_config.mode != "sample":
            return None
        gen = self._rollout_generator
        if gen is None or gen.device.type != torch.device(device).type:
            gen = torch.Generator(device=device)
            gen.manual_seed(torch.initial_seed())
            if self._rollout_rng_state is not None:
                try:
                    gen.set_state(self._rollout_rng_state)
                except RuntimeError:  # saved on another kind of device: its state does not fit this generator
                    pass
                self._rollout_rng_state = None
            self._rollout_generator = gen
        return gen

    def advantages(self, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Group advantages ``[B, G]`` and the zero-variance mask ``[B]`` under ``scale_rewards``."""
        if self.scale_rewards != "spread":
            return group_advantages(rewards, self.scale_rewards)
        centred, zero_std = group_advantages(rewards, "none")  # [B, G], [B]
        std = rewards.std(1, keepdim=True)  # [B, 1]
        floor = std[~zero_std].median() if (~zero_std).any() else std.new_ones(())
        adv = centred / torch.maximum(std, floor).clamp_min(1e-4)
        return torch.where(zero_std[:, None], torch.zeros_like(adv), adv), zero_std

    @torch.no_grad()
    def true_utility(self, batch: PromptBatch, items: torch.Tensor) -> torch.Tensor | None:
        """The world's true utility ``[B, G]`` of the candidates, when the data has a ground truth; else None."""
        world = getattr(getattr(self.data, "source", None), "world", None) if self.data is not None else None
        if world is None:
            return None
        util = world.utility(batch.user.cpu(), batch.history[:, -1].cpu(), items.cpu())  # [B, G], -inf invalid
        return util.to(items.device)

    # ------------------------------------------------------------------------------- losses
    def losses(self, batch: PromptBatch, ro: Rollout, old_logp: torch.Tensor | None,
               ref_logp: torch.Tensor | None) -> tuple[StepLosses, torch.Tensor]:
        """One optimisation pass: the forward (:meth:`policy_logprobs`), the per-sample losses (:meth:`loss_terms`)
        and, on the first pass (``old_logp`` None), the rollout policy's diagnostics (:meth:`rollout_diagnostics`)
        from that same forward. Returns the losses and the candidates' token log-probs (detached, to serve as
        the old log-probs of later passes)."""
        fwd = self.policy_logprobs(batch, ro)
        out = self.loss_terms(fwd, ro, old_logp, ref_logp)
        if old_logp is None:
            out.diagnostics = self.rollout_diagnostics(batch, ro, fwd)
        return out, fwd.logp.detach()

    def rollout_temperature(self) -> float:
        """The temperature the rollout sampled at (1 for beams): ratio and KL use that distribution."""
        return self.rollout_config.temperature if self.rollout_config.mode == "sample" else 1.0

    def policy_logprobs(self, batch: PromptBatch, ro: Rollout) -> PolicyPass:
        """One tree-attention forward over the group plus the ground truth (with gradients)."""
        g = ro.tokens.shape[1]
        everything = torch.cat([ro.tokens, batch.target_tokens[:, None, :]], 1)  # [B, G+1, L]
        with self.training_precision(self.policy):
            logits = candidate_logits(self.policy, batch.prompt_ids, batch.prompt_mask, batch.position_ids,
                                      everything, self.prompt_groups(batch, ro))  # [B, G+1, L, V]
        constrained = self.rollout_config.constrained
        excl = self.excluded(batch)  # the support the rollout decoded from: without seen items when exclude_seen
        logp = token_logprobs(logits[:, :g] / self.rollout_temperature(), ro.tokens, self.engine, constrained,
                              excl)  # [B, G, L]
        gt_support = token_logprobs(logits[:, g:], batch.target_tokens[:, None], self.engine, constrained,
                                    excl)  # [B, 1, L]
        gt_full = token_logprobs(logits[:, g:], batch.target_tokens[:, None])  # [B, 1, L]
        return PolicyPass(logits, logp, gt_support, gt_full)

    def loss_terms(self, fwd: PolicyPass, ro: Rollout, old_logp: torch.Tensor | None,
                   ref_logp: torch.Tensor | None) -> StepLosses:
        """Per-sample NLL of y*, clipped-surrogate GRPO loss, KL, clip fraction and mean ratio ``[B]``."""
        logp = fwd.logp
        nll = -fwd.gt_full[:, 0].mean(1)  # [B], token-mean NLL of y* (full vocabulary, as in SFT)
        old = logp.detach() if old_logp is None else old_logp
        finite = torch.isfinite(logp)  # an invalid token under the support has -inf: it carries no gradient
        safe = torch.where(finite, logp, torch.zeros_like(logp))
        terms = clipped_surrogate(safe, torch.where(finite, old, torch.zeros_like(old)),
                                  None if ref_logp is None else torch.where(finite, ref_logp, safe.detach()),
                                  ro.advantages, self.epsilon_low, self.epsilon_high, self.beta)
        mask = finite  # [B, G, L]
        grpo = aggregate(terms.loss, mask, self.aggregation)  # [B]
        kl = aggregate(terms.kl.detach(), mask, self.aggregation)
        clip = aggregate(terms.clipped.float(), mask, self.aggregation)
        ratio = aggregate(terms.ratio.detach(), mask, self.aggregation)
        return StepLosses(nll, grpo, kl, clip, ratio)

    @torch.no_grad()
    def rollout_diagnostics(self, batch: PromptBatch, ro: Rollout, fwd: PolicyPass) -> Diagnostics:
        """The diagnostics the gates read, from a forward of the rollout policy (the first pass), both sides at
        temperature 1."""
        g = ro.tokens.shape[1]
        temp = self.rollout_temperature()
        cand = fwd.logp.detach() if temp == 1.0 else token_logprobs(
            fwd.logits[:, :g].detach(), ro.tokens, self.engine, self.rollout_config.constrained, self.excluded(batch))
        ok = ro.valid & ~ro.repeat
        diag = compute_diagnostics(ro.items, ok, cand.sum(2), batch.target, fwd.gt_support[:, 0].detach().sum(1),
                                   ro.rewards, ro.gt_reward)
        if ro.truth is not None:  # within-group concordance with the truth: the oracle gate's signal
            pairs = ok & first_occurrence(ro.items)
            raw = ro.rewards if ro.raw is None else ro.raw
            diag = diag.with_truth(concordance(raw, ro.truth, pairs), concordance(cand.sum(2), ro.truth, pairs))
        return diag

    @torch.no_grad()
    def reference_logprobs(self, batch: PromptBatch, ro: Rollout) -> torch.Tensor | None:
        """The reference's token log-probs ``[B, G, L]`` of the candidates. The reference runs the policy pass's exact
        computation — the same G+1 sequences per prompt (y* last, its log-probs unused: ~1/(G+1) more candidate
        tokens), the same prompt groups, the same precision — so that an identical reference gives bit-identical
        log-probs (KL exactly 0 at step 0), whatever the kernels do with other tensor shapes."""
        if self.beta == 0:
            return None
        g = ro.tokens.shape[1]
        everything = torch.cat([ro.tokens, batch.target_tokens[:, None, :]], 1)  # [B, G+1, L], as the policy pass
        with self.training_precision(self.reference):
            logits = candidate_logits(self.reference, batch.prompt_ids, batch.prompt_mask, batch.position_ids,
                                      everything, self.prompt_groups(batch, ro))[:, :g]  # [B, G, L, V]
        return token_logprobs(logits / self.rollout_temperature(), ro.tokens, self.engine,
                              self.rollout_config.constrained, self.excluded(batch))

    def prompt_groups(self, batch: PromptBatch, ro: Rollout) -> PromptGroups:
        """How the policy and reference passes split the batch by prompt length (:func:`prompt_groups`): the same
        groups for both (each scores G+1 sequences per prompt), so that their log-probs of one candidate come from
        the same computation."""
        g, depth = ro.tokens.shape[1:]
        sharded = is_sharded(self.policy) or (self.reference is not None and is_sharded(self.reference))
        return prompt_groups(batch.prompt_mask, extra=(g + 1) * (depth - 1), split=not sharded)

    def excluded(self, batch: PromptBatch) -> torch.Tensor | None:
        """Items the rollouts may not propose ``[B, H]`` (the user's history) when ``exclude_seen``; else None."""
        return batch.seen_items if self.exclude_seen else None

    # ------------------------------------------------------------------------------- training
    def training_step(self, batch: PromptBatch, batch_idx: int) -> torch.Tensor:
        step_start = time.perf_counter()
        ro = self.rollout(batch)
        ref_logp = self.reference_logprobs(batch, ro)
        self.policy.train()
        opt = self.optimizers()
        sched = self.lr_schedulers()
        gates = self.gates()
        old_logp = None
        for _ in range(self.mu):
            out, logp = self.losses(batch, ro, old_logp, ref_logp)
            if old_logp is None:  # first pass: the rollout policy's log-probs, diagnostics and admission
                old_logp, diagnostics, first_kl = logp, out.diagnostics, out.kl.mean()
                admission, per_gate = combine_gates(gates, diagnostics)
                if self.filter_zero_std:
                    admission = admission * (~ro.zero_std).float()
            loss, weights = self.balancer.combine(out.nll, out.grpo, admission, diagnostics)
            # zero_grad, backward, clip, step; skipped (and counted) when the loss or gradient norm is NaN/inf
            if guarded_manual_step(self, opt, loss, self.grad_clip, self.finite_guard) and sched is not None:
                sched.step()
        if not self._logged_kl0 and ref_logp is not None:
            # The KL to the reference before any update, logged once whatever log_every_n_steps is: from an
            # exact copy it is 0; with a quantised reference it measures the quantisation gap.
            for lg in self.loggers:
                lg.log_metrics({"kl/step0": float(first_kl)}, step=self.global_step)
            self._logged_kl0 = True
        for gate in gates:
            gate.observe(diagnostics)
        out.diagnostics = diagnostics
        self.finite_guard.log_to(self)
        self._log_step(batch, ro, out, loss, admission, per_gate, weights, time.perf_counter() - step_start)
        return loss.detach()

    def _log_step(self, batch: PromptBatch, ro: Rollout, out: StepLosses, loss: torch.Tensor,
                  admission: torch.Tensor, per_gate: dict[str, torch.Tensor], weights: torch.Tensor,
                  seconds: float) -> None:
        b = len(batch)
        valid = ro.valid.float()
        r = ro.rewards
        d = out.diagnostics
        metrics = {
            "loss/total": loss.detach(),
            "loss/nll": out.nll.detach().mean(),
            "loss/grpo": out.grpo.detach().mean(),
            "reward/mean": r.mean(),
            "reward/std": r.std(1).mean() if r.shape[1] > 1 else torch.zeros(()),
            "reward/gt": torch.nanmean(ro.gt_reward),
            "reward/hit": ro.hit_bonus.mean(),
            "reward/repeat": ro.repeat_component.mean() if ro.repeat_component is not None else torch.zeros(()),
            "adv/zero_std_frac": ro.zero_std.float().mean(),
            "kl": out.kl.mean(),
            "clip_frac": out.clip_frac.mean(),
            "ratio": out.ratio_mean.mean(),
            "entropy": d.entropy.mean(),
            "gate/open_rate": admission.mean(),
            "gate/rl_weight": weights.mean(),
            "diag/gt_rank": d.gt_rank.mean(),
            "diag/rm_auc": torch.nanmean(d.rm_auc),
            "rollout/invalid_rate": 1 - valid.mean(),
            "rollout/gt_in_group_rate": d.gt_in_group.float().mean(),
            "rollout/unique_rate": first_occurrence(ro.items).float().mean(),
            "rollout/repeat_rate": ro.repeat.float().mean(),
            "perf/rollout_s": torch.tensor(ro.seconds),
            "perf/step_s": torch.tensor(seconds),
            "perf/samples_per_s": torch.tensor(b / max(seconds, 1e-9)),
        }
        metrics.update({f"gate/{name}/open_rate": a.mean() for name, a in per_gate.items()})
        if torch.isfinite(d.rm_concordance).any():  # synthetic world: the gates against the oracle gate
            oracle = (d.rm_concordance > d.policy_concordance).float()  # [B]
            metrics["diag/rm_concordance"] = torch.nanmean(d.rm_concordance)
            metrics["diag/policy_concordance"] = torch.nanmean(d.policy_concordance)
            metrics["gate/oracle_rate"] = oracle.mean()
            metrics["gate/oracle_agreement"] = ((admission > 0.5).float() == oracle).float().mean()
        self.log_dict({k: v.float() for k, v in metrics.items()}, batch_size=b)
        self.log("reward", r.mean().float(), prog_bar=True, batch_size=b, logger=False)
        self.log("open", admission.mean().float(), prog_bar=True, batch_size=b, logger=False)

    def configure_optimizers(self) -> Any:
        config = super().configure_optimizers()
        if isinstance(config, dict):
            sched = config["lr_scheduler"]["scheduler"]
            if (isinstance(sched, WarmupCosine) and getattr(sched, "total_steps_estimated", False)
                    and self.trainer.max_steps in (None, -1)):
                # An epoch-based estimate counts rollout batches; we step μ times per batch. (max_steps already
                # counts optimizer steps: manual optimisation advances global_step at every opt.step().)
                sched.total_steps *= self.mu
        return config

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[CKPT_KEY]["init_from"] = self.init_from
        checkpoint[CKPT_KEY]["balancer"] = self.balancer.describe()
        # Every gate's running state (those moved here from trainer.callbacks too): saved once, here.
        checkpoint[CKPT_KEY]["gates"] = {g.state_key: g.state_dict() for g in self.module_gates}
        if self._rollout_generator is not None:
            checkpoint[CKPT_KEY]["rollout_rng"] = self._rollout_generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        states = (checkpoint.get(CKPT_KEY) or {}).get("gates", {})
        self._logged_kl0 = self._logged_kl0 or bool(checkpoint.get("global_step"))  # a resumed fit logged it
        rng = (checkpoint.get(CKPT_KEY) or {}).get("rollout_rng")
        if rng is not None:
            self._rollout_generator, self._rollout_rng_state = None, rng
        older = checkpoint.get("callbacks") or {}  # checkpoints from before: trainer-callback gates saved there
        for gate in self.module_gates:
            if gate.state_key in states:
                gate.load_state_dict(states[gate.state_key])
            elif gate.state_key in older:
                gate.load_state_dict(older[gate.state_key])


def group_spread(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Std ``[B, 1]`` of each group's masked-in rewards (``rewards``, ``mask``: ``[B, G]``); a group with fewer
    than two such rewards, or none finite, gets the batch's mean spread (1.0 if no group has one)."""
    m = mask & torch.isfinite(rewards)
    n = m.sum(1, keepdim=True).float()  # [B, 1]
    r = torch.where(m, rewards, torch.zeros_like(rewards))
    mean = r.sum(1, keepdim=True) / n.clamp_min(1)
    var = (torch.where(m, (rewards - mean) ** 2, torch.zeros_like(rewards))).sum(1, keepdim=True) / (n - 1).clamp_min(1)
    std = var.sqrt()
    ok = (n >= 2) & (std > 0)
    fallback = std[ok].mean() if ok.any() else std.new_ones(())
    return torch.where(ok, std, fallback)
