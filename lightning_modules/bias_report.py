"""The reward model's bias report: how well it ranks on the biased logs it was trained on versus on
unbiased data, by item popularity — the evidence that it is reliable on some samples and noisy on others.

* ``auc/biased``: clicked vs exposed-not-clicked on held-out logged impressions;
* ``auc/truth`` (synthetic world): in a slate of uniformly random items (random exposure), the item
  the user truly values most is the positive and the rest negatives — per-user AUC, averaged;
  ``concordance/truth``: the share of all random item pairs ordered as the true utility orders them;
* ``auc/unbiased`` (Coat): liked vs not liked among randomly assigned items;
* ``discr/uniform`` and ``discr/popular``: the share of test users whose true next item the model
  scores above all of N uniformly sampled (or N most popular) negatives; ``discr_auc/*`` the share of
  negatives it beats on average.

Every number is also given per item-popularity bucket (equal item counts, bucket 0 = least popular).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adagrpo.datamodules.reward_data import RewardDataModule
from adagrpo.lightning_modules.metrics import auc


def popularity_buckets(popularity: torch.Tensor, buckets: int) -> torch.Tensor:
    """Bucket per item ``[N]``: items sorted by popularity, cut into ``buckets`` equal-size groups."""
    order = torch.argsort(popularity.double() + torch.linspace(0, 1e-6, len(popularity), dtype=torch.float64))
    bucket = torch.empty(len(popularity), dtype=torch.long)
    bucket[order] = (torch.arange(len(popularity)) * buckets) // len(popularity)
    return bucket


@torch.no_grad()
def bias_report(net: torch.nn.Module, dm: RewardDataModule, negatives: int = 10, buckets: int = 5,
                max_users: int | None = 2000, seed: int = 0) -> dict[str, Any]:
    device = next(net.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    pop = dm.train_popularity()
    bucket = popularity_buckets(pop, buckets)
    n_items = dm.num_items
    out: dict[str, Any] = {"buckets": buckets, "bucket_max_popularity": [
        int(pop[bucket == b].max()) if (bucket == b).any() else 0 for b in range(buckets)]}

    # 1. Held-out biased logs.
    scores, labels, items = [], [], []
    for batch in dm.test_dataloader():
        s = net(batch.history.to(device), batch.items.to(device), batch.user.to(device)).cpu()
        valid = batch.labels >= 0
        scores.append(s[valid])
        labels.append(batch.labels[valid])
        items.append(batch.items[valid])
    s, y, it = torch.cat(scores), torch.cat(labels), torch.cat(items)
    out["auc/biased"] = auc(s, y)
    for b in range(buckets):
        m = bucket[it] == b
        out[f"auc/biased/bucket{b}"] = auc(s[m], y[m])

    # Test users: (user, test position, true item).
    targets = dm.split.test
    if max_users is not None and len(targets) > max_users:
        targets = targets[np.sort(np.random.default_rng(seed).choice(len(targets), max_users, replace=False))]
    batch = dm.prompt_batch(targets)
    hist = batch.history.to(device)
    users = batch.user.to(device)
    true_item = batch.target

    # 2. Unbiased data: the synthetic truth, or Coat's random exposure.
    world = getattr(dm.source, "world", None)
    if world is not None:
        cand = torch.randint(n_items, (len(targets), 20), generator=gen)  # [U, 20] uniformly random items
        rm = net(hist, cand.to(device), users).cpu()  # [U, 20]
        truth = world.utility(batch.user, batch.history[:, -1], cand)  # [U, 20]
        # AUC against the truth: in a random slate, the item the user values most is the positive.
        best = truth.argmax(1, keepdim=True)  # [U, 1]
        pos = rm.gather(1, best)  # [U, 1]
        beats = (pos > rm).float() + 0.5 * (pos == rm).float()  # [U, 20], the positive counts 0.5 vs itself
        per_user = (beats.sum(1) - 0.5) / 19
        out["auc/truth"] = float(per_user.mean())
        best_bucket = bucket[cand.gather(1, best).squeeze(1)]
        for b in range(buckets):
            m = best_bucket == b
            out[f"auc/truth/bucket{b}"] = float(per_user[m].mean()) if m.any() else math.nan
        # Pairwise agreement with the true utility over all random pairs (harder: most pairs are far
        # from anything the logging policy showed).
        i, j = torch.triu_indices(20, 20, 1)
        agree = ((rm[:, i] - rm[:, j]) * (truth[:, i] - truth[:, j]) > 0).float()
        out["concordance/truth"] = float((agree + 0.5 * (rm[:, i] == rm[:, j]).float()).mean())
    if dm.logs.unbiased is not None:
        scores, labels, items = [], [], []
        log = dm.logs.unbiased
        for start in range(0, len(log), 1024):
            rows = np.arange(start, min(len(log), start + 1024))
            eb = dm.exposure_batch(log, rows)
            scores.append(net(eb.history.to(device), eb.items.to(device), eb.user.to(device)).cpu().flatten())
            labels.append(eb.labels.flatten())
            items.append(eb.items.flatten())
        s, y, it = torch.cat(scores), torch.cat(labels), torch.cat(items)
        out["auc/unbiased"] = auc(s, y)
        for b in range(buckets):
            m = bucket[it] == b
            out[f"auc/unbiased/bucket{b}"] = auc(s[m], y[m])

    # 3. Discriminability of the true next item against N negatives.
    top = torch.topk(pop.double(), negatives + 1).indices  # the most popular items
    uniform = torch.randint(n_items, (len(targets), negatives), generator=gen)
    popular = top[None].expand(len(targets), -1)  # [U, N+1]
    # Keep the first N popular items that are not the user's true item.
    keep_first = torch.argsort((popular == true_item[:, None]).long(), dim=1, stable=True)[:, :negatives]
    popular = popular.gather(1, keep_first)  # [U, N]
    tb = bucket[true_item]
    for name, negs in (("uniform", uniform), ("popular", popular)):
        cand = torch.cat([true_item[:, None], negs], 1).to(device)  # [U, 1+N]
        sc = net(hist, cand, users).cpu()
        beats = (sc[:, :1] > sc[:, 1:]).float() + 0.5 * (sc[:, :1] == sc[:, 1:]).float()  # [U, N]
        win = (beats == 1).all(1).float()
        out[f"discr/{name}"] = float(win.mean())
        out[f"discr_auc/{name}"] = float(beats.mean())
        for b in range(buckets):
            m = tb == b
            out[f"discr/{name}/bucket{b}"] = float(win[m].mean()) if m.any() else math.nan
            out[f"discr_users/bucket{b}"] = int(m.sum())
    out["users"] = int(len(targets))
    out["negatives"] = negatives
    return out


def plot_report(report: dict[str, Any], path: str | Path, title: str = "reward model bias") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = report["buckets"]
    x = np.arange(b)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    series = [("auc/biased", "biased logs")] + [(k, lab) for k, lab in (("auc/truth", "truth (random pairs)"),
                                                                        ("auc/unbiased", "random exposure"))
                                                if k in report]
    width = 0.8 / len(series)
    for i, (key, label) in enumerate(series):
        vals = [report.get(f"{key}/bucket{j}", math.nan) for j in range(b)]
        axes[0].bar(x + i * width, vals, width, label=f"{label} (all: {report[key]:.3f})")
    axes[0].axhline(0.5, color="grey", lw=0.8, ls="--")
    axes[0].set_xticks(x + width * (len(series) - 1) / 2, [f"b{j}\n≤{report['bucket_max_popularity'][j]}"
                                                           for j in range(b)])
    axes[0].set_xlabel("item popularity bucket (max training count)")
    axes[0].set_ylabel("AUC")
    axes[0].set_ylim(0.3, 1.0)
    axes[0].legend(fontsize=8)
    axes[0].set_title("ranking quality by item popularity")
    for i, name in enumerate(("uniform", "popular")):
        vals = [report.get(f"discr/{name}/bucket{j}", math.nan) for j in range(b)]
        axes[1].bar(x + i * 0.4, vals, 0.4, label=f"vs {report['negatives']} {name} negatives "
                                                   f"(all: {report[f'discr/{name}']:.3f})")
    axes[1].set_xticks(x + 0.2, [f"b{j}" for j in range(b)])
    axes[1].set_xlabel("popularity bucket of the true next item")
    axes[1].set_ylabel("share of users: true item scored above all negatives")
    axes[1].legend(fontsize=8)
    axes[1].set_title("discriminability")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def log_report(module: Any, report: dict[str, Any]) -> None:
    """Log the report's numbers as ``rm/...`` metrics and the PNG + JSON as MLflow artifacts."""
    scalars = {f"rm/{k}": float(v) for k, v in report.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
    for k, v in scalars.items():
        module.log(k, v)
    from lightning.pytorch.loggers import MLFlowLogger

    trainer = module.trainer
    for lg in trainer.loggers:
        if isinstance(lg, MLFlowLogger):
            with tempfile.TemporaryDirectory() as tmp:
                png = plot_report(report, Path(tmp) / "reward_bias.png", title=f"reward model bias — "
                                  f"{module.data.data.name}")
                js = Path(tmp) / "reward_bias.json"
                js.write_text(json.dumps(report, indent=2))
                lg.experiment.log_artifact(lg.run_id, str(png))
                lg.experiment.log_artifact(lg.run_id, str(js))
