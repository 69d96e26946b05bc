"""The stratified reward–utility analysis: where does RL help?

Test users are classified by the **SFT policy's** difficulty (is the ground truth its top-1 among a
rollout group?) and the **reward model's** discriminability (does it score the ground truth above the
group's negatives?) — the same diagnostics AdaGRPO's gates read. HR@10 is then compared per stratum
between SFT and the RL-tuned policies. AdaGRPO's premise is that RL gains concentrate in the
"uncertain policy × discriminative reward" cell and that RL hurts where the reward model is noisy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from adagrpo.datamodules.sequence import SeqRecDataModule
from adagrpo.lightning_modules.base import CKPT_KEY, check_signature
from adagrpo.lightning_modules.decoding import DecodingConfig, DecodingEngine, candidate_logits, token_logprobs
from adagrpo.lightning_modules.diagnostics import Diagnostics, compute_diagnostics
from adagrpo.lightning_modules.policy import spec_from_description
from adagrpo.lightning_modules.reward import RewardModel

STRATA = ("certain·noisy", "certain·discriminative", "uncertain·noisy", "uncertain·discriminative")


def load_policy(checkpoint: str, dm: SeqRecDataModule) -> nn.Module:
    """The policy of an SFT or GRPO checkpoint, checked against the data's SIDs, in eval mode."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
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
             constrained: bool = True) -> Diagnostics:
    """Roll out ``group`` beams with ``policy`` and compute the gates' diagnostics for ``batch``."""
    cands = engine.generate(policy, batch.prompt_ids, batch.prompt_mask, batch.position_ids,
                            DecodingConfig("beam", group, constrained))
    everything = torch.cat([cands.tokens, batch.target_tokens[:, None]], 1)
    logits = candidate_logits(policy, batch.prompt_ids, batch.prompt_mask, batch.position_ids, everything)
    lp = token_logprobs(logits, everything, engine, constrained).sum(2)  # [B, G+1]
    rewards = reward.score(batch.history, cands.items, batch.user)
    gt_reward = reward.score(batch.history, batch.target[:, None], batch.user)[:, 0]
    return compute_diagnostics(cands.items, cands.valid, lp[:, :group], batch.target, lp[:, group],
                               rewards.float(), gt_reward.float())


@dataclass
class StratifiedResult:
    strata: np.ndarray  # [U] stratum index per test user
    hits: dict[str, np.ndarray]  # policy name -> [U] hit@K (0/1)
    k: int

    def table(self) -> list[dict]:
        rows = []
        for s, name in enumerate(STRATA):
            m = self.strata == s
            row = {"stratum": name, "users": int(m.sum())}
            for policy, h in self.hits.items():
                row[policy] = float(h[m].mean()) if m.any() else math.nan
            rows.append(row)
        row = {"stratum": "all", "users": int(len(self.strata))}
        row.update({p: float(h.mean()) for p, h in self.hits.items()})
        rows.append(row)
        return rows


@torch.no_grad()
def stratified_analysis(dm: SeqRecDataModule, sft: nn.Module, policies: dict[str, nn.Module], reward: RewardModel,
                        k: int = 10, group: int = 16, difficulty_rank: float = 2.0, auc_threshold: float = 0.8,
                        max_users: int | None = None, batch_size: int = 128, progress: bool = True) -> StratifiedResult:
    """Strata from the SFT policy + reward model on the test users; HR@k per stratum per policy."""
    engine = DecodingEngine(dm.trie, dm.vocab)
    targets = dm.split.test
    if max_users is not None and len(targets) > max_users:
        targets = targets[np.sort(np.random.default_rng(0).choice(len(targets), max_users, replace=False))]
    reward.attach(dm)
    strata, hits = [], {name: [] for name in policies}
    starts = range(0, len(targets), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="stratified analysis", unit="batch")
    for start in starts:
        batch = dm.prompt_batch(targets[start:start + batch_size])
        diag = diagnose(sft, engine, reward, batch, group)
        uncertain = diag.gt_rank >= difficulty_rank
        discriminative = torch.nan_to_num(diag.rm_auc, nan=-1.0) >= auc_threshold
        strata.append((2 * uncertain.long() + discriminative.long()).numpy())
        for name, policy in policies.items():
            cands = engine.generate(policy, batch.prompt_ids, batch.prompt_mask, batch.position_ids,
                                    DecodingConfig("beam", max(k, 20), True))
            hits[name].append((cands.items[:, :k] == batch.target[:, None]).any(1).float().numpy())
    return StratifiedResult(np.concatenate(strata), {n: np.concatenate(h) for n, h in hits.items()}, k)


def format_strata(rows: list[dict], policies: list[str], k: int) -> str:
    header = ["stratum", "users"] + [f"{p} HR@{k}" for p in policies]
    if "sft" in policies:
        header += [f"{p} − sft" for p in policies if p != "sft"]
    body = []
    for r in rows:
        cells = [r["stratum"], str(r["users"])] + [f"{r[p]:.4f}" if math.isfinite(r[p]) else "-" for p in policies]
        if "sft" in policies:
            cells += [f"{r[p] - r['sft']:+.4f}" if math.isfinite(r[p]) else "-" for p in policies if p != "sft"]
        body.append(cells)
    widths = [max(len(x[i]) for x in [header] + body) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    return "\n".join(lines + ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body])


def plot_strata(rows: list[dict], policies: list[str], path: Path, k: int, title: str) -> Path:
    """Heatmaps (policy difficulty × reward discriminability) of each RL policy's HR@k minus SFT's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [p for p in policies if p != "sft"] or policies
    fig, axes = plt.subplots(1, len(others), figsize=(4.2 * len(others), 3.8), squeeze=False)
    by = {r["stratum"]: r for r in rows}
    for ax, p in zip(axes[0], others):
        grid = np.full((2, 2), np.nan)
        ann = [["", ""], ["", ""]]
        for s, name in enumerate(STRATA):
            i, j = s // 2, s % 2
            r = by[name]
            base = r.get("sft", 0.0) if p != "sft" else 0.0
            grid[i, j] = r[p] - base if math.isfinite(r[p]) else np.nan
            ann[i][j] = f"{grid[i, j]:+.3f}\n(n={r['users']})"
        lim = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
        ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim)
        for i in range(2):
            for j in range(2):
                ax.text(j, i, ann[i][j], ha="center", va="center", fontsize=9)
        ax.set_xticks([0, 1], ["RM noisy", "RM discriminative"])
        ax.set_yticks([0, 1], ["policy certain", "policy uncertain"])
        ax.set_title(f"{p}: ΔHR@{k} vs SFT" if p != "sft" else f"SFT HR@{k}")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
