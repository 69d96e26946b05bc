"""Does a world express the paper's premise? The calibration report of a synthetic world, an SFT policy and a
reward model, measured before any RL compute is spent (``adagrpo calibrate``).

AdaGRPO's premise is that the reward model knows something the imitating policy does not, but is noisy on an
identifiable part of the data. On the synthetic world the truth is known, so each part can be measured on the
test events (each user's held-out next step):

* **information gap** — true HR@10 (the user's best unseen item in the top 10) of the oracle (1 by definition),
  of an *ideal imitator* of the logs (the logging policy's exact next-click distribution given the true state,
  by Monte Carlo over slates), of the SFT policy and of the most-popular list;
* **the reward model as a recommender** — true HR@10 of ranking every unseen item by the reward;
* **inside the policy's beams** — the share of candidate pairs the reward orders as the truth does
  (concordance) against the share the policy's own log-probs get right, overall and by pre-outcome stratum
  (history length, history popularity, and the reward's noisy segment where it has one): where the reward
  beats the policy, GRPO has something to learn;
* **gates** — how often the difficulty and discriminability diagnostics pass with the oracle reward and with the
  given reward, and how often the oracle gate (reward concordance > policy concordance) would admit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from adagrpo.datamodules.sequence import SeqRecDataModule
from adagrpo.errors import ConfigError
from adagrpo.lightning_modules.decoding import DecodingConfig, DecodingEngine
from adagrpo.lightning_modules.diagnostics import compute_diagnostics, concordance, first_occurrence
from adagrpo.lightning_modules.reward import OracleReward, RewardModel


@dataclass
class Calibration:
    """The report's numbers: ``summary`` (name → value) and ``strata`` (one row per stratum)."""

    summary: dict[str, float]
    strata: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"summary": self.summary, "strata": self.strata, "settings": self.settings}


def _mean_ci(x: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its normal 95 % interval (NaN-aware)."""
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else math.nan
    return float(x.mean()), float(half)


def _hit(top: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    return (top == best[:, None]).any(1).float()


@torch.no_grad()
def calibrate(dm: SeqRecDataModule, sft: nn.Module | None = None, reward: RewardModel | None = None,
              max_users: int | None = 1000, group: int = 16, k: int = 10, beam_width: int = 20,
              imitator_samples: int = 128, difficulty_rank: float = 2.0, auc_threshold: float = 0.8,
              batch_size: int = 128, seed: int = 0) -> Calibration:
    """The calibration report on ``max_users`` seeded test events of a prepared synthetic ``dm``.

    ``sft``: the policy whose beams and top-K are measured (optional: without it only the world and the reward
    as a recommender are reported); ``reward``: the reward model (attached to ``dm`` here; optional).
    """
    world = getattr(dm.source, "world", None)
    if world is None:
        raise ConfigError("data.source", "the calibration report needs a ground truth: use the synthetic world")
    targets = dm.split.test
    if max_users is not None and len(targets) > max_users:
        pick = np.random.default_rng(seed).choice(len(targets), max_users, replace=False)
        targets = targets[np.sort(pick)]
    oracle = OracleReward()
    oracle.attach(dm)
    if reward is not None:
        reward.attach(dm)
    engine = DecodingEngine(dm.trie, dm.vocab) if sft is not None else None
    popularity = dm.train_popularity().float()
    cols: dict[str, list[torch.Tensor]] = {}

    def add(name: str, value: torch.Tensor) -> None:
        cols.setdefault(name, []).append(value.detach().float().cpu())

    for start in range(0, len(targets), batch_size):
        batch = dm.prompt_batch(targets[start:start + batch_size])
        users, last = batch.user.cpu(), batch.history[:, -1].cpu()
        util = dm.oracle_utility(batch).cpu()  # [B, N], -inf on seen items
        seen = ~torch.isfinite(util)
        best = util.argmax(1)  # [B] the user's best unseen item
        add("target_is_best", (batch.target.cpu() == best).float())
        probs = world.click_probabilities(users, last, seen, samples=imitator_samples, seed=seed + start)
        add("imitator_true_hr", _hit(probs.masked_fill(seen, -1).topk(k, 1).indices, best))
        add("mostpop_true_hr", _hit(popularity.expand_as(util).masked_fill(seen, -1).topk(k, 1).indices, best))
        hist = batch.history.cpu()
        valid_hist = hist >= 0
        add("history_length", valid_hist.sum(1))
        logpop = torch.log1p(popularity[hist.clamp_min(0)])
        add("history_logpop", (logpop * valid_hist).sum(1) / valid_hist.sum(1).clamp_min(1))
        if reward is not None:
            all_items = torch.arange(dm.data.num_items).expand(len(batch), -1)  # [B, N]
            scores = reward.score(batch.history, all_items.to(batch.history.device), batch.user).float().cpu()
            add("reward_true_hr", _hit(scores.masked_fill(seen, -math.inf).topk(k, 1).indices, best))
            if hasattr(reward, "in_segment") and getattr(reward, "noise_on", None) == "segment":
                add("noisy_segment", reward.in_segment(users).float())
        if sft is None:
            continue
        args = (sft, batch.prompt_ids, batch.prompt_mask, batch.position_ids)
        top = engine.generate(*args, DecodingConfig("beam", max(beam_width, k), constrained=True)).items[:, :k]
        add("sft_true_hr", _hit(top.cpu(), best))
        cands = engine.generate(*args, DecodingConfig("beam", group, constrained=True))
        items = cands.items.cpu()  # [B, G]
        lp = cands.logprobs.sum(-1).cpu()  # [B, G] sequence log-prob on the constrained support
        repeat = (items[:, :, None] == hist[:, None, :]).any(-1) & (items >= 0)
        ok = cands.valid.cpu() & ~repeat  # [B, G]
        pairs = ok & first_occurrence(items)
        truth = world.utility(users, last, items)  # [B, G]
        add("policy_concordance", concordance(lp, truth, pairs))
        gt_lp = _target_logprob(engine, sft, batch).cpu()  # [B]
        gt_truth = world.utility(users, last, batch.target.cpu()[:, None])[:, 0]
        oracle_diag = compute_diagnostics(items, ok, lp, batch.target.cpu(), gt_lp, truth, gt_truth)
        add("difficulty_pass", (oracle_diag.gt_rank >= difficulty_rank).float())
        add("oracle_auc_pass", (oracle_diag.rm_auc >= auc_threshold).float())
        add("gt_in_group", oracle_diag.gt_in_group.float())
        if reward is not None:
            r = reward.score(batch.history, cands.items, batch.user).float().cpu()
            r_gt = reward.score(batch.history, batch.target[:, None], batch.user)[:, 0].float().cpu()
            add("reward_concordance", concordance(r, truth, pairs))
            diag = compute_diagnostics(items, ok, lp, batch.target.cpu(), gt_lp, r, r_gt)
            add("reward_auc_pass", (diag.rm_auc >= auc_threshold).float())
    data = {name: torch.cat(v).numpy() for name, v in cols.items()}
    return _summarise(data, difficulty_rank, auc_threshold, len(targets), group, k)


def _target_logprob(engine: DecodingEngine, policy: nn.Module, batch) -> torch.Tensor:  # noqa: ANN001
    """π(y*|x) as a sequence log-prob on the constrained support ``[B]``."""
    from adagrpo.lightning_modules.decoding import candidate_logits, token_logprobs

    tokens = batch.target_tokens[:, None]  # [B, 1, L]
    logits = candidate_logits(policy, batch.prompt_ids, batch.prompt_mask, batch.position_ids, tokens)
    return token_logprobs(logits, tokens, engine, True).sum(-1)[:, 0]


def _summarise(d: dict[str, np.ndarray], difficulty_rank: float, auc_threshold: float, users: int, group: int,
               k: int) -> Calibration:
    summary: dict[str, float] = {"users": float(users), "oracle_true_hr": 1.0}
    for name in ("imitator_true_hr", "sft_true_hr", "reward_true_hr", "mostpop_true_hr", "target_is_best",
                 "policy_concordance", "reward_concordance", "difficulty_pass", "oracle_auc_pass", "reward_auc_pass",
                 "gt_in_group"):
        if name in d:
            summary[name] = float(np.nanmean(d[name]))
    if "difficulty_pass" in d:
        summary["oracle_both_pass"] = float(np.nanmean(d["difficulty_pass"] * d["oracle_auc_pass"]))
        if "reward_auc_pass" in d:
            summary["reward_both_pass"] = float(np.nanmean(d["difficulty_pass"] * d["reward_auc_pass"]))
    strata: list[dict] = []
    if "reward_concordance" in d:
        gap = d["reward_concordance"] - d["policy_concordance"]
        summary["oracle_gate_rate"] = float(np.mean(np.nan_to_num(gap, nan=-1.0) > 0))
        summary["concordance_gap"], summary["concordance_gap_ci"] = _mean_ci(gap)
        families = {"history length": d["history_length"], "history popularity": d["history_logpop"]}
        for family, values in families.items():
            edges = np.quantile(values, [1 / 3, 2 / 3])
            which = np.digitize(values, edges)
            for t, label in enumerate(("low", "mid", "high")):
                strata.append(_stratum_row(family, label, which == t, d, gap))
        if "noisy_segment" in d:
            for flag, label in ((1.0, "noisy segment"), (0.0, "clean segment")):
                strata.append(_stratum_row("reward noise", label, d["noisy_segment"] == flag, d, gap))
    settings = {"group": group, "k": k, "difficulty_rank": difficulty_rank, "auc_threshold": auc_threshold}
    return Calibration(summary, strata, settings)


def _stratum_row(family: str, label: str, mask: np.ndarray, d: dict[str, np.ndarray], gap: np.ndarray) -> dict:
    mean, half = _mean_ci(gap[mask])
    return {"family": family, "stratum": label, "users": int(mask.sum()),
            "policy_concordance": float(np.nanmean(d["policy_concordance"][mask])) if mask.any() else math.nan,
            "reward_concordance": float(np.nanmean(d["reward_concordance"][mask])) if mask.any() else math.nan,
            "reward_beats_policy": float(np.mean(np.nan_to_num(gap[mask], nan=-1.0) > 0)) if mask.any() else math.nan,
            "gap": mean, "gap_ci": half}


def format_calibration(c: Calibration, title: str = "") -> str:
    s = c.summary
    f = lambda key: f"{s[key]:.3f}" if key in s and math.isfinite(s[key]) else "-"  # noqa: E731
    lines = [f"calibration report{': ' + title if title else ''}  ({int(s['users'])} test events)", "",
             "information gap (true HR@10: the user's best unseen item in the top 10)",
             f"  oracle               {f('oracle_true_hr')}",
             f"  ideal imitator       {f('imitator_true_hr')}   (the logging policy's next-click distribution)",
             f"  SFT policy           {f('sft_true_hr')}",
             f"  reward as recommender {f('reward_true_hr')}",
             f"  most popular         {f('mostpop_true_hr')}",
             f"  logged item is the user's best unseen item: {f('target_is_best')}", ""]
    if "policy_concordance" in s:
        lines += ["inside the SFT policy's beams (share of candidate pairs ordered as the truth orders them)",
                  f"  policy log-prob      {f('policy_concordance')}",
                  f"  reward               {f('reward_concordance')}",
                  f"  reward − policy      {f('concordance_gap')} ± {f('concordance_gap_ci')} (95 %)",
                  f"  oracle gate admits   {f('oracle_gate_rate')}   (reward orders the group better than the policy)",
                  "", "gate pass rates on the test events",
                  f"  difficulty (y* not the policy's top-1)      {f('difficulty_pass')}",
                  f"  discriminability, oracle reward (AUC≥{c.settings['auc_threshold']})  {f('oracle_auc_pass')}",
                  f"  discriminability, this reward               {f('reward_auc_pass')}",
                  f"  both, oracle reward                         {f('oracle_both_pass')}",
                  f"  both, this reward                           {f('reward_both_pass')}",
                  f"  y* among the {c.settings['group']} beams                       {f('gt_in_group')}"]
    if c.strata:
        lines += ["", "by pre-outcome stratum (reward vs policy concordance inside the beams)",
                  f"  {'family':<20}{'stratum':<16}{'users':>6}{'policy':>9}{'reward':>9}{'reward>pol':>12}"
                  f"{'gap ± 95 %':>18}"]
        for r in c.strata:
            lines.append(f"  {r['family']:<20}{r['stratum']:<16}{r['users']:>6}{r['policy_concordance']:>9.3f}"
                         f"{r['reward_concordance']:>9.3f}{r['reward_beats_policy']:>12.3f}"
                         f"{r['gap']:>+10.3f} ± {r['gap_ci']:.3f}")
    return "\n".join(lines)
