"""The stratified analysis: for which users does RL help, by what is known *before* their test outcome?

Test users are grouped into strata, and each policy's HR@K on the users' held-out test items (plus the
seen-filtered and, on the synthetic world, true metrics) is compared per stratum. A stratum a gate could act on
must be defined without the test item, so the strata come from what is known before it:

* **gates** — AdaGRPO's gates (:class:`~adagrpo.callbacks.gates.PolicyDifficultyGate` on ``gt_rank`` and
  :class:`~adagrpo.callbacks.gates.RewardDiscriminabilityGate` on ``auc``, ANDed as in training) applied to the
  diagnostics (:func:`~adagrpo.lightning_modules.diagnostics.compute_diagnostics`) of the SFT policy and the reward
  model on the user's last ``train_prompts`` *training* prompts: the share admitted, and the 2×2 cell
  (policy certain/uncertain × reward model noisy/discriminative) of the last training prompt;
* **history popularity** — terciles of the mean log(1 + training popularity) of the items before the test item;
* **history length** — terciles of the number of items before the test item;
* **truth** (synthetic world only) — whether the reward model orders the rollout groups of the user's training
  prompts more like the true utility than the SFT policy does (mean within-group concordance, reward model minus
  policy, > 0) — the oracle gate's question, asked before the outcome.

The strata of earlier versions (the same 2×2 cell, but from the diagnostics of the *test* prompt, whose y* is the
item then scored) are kept only on request (``post_hoc=True``) and labelled "post-hoc (defined by the test item)":
no gate that runs before the outcome can select them, so their differences are not gains a gate could collect.
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from adagrpo.datamodules.errors import ConfigError
from adagrpo.datamodules.sequence import PAD_ITEM, SeqRecDataModule, _left_pad
from adagrpo.lightning_modules.base import CKPT_KEY, check_signature
from adagrpo.lightning_modules.checkpoint_io import load_checkpoint
from adagrpo.lightning_modules.decoding import DecodingConfig, DecodingEngine, candidate_logits, token_logprobs
from adagrpo.lightning_modules.diagnostics import Diagnostics, compute_diagnostics, concordance, first_occurrence
from adagrpo.lightning_modules.gating import PolicyDifficultyGate, RewardDiscriminabilityGate, combine_gates
from adagrpo.lightning_modules.policy import spec_from_description
from adagrpo.lightning_modules.reward import RewardModel

#: The 2×2 cells of the gates' diagnostics: 2·uncertain + discriminative.
CELLS = ("certain·noisy", "certain·discriminative", "uncertain·noisy", "uncertain·discriminative")
STRATA = CELLS  # the old name
POST_HOC = "post-hoc (defined by the test item)"
#: Metric keys (``{k}`` = the cut-off) and how tables name them.
METRICS = {"hr_{k}": "HR@{k}", "hr_{k}_seen_filtered": "HR@{k} seen-filtered", "true_hr_{k}": "true HR@{k}",
           "true_hr_{k}_seen_filtered": "true HR@{k} seen-filtered", "true_utility_{k}": "true utility@{k}",
           "repeat_rate_{k}": "repeat rate@{k}"}


def load_policy(checkpoint: str, dm: SeqRecDataModule) -> nn.Module:
    """The policy of an SFT or GRPO checkpoint, checked against the data's SIDs, in eval mode."""
    ckpt = load_checkpoint(checkpoint, what="policy checkpoint")
    info = ckpt.get(CKPT_KEY)
    sids = dm.sids
    check_signature(info, {"sid_fingerprint": sids.fingerprint(), "codebook_sizes": list(sids.codebook_sizes),
                           "num_items": sids.num_items, "vocab_size": dm.vocab.vocab_size,
                           "dataset": dm.data.name}, checkpoint)
    policy, _ = spec_from_description(info["policy"]).build(dm.vocab)
    policy.load_state_dict({k.removeprefix("policy."): v for k, v in ckpt["state_dict"].items()
                            if k.startswith("policy.")})
    return policy.eval()


@torch.no_grad()
def diagnose(policy: nn.Module, engine: DecodingEngine, reward: RewardModel, batch, group: int = 16,  # noqa: ANN001
             constrained: bool = True, truth: torch.Tensor | None = None) -> Diagnostics:
    """Roll out ``group`` beams with ``policy`` and compute the gates' diagnostics for ``batch``, as GRPO does
    (candidates the user already has in the history take part in neither side).

    ``truth``: the true utility ``[B, N]`` (synthetic world; -inf on seen items). With it, the diagnostics carry
    the reward model's and the policy's within-group concordance with the truth over the group's distinct valid
    unseen candidates.
    """
    cands = engine.generate(policy, batch.prompt_ids, batch.prompt_mask, batch.position_ids,
                            DecodingConfig("beam", group, constrained))
    everything = torch.cat([cands.tokens, batch.target_tokens[:, None]], 1)
    logits = candidate_logits(policy, batch.prompt_ids, batch.prompt_mask, batch.position_ids, everything)
    lp = token_logprobs(logits, everything, engine, constrained).sum(2)  # [B, G+1]
    rewards = reward.score(batch.history, cands.items, batch.user).float()
    gt_reward = reward.score(batch.history, batch.target[:, None], batch.user)[:, 0].float()
    repeat = (cands.items[:, :, None] == batch.history[:, None, :]).any(-1) & (cands.items >= 0)  # [B, G]
    valid = cands.valid & ~repeat
    diag = compute_diagnostics(cands.items, valid, lp[:, :group], batch.target, lp[:, group], rewards, gt_reward)
    if truth is not None:
        util = truth.gather(1, cands.items.clamp_min(0))  # [B, G]
        mask = valid & first_occurrence(cands.items) & torch.isfinite(util)
        diag = diag.with_truth(concordance(rewards, util, mask), concordance(lp[:, :group], util, mask))
    return diag


def gates_for(difficulty_rank: float, auc_threshold: float) -> list:
    """AdaGRPO's shipped gates (``configs/experiments/adagrpo.yaml``) at fixed thresholds."""
    return [PolicyDifficultyGate(signal="gt_rank", threshold=difficulty_rank),
            RewardDiscriminabilityGate(signal="auc", threshold=auc_threshold)]


def cell_of(diag: Diagnostics, difficulty_rank: float, auc_threshold: float) -> torch.Tensor:
    """``[B]`` index into :data:`CELLS` (2·uncertain + discriminative)."""
    uncertain = diag.gt_rank >= difficulty_rank
    discriminative = torch.nan_to_num(diag.rm_auc, nan=-1.0) >= auc_threshold
    return 2 * uncertain.long() + discriminative.long()


# ====================================================================================================== strata
@dataclass
class Stratification:
    """One way of splitting the users. ``assign [U]``: index into ``labels``, -1 = undefined for that user
    (counted, not scored). ``pre_outcome``: defined without the test item."""

    key: str
    title: str
    labels: list[str]
    assign: np.ndarray
    pre_outcome: bool
    definition: str


def terciles(values: np.ndarray, fmt: str = "{:.2f}") -> tuple[np.ndarray, list[str]]:
    """Tercile bins of ``values`` (edges at the 1/3 and 2/3 quantiles; ties stay together, so a bin can be
    empty); labels name each bin's observed range. NaN values get -1."""
    ok = np.isfinite(values)
    assign = np.full(len(values), -1, dtype=np.int64)
    if not ok.any():
        return assign, ["low", "mid", "high"]
    edges = np.quantile(values[ok], [1 / 3, 2 / 3])
    assign[ok] = np.searchsorted(edges, values[ok], side="left")  # v <= e1 → 0, e1 < v <= e2 → 1, else 2
    labels = []
    for b, name in enumerate(("low", "mid", "high")):
        v = values[ok][assign[ok] == b]
        labels.append(f"{name} ({fmt.format(v.min())}–{fmt.format(v.max())})" if len(v) else f"{name} (empty)")
    return assign, labels


@torch.no_grad()
def pre_outcome_strata(dm: SeqRecDataModule, sft: nn.Module, reward: RewardModel, targets: np.ndarray,
                       group: int = 16, difficulty_rank: float = 2.0, auc_threshold: float = 0.8,
                       train_prompts: int = 5, batch_size: int = 128, progress: bool = False) -> list[Stratification]:
    """The strata of the test ``targets [U, 2]`` (``(user, position)``) from what is known before their outcome:
    the users' training prompts (positions before the split's training end), their histories before the test
    position, the training popularity and — on the synthetic world — the true utility of training positions.
    Nothing here reads ``seq[position]`` or later items."""
    if train_prompts < 1:
        raise ValueError(f"train_prompts must be >= 1, got {train_prompts}")
    engine = DecodingEngine(dm.trie, dm.vocab)
    reward.attach(dm)
    users = targets[:, 0]
    n = len(users)
    train_end = dm.split.train_end[users]  # [U]
    # The last `train_prompts` training prompts of every user: (row of the user, user, position).
    rows, prompts = [], []
    for r, (u, end) in enumerate(zip(users.tolist(), train_end.tolist())):
        for p in range(max(1, end - train_prompts), end):
            rows.append(r)
            prompts.append((u, p))
    rows_a = np.asarray(rows, dtype=np.int64)
    prompts_a = np.asarray(prompts, dtype=np.int64).reshape(-1, 2)
    world = getattr(dm.source, "world", None) is not None
    gates = gates_for(difficulty_rank, auc_threshold)
    admitted, cells, gain = [], [], []
    starts = range(0, len(prompts_a), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="gates on training prompts", unit="batch")
    for start in starts:
        batch = dm.prompt_batch(prompts_a[start:start + batch_size])
        diag = diagnose(sft, engine, reward, batch, group, truth=dm.oracle_utility(batch) if world else None)
        admitted.append(combine_gates(gates, diag)[0].cpu().numpy())
        cells.append(cell_of(diag, difficulty_rank, auc_threshold).cpu().numpy())
        gain.append((diag.rm_concordance - diag.policy_concordance).cpu().numpy())
    admitted_a = np.concatenate(admitted) if admitted else np.zeros(0)
    cells_a = np.concatenate(cells) if cells else np.zeros(0, dtype=np.int64)
    gain_a = np.concatenate(gain) if gain else np.zeros(0)
    count = np.bincount(rows_a, minlength=n)
    has = count > 0
    out = []

    share = np.bincount(rows_a, weights=admitted_a, minlength=n) / np.maximum(count, 1)
    assign = np.where(~has, -1, np.where(share <= 0, 0, np.where(share <= 1 / 3, 1, 2)))
    out.append(Stratification(
        "gate_share", f"gates on the last {train_prompts} training prompts: share admitted",
        ["none admitted", "≤ 1/3 admitted", "> 1/3 admitted"], assign.astype(np.int64), True,
        f"AdaGRPO's gates (gt_rank >= {difficulty_rank:g} AND auc >= {auc_threshold:g}) on the SFT policy's and the "
        f"reward model's diagnostics of the user's last {train_prompts} training prompts (group {group})"))
    last = np.full(n, -1, dtype=np.int64)
    if len(rows_a):
        last[rows_a] = cells_a  # prompts are in position order per user: the last write is the last prompt
    out.append(Stratification(
        "gate_cell_last", "gates' cell on the last training prompt", list(CELLS), last, True,
        f"policy uncertain = y*'s rank in the SFT group >= {difficulty_rank:g}; reward model discriminative = "
        f"AUC(y* vs negatives) >= {auc_threshold:g}; y* = the item after the user's last training prompt"))

    pop = np.log1p(dm.train_popularity().double().numpy())  # [N], training prefixes only
    seen = [dm.data.sequence(int(u))[: int(p)] for u, p in targets]
    mean_pop = np.asarray([pop[s].mean() if len(s) else math.nan for s in seen])
    assign, labels = terciles(mean_pop)
    out.append(Stratification("history_popularity", "history popularity (terciles)", labels, assign, True,
                              "mean log(1 + training popularity) of the items before the test item"))
    assign, labels = terciles(targets[:, 1].astype(np.float64), "{:.0f}")
    out.append(Stratification("history_length", "history length (terciles)", labels, assign, True,
                              "number of items before the test item"))
    if world:
        ok = np.isfinite(gain_a)
        total = np.bincount(rows_a[ok], weights=gain_a[ok], minlength=n)
        m = np.bincount(rows_a[ok], minlength=n)
        mean_gain = np.where(m > 0, total / np.maximum(m, 1), math.nan)
        assign = np.where(m == 0, -1, (mean_gain > 0).astype(np.int64))
        out.append(Stratification(
            "truth_concordance", "truth: reward model vs SFT policy, concordance with the true utility",
            ["RM not ahead", "RM ahead"], assign.astype(np.int64), True,
            f"mean over the user's last {train_prompts} training prompts of the reward model's minus the SFT "
            "policy's within-group concordance with the true utility (synthetic world); ahead = > 0"))
    return out


@torch.no_grad()
def post_hoc_strata(dm: SeqRecDataModule, sft: nn.Module, reward: RewardModel, targets: np.ndarray,
                    group: int = 16, difficulty_rank: float = 2.0, auc_threshold: float = 0.8,
                    batch_size: int = 128) -> Stratification:
    """The 2×2 cell from the diagnostics of the *test* prompt itself (its y* is the scored test item)."""
    engine = DecodingEngine(dm.trie, dm.vocab)
    reward.attach(dm)
    cells = [cell_of(diagnose(sft, engine, reward, dm.prompt_batch(targets[s:s + batch_size]), group),
                     difficulty_rank, auc_threshold).cpu().numpy() for s in range(0, len(targets), batch_size)]
    return Stratification("post_hoc_cell", f"the test prompt's gates' cell — {POST_HOC}", list(CELLS),
                          np.concatenate(cells).astype(np.int64), False,
                          "the same 2×2 cell, from the SFT group and reward scores of the test prompt, whose y* is the "
                          "test item: not available to any gate before the outcome")


# ====================================================================================================== scores
def _seen_matrix(dm: SeqRecDataModule, targets: np.ndarray) -> torch.Tensor:
    """``[B, S]`` every item before each target's position (-1 padded): the user's seen items."""
    seen = [dm.data.sequence(int(u))[: int(p)] for u, p in targets]
    return torch.from_numpy(_left_pad(seen, max(1, max((len(s) for s in seen), default=1))))


def _supports_exclusion(engine: DecodingEngine) -> bool:
    return "exclude" in inspect.signature(engine.generate).parameters


@torch.no_grad()
def score_policies(dm: SeqRecDataModule, policies: dict[str, nn.Module], targets: np.ndarray, k: int = 10,
                   beam_width: int = 20, batch_size: int = 128,
                   progress: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """Per policy, per metric (:data:`METRICS`), the value of every test target ``[U]``: HR@k of the test item,
    seen-filtered HR@k (decoding never returns an item before the test position; when the decoder supports
    exclusion), and on the synthetic world the true HR@k (the user's best unseen item in the top k), true
    utility@k (a seen item counts as the user's worst) and the repeat rate."""
    engine = DecodingEngine(dm.trie, dm.vocab)
    filtered = _supports_exclusion(engine)
    width = max(k, beam_width)
    out: dict[str, dict[str, list]] = {name: {} for name in policies}
    starts = range(0, len(targets), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="scoring policies", unit="batch")
    for start in starts:
        t = targets[start:start + batch_size]
        batch = dm.prompt_batch(t)
        seen = _seen_matrix(dm, t)  # [B, S]
        oracle = dm.oracle_utility(batch)  # [B, N] or None
        for name, policy in policies.items():
            config = DecodingConfig("beam", width, True)
            args = (policy, batch.prompt_ids, batch.prompt_mask, batch.position_ids, config)
            tops = {"": engine.generate(*args).items[:, :k]}
            if filtered:
                excl = torch.stack([torch.full_like(seen, PAD_ITEM), seen], 1)  # [B, 2, S]: unfiltered, filtered
                both = engine.generate(*args, exclude=excl).items  # [B, 2, W]
                tops = {"": both[:, 0, :k], "_seen_filtered": both[:, 1, :k]}
            m = out[name]
            for suffix, top in tops.items():
                m.setdefault(f"hr_{k}{suffix}", []).append((top == batch.target[:, None]).any(1).float().numpy())
                if oracle is not None:
                    best = oracle.argmax(1)  # [B] the user's best unseen item
                    m.setdefault(f"true_hr_{k}{suffix}", []).append((top == best[:, None]).any(1).float().numpy())
            top = tops[""]
            repeat = (top[:, :, None] == seen[:, None, :]).any(-1) & (top >= 0)  # [B, k]
            m.setdefault(f"repeat_rate_{k}", []).append(repeat.float().mean(1).numpy())
            if oracle is not None:
                util = oracle.gather(1, top.clamp_min(0))
                floor = oracle.masked_fill(~torch.isfinite(oracle), math.inf).min(1, keepdim=True).values
                util = torch.where(torch.isfinite(util), util, floor.expand_as(util)).masked_fill(top < 0, math.nan)
                m.setdefault(f"true_utility_{k}", []).append(util.nanmean(1).numpy())
    return {name: {key: np.concatenate(v) for key, v in m.items()} for name, m in out.items()}


# ====================================================================================================== result
@dataclass
class StratifiedResult:
    """``targets [U, 2]`` the analysed test targets; ``families``: the stratifications;
    ``scores``: policy → metric → ``[U]``."""

    targets: np.ndarray
    families: list[Stratification]
    scores: dict[str, dict[str, np.ndarray]]
    k: int
    settings: dict = field(default_factory=dict)

    @property
    def policies(self) -> list[str]:
        return list(self.scores)

    def metric_keys(self) -> list[str]:
        have = set().union(*(m.keys() for m in self.scores.values())) if self.scores else set()
        return [key.format(k=self.k) for key in METRICS if key.format(k=self.k) in have]

    def _cell(self, mask: np.ndarray) -> dict[str, dict[str, float]]:
        return {p: {key: float(np.nanmean(v[mask])) if mask.any() and np.isfinite(v[mask]).any() else math.nan
                    for key, v in m.items()} for p, m in self.scores.items()}

    def rows(self) -> list[dict]:
        """One row per (family, stratum), then ``all``: ``family``, ``stratum``, ``users``, ``pre_outcome``,
        ``metrics`` (policy → metric → mean). A family's users with an undefined stratum get a row ``undefined``."""
        out = []
        for fam in self.families:
            strata = [(label, fam.assign == i) for i, label in enumerate(fam.labels)]
            if (fam.assign < 0).any():
                strata.append(("undefined", fam.assign < 0))
            for label, mask in strata:
                out.append({"family": fam.key, "title": fam.title, "stratum": label, "users": int(mask.sum()),
                            "pre_outcome": fam.pre_outcome, "metrics": self._cell(mask)})
        everyone = np.ones(len(self.targets), dtype=bool)
        out.append({"family": "all", "title": "all users", "stratum": "all", "users": int(len(self.targets)),
                    "pre_outcome": True, "metrics": self._cell(everyone)})
        return out

    def table(self) -> list[dict]:
        """Flat rows ``{stratum: "<family>: <label>", users, <policy>: HR@k}`` (``strata.json``; what
        ``benchmarks/strata_paired.py`` reads)."""
        hr = f"hr_{self.k}"
        out = []
        for r in self.rows():
            name = "all" if r["family"] == "all" else f"{r['title']}: {r['stratum']}"
            out.append({"stratum": name, "users": r["users"],
                        **{p: r["metrics"][p].get(hr, math.nan) for p in self.policies}})
        return out

    def to_json(self) -> dict:
        return {"k": self.k, "settings": self.settings, "policies": self.policies, "metrics": self.metric_keys(),
                "families": [{"key": f.key, "title": f.title, "labels": f.labels, "pre_outcome": f.pre_outcome,
                              "definition": f.definition} for f in self.families],
                "rows": self.rows()}


@torch.no_grad()
def stratified_analysis(dm: SeqRecDataModule, sft: nn.Module, policies: dict[str, nn.Module], reward: RewardModel,
                        k: int = 10, group: int = 16, difficulty_rank: float = 2.0, auc_threshold: float = 0.8,
                        train_prompts: int = 5, post_hoc: bool = False, max_users: int | None = None,
                        batch_size: int = 128, heldout_only: bool = False, progress: bool = True) -> StratifiedResult:
    """Pre-outcome strata (and, with ``post_hoc``, the labelled test-item strata) of the test users; every
    policy's metrics per user. ``heldout_only``: only the users of the data's held-out slice (``rl_users:
    heldout``), whose training prompts neither SFT nor the reward model was fit on — the gate strata are then
    out of sample."""
    targets = dm.split.test
    if heldout_only:
        held = dm.split.heldout_mask()
        if not held.any():
            raise ConfigError("data.rl_users", "heldout_only needs a data config with rl_users: heldout "
                                               f"(this one has rl_users: {getattr(dm, 'rl_users', 'all')!r})")
        targets = targets[held[targets[:, 0]]]
    if max_users is not None and len(targets) > max_users:
        targets = targets[np.sort(np.random.default_rng(0).choice(len(targets), max_users, replace=False))]
    families = pre_outcome_strata(dm, sft, reward, targets, group, difficulty_rank, auc_threshold, train_prompts,
                                  batch_size, progress)
    if post_hoc:
        families.append(post_hoc_strata(dm, sft, reward, targets, group, difficulty_rank, auc_threshold, batch_size))
    scores = score_policies(dm, policies, targets, k, batch_size=batch_size, progress=progress)
    settings = {"group": group, "difficulty_rank": difficulty_rank, "auc_threshold": auc_threshold,
                "train_prompts": train_prompts, "users": int(len(targets)), "dataset": dm.data.name,
                "heldout_only": heldout_only}
    return StratifiedResult(targets, families, scores, k, settings)


def with_permuted_test_items(dm: SeqRecDataModule, seed: int = 0) -> SeqRecDataModule:
    """A shallow copy of a prepared ``dm`` whose test items (each user's item at its test position) are permuted
    across users; everything before the test positions is unchanged. For checking that strata are pre-outcome."""
    from adagrpo.datamodules.catalog import Interactions

    data = dm.data
    flat = data.offsets[dm.split.test[:, 0]] + dm.split.test[:, 1]  # [T] flat index of every test item
    items = data.items.copy()
    items[flat] = items[flat][np.random.default_rng(seed).permutation(len(flat))]
    clone = copy.copy(dm)
    clone.data = Interactions(data.name, data.catalog, list(data.user_ids), data.offsets.copy(), items,
                              list(data.files))
    return clone


# ====================================================================================================== output
def _fmt(x: float) -> str:
    return f"{x:.4f}" if math.isfinite(x) else "-"


def format_strata(result: StratifiedResult) -> str:
    """Per family, per stratum and metric: each policy's mean and its difference to SFT."""
    policies = result.policies
    others = [p for p in policies if p != "sft"] if "sft" in policies else []
    names = {key.format(k=result.k): label.format(k=result.k) for key, label in METRICS.items()}
    header = ["stratum", "users", "metric"] + policies + [f"{p} − sft" for p in others]
    blocks = []
    rows = result.rows()
    for fam in [*result.families, None]:
        key = "all" if fam is None else fam.key
        title = "all users" if fam is None else fam.title
        tag = "pre-outcome" if fam is not None and fam.pre_outcome else ""  # post-hoc titles say so themselves
        body = []
        for r in (r for r in rows if r["family"] == key):
            for i, metric in enumerate(result.metric_keys()):
                vals = {p: r["metrics"][p].get(metric, math.nan) for p in policies}
                body.append([r["stratum"] if i == 0 else "", str(r["users"]) if i == 0 else "", names[metric]]
                            + [_fmt(vals[p]) for p in policies]
                            + [(f"{vals[p] - vals['sft']:+.4f}" if math.isfinite(vals[p] - vals["sft"]) else "-")
                               for p in others])
        widths = [max(len(x[i]) for x in [header] + body) for i in range(len(header))]
        lines = [f"== {title}" + (f"  [{tag}]" if tag else "")]
        if fam is not None:
            lines.append(f"   {fam.definition}")
        lines += ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
        lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def plot_strata(result: StratifiedResult, path: Path, title: str) -> Path:
    """One panel per stratification: each RL policy's HR@k minus SFT's per stratum (SFT's HR@k when it is the
    only policy), with the users per stratum; post-hoc panels are titled as such."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hr = f"hr_{result.k}"
    policies = result.policies
    others = [p for p in policies if p != "sft"] if "sft" in policies and len(policies) > 1 else policies
    relative = others is not policies
    rows = result.rows()
    fams = result.families
    ncols = min(3, len(fams))
    nrows = math.ceil(len(fams) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 4.2 * nrows), squeeze=False)
    width = 0.8 / max(1, len(others))
    for ax in axes.flat[len(fams):]:
        ax.axis("off")
    for ax, fam in zip(axes.flat, fams):
        mine = [r for r in rows if r["family"] == fam.key and r["stratum"] != "undefined"]
        x = np.arange(len(mine))
        for j, p in enumerate(others):
            vals = [r["metrics"][p].get(hr, math.nan) - (r["metrics"]["sft"].get(hr, math.nan) if relative else 0.0)
                    for r in mine]
            ax.bar(x + (j - (len(others) - 1) / 2) * width, vals, width, label=p)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(x, [f"{r['stratum']}\n(n={r['users']})" for r in mine], fontsize=7, rotation=30, ha="right")
        ax.set_title(fam.title if fam.pre_outcome else fam.title.upper(), fontsize=8, wrap=True)
        ax.set_ylabel(f"ΔHR@{result.k} vs SFT" if relative else f"HR@{result.k}", fontsize=8)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
