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

Every number is also given per item-popularity bucket (equal item counts, bucket 0 = least popular), with its
count ``<key>/bucket<b>/n`` (scored impressions for the log AUCs, users otherwise) and standard error
``<key>/bucket<b>/se``: Hanley–McNeil for an AUC over impressions, the standard error of the mean over users for
``auc/truth``, binomial for the ``discr`` shares.
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
from adagrpo.progress import progress


def auc_standard_error(a: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC ``a`` from ``n_pos`` positives and ``n_neg`` negatives."""
    if not (n_pos and n_neg) or math.isnan(a):
        return math.nan
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def _bucket_auc(out: dict[str, Any], key: str, b: int, s: torch.Tensor, y: torch.Tensor) -> None:
    a = auc(s, y)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    out[f"{key}/bucket{b}"] = a
    out[f"{key}/bucket{b}/n"] = int(len(y))
    out[f"{key}/bucket{b}/se"] = auc_standard_error(a, n_pos, n_neg)


def _bucket_share(out: dict[str, Any], key: str, b: int, values: torch.Tensor, binomial: bool) -> None:
    """Mean of ``values`` (per user) with its count and standard error (binomial for 0/1 shares)."""
    n = int(len(values))
    mean = float(values.mean()) if n else math.nan
    if n > 1:
        se = math.sqrt(mean * (1 - mean) / n) if binomial else float(values.double().std() / math.sqrt(n))
    else:
        se = math.nan
    out[f"{key}/bucket{b}"], out[f"{key}/bucket{b}/n"], out[f"{key}/bucket{b}/se"] = mean, n, se


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
    for batch in progress(dm.test_dataloader(), "bias report: held-out logs", unit="batch"):
        s = net(batch.history.to(device), batch.items.to(device), batch.user.to(device)).cpu()
        valid = batch.labels >= 0
        scores.append(s[valid])
        labels.append(batch.labels[valid])
        items.append(batch.items[valid])
    s, y, it = torch.cat(scores), torch.cat(labels), torch.cat(items)
    out["auc/biased"] = auc(s, y)
    for b in range(buckets):
        m = bucket[it] == b
        _bucket_auc(out, "auc/biased", b, s[m], y[m])

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
            _bucket_share(out, "auc/truth", b, per_user[best_bucket == b], binomial=False)
        # Pairwise agreement with the true utility over all random pairs (harder: most pairs are far
        # from anything the logging policy showed).
        i, j = torch.triu_indices(20, 20, 1)
        agree = ((rm[:, i] - rm[:, j]) * (truth[:, i] - truth[:, j]) > 0).float()
        out["concordance/truth"] = float((agree + 0.5 * (rm[:, i] == rm[:, j]).float()).mean())
    if dm.logs.unbiased is not None:
        scores, labels, items = [], [], []
        log = dm.logs.unbiased
        for start in progress(range(0, len(log), 1024), "bias report: random-exposure log", unit="chunk"):
            rows = np.arange(start, min(len(log), start + 1024))
            eb = dm.exposure_batch(log, rows)
            scores.append(net(eb.history.to(device), eb.items.to(device), eb.user.to(device)).cpu().flatten())
            labels.append(eb.labels.flatten())
            items.append(eb.items.flatten())
        s, y, it = torch.cat(scores), torch.cat(labels), torch.cat(items)
        out["auc/unbiased"] = auc(s, y)
        for b in range(buckets):
            m = bucket[it] == b
            _bucket_auc(out, "auc/unbiased", b, s[m], y[m])

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
            _bucket_share(out, f"discr/{name}", b, win[m], binomial=True)
            out[f"discr_users/bucket{b}"] = int(m.sum())
    out["users"] = int(len(targets))
    out["negatives"] = negatives
    return out


def plot_report(report: dict[str, Any], path: str | Path, title: str = "reward model bias") -> Path:
    """Two panels by item-popularity bucket — AUC (left) and discriminability of the true next item (right) —
    with 95% intervals (±1.96 standard errors) and each bar's count above it (impressions or users);
    legends sit below the panels so that no bar is hidden."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = report["buckets"]
    x = np.arange(b)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), layout="constrained")
    series = [("auc/biased", "held-out biased logs", "impressions")] + [
        (k, lab, unit) for k, lab, unit in (("auc/truth", "truth: random slates", "users"),
                                           ("auc/unbiased", "random exposure", "impressions")) if k in report]

    def bars(ax, key: str, offset: float, width: float, label: str) -> None:
        vals = np.array([report.get(f"{key}/bucket{j}", math.nan) for j in range(b)], dtype=float)
        se = np.array([report.get(f"{key}/bucket{j}/se", math.nan) for j in range(b)], dtype=float)
        counts = [report.get(f"{key}/bucket{j}/n") for j in range(b)]
        half = np.where(np.isfinite(se), 1.96 * se, 0.0)
        shown = np.nan_to_num(vals)
        yerr = [np.minimum(half, shown), np.minimum(half, 1.0 - shown)]  # intervals clipped to [0, 1]
        drawn = ax.bar(x + offset, shown, width, yerr=yerr, capsize=2, label=label, error_kw={"lw": 0.8})
        tops = shown + yerr[1]
        for rect, top, count in zip(drawn, tops, counts):  # the count just above the interval
            if count is not None:
                ax.text(rect.get_x() + rect.get_width() / 2, top + 0.015, f"n={count}", rotation=90, ha="center",
                        va="bottom", fontsize=6.5, color="0.3")

    width = 0.8 / len(series)
    for i, (key, label, unit) in enumerate(series):
        bars(axes[0], key, i * width, width, f"{label} (all: {report[key]:.3f}; n = {unit})")
    axes[0].axhline(0.5, color="grey", lw=0.8, ls="--")
    axes[0].set_xticks(x + width * (len(series) - 1) / 2, [f"b{j}\n≤{report['bucket_max_popularity'][j]}"
                                                           for j in range(b)])
    axes[0].set_xlabel("item popularity bucket (max training count)")
    axes[0].set_ylabel("AUC")
    axes[0].set_ylim(0.0, 1.22)
    axes[0].set_yticks(np.linspace(0, 1, 6))
    axes[0].set_title("ranking quality by item popularity")
    axes[0].legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1, frameon=False)
    for i, name in enumerate(("uniform", "popular")):
        bars(axes[1], f"discr/{name}", i * 0.4, 0.4,
             f"vs {report['negatives']} {name} negatives (all: {report[f'discr/{name}']:.3f}; n = users)")
    axes[1].set_xticks(x + 0.2, [f"b{j}" for j in range(b)])
    axes[1].set_xlabel("popularity bucket of the true next item")
    axes[1].set_ylabel("share of users\n(true item above all negatives)")
    axes[1].set_ylim(0.0, 1.22)
    axes[1].set_yticks(np.linspace(0, 1, 6))
    axes[1].set_title("discriminability")
    axes[1].legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1, frameon=False)
    fig.suptitle(f"{title}  (bars: 95% intervals)")
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
