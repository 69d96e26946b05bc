"""``adagrpo compare``: a table of the runs of one MLflow experiment, and the retrieval–validity frontier.

For each run: HR@K / NDCG@K and the unconstrained hallucination rate of the best checkpoint (``test/…``)
and of the final one (``test_last/…``), where logged the true HR@10 (synthetic world), the seen-filtered HR@10s
and the repeat rate, the mean gate open rate and rollout reward over training, and
the balancer/gates that label it. Runs named ``<variant>-s<seed>`` are grouped per variant (mean ± std); of
several runs with one name, the latest counts. With ``paired=<variant>`` a second table gives each variant's
per-seed differences to that baseline (mean ± std over the seeds both ran): the seed moves every variant that
shares a start together, so paired differences separate variants that the unpaired spread hides.
Writes CSVs (the table; the paired table) and a PNG of HR@10 against hallucination, and logs them to MLflow.
"""

from __future__ import annotations

import csv
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from adagrpo.run_config import PARENT_RUN_ENV, TAG_KIND, TAG_SEED, TAG_VARIANT, split_run_name

COLUMNS = [
    ("best HR@10", "test/hr_10"),
    ("best NDCG@10", "test/ndcg_10"),
    ("best halluc.", "test/hallucination"),
    ("final HR@10", "test_last/hr_10"),
    ("final NDCG@10", "test_last/ndcg_10"),
    ("final halluc.", "test_last/hallucination"),
]
#: shown when some run has them: the true utility (synthetic world), the seen-filtered ranking and the repeat rate
SEEN_COLUMNS = [
    ("best true HR@10", "test/true/hr_10"),
    ("final true HR@10", "test_last/true/hr_10"),
    ("best filt. HR@10", "test/filtered/hr_10"),
    ("final filt. HR@10", "test_last/filtered/hr_10"),
    ("best filt. true HR@10", "test/filtered/true/hr_10"),
    ("final filt. true HR@10", "test_last/filtered/true/hr_10"),
    ("best repeat@10", "test/repeat_rate_10"),
    ("final repeat@10", "test_last/repeat_rate_10"),
]
HISTORY_COLUMNS = [("gate open", "gate/open_rate"), ("reward", "reward/mean")]
#: ``adagrpo.kind`` of the runs that report on training runs rather than train (never rows of the table)
REPORT_KINDS = ("comparison", "analysis", "ablation")


class CompareError(RuntimeError):
    """Nothing to compare (no experiment, no runs, a metric no run has)."""


@dataclass
class RunRow:
    name: str
    variant: str
    label: str
    values: dict[str, float] = field(default_factory=dict)
    seed: int | None = None

    @classmethod
    def named(cls, name: str, label: str, values: dict[str, float] | None = None) -> RunRow:
        """A row whose variant and seed come from a ``<variant>-s<seed>`` name (an unseeded name is its variant)."""
        variant, seed = split_run_name(name)
        return cls(name=name, variant=variant, label=label, values=dict(values or {}), seed=seed)

    @classmethod
    def tagged(cls, name: str, tags: dict[str, str], values: dict[str, float] | None = None) -> RunRow:
        """A row whose variant and seed come from the run's ``variant``/``seed`` tags, or, for runs logged before
        those tags existed, from its ``<variant>-s<seed>`` name."""
        row = cls.named(name, label=tags.get("adagrpo.label") or name, values=values)
        if tags.get(TAG_VARIANT):
            row.variant = tags[TAG_VARIANT]
        if str(tags.get(TAG_SEED, "")).lstrip("-").isdigit():
            row.seed = int(tags[TAG_SEED])
        return row


def tracking_uri_default() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")


def search_runs(experiment: str, uri: str) -> pd.DataFrame:
    """``mlflow.search_runs`` of ``experiment`` in the store at ``uri`` (a missing SQLite file is refused, not
    created), newest first, with a ``store`` column."""
    import mlflow
    from mlflow.tracking import MlflowClient
    from mlflow.tracking._tracking_service import utils as tracking_utils

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise CompareError(f"no MLflow store at {uri} (no such file)")
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise CompareError(f"no MLflow experiment named {experiment!r} in {uri} (experiments there: {names or 'none'})")
    with tracking_utils._use_tracking_uri(uri):
        frame = mlflow.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    frame["store"] = uri
    return frame


def latest_runs(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The runs of several stores in one frame; of runs with one name, the latest (whichever store holds it).
    Comparison, analysis and ablation runs (``adagrpo.kind``) are not training runs and are left out."""
    frame = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else None
    if frame is None:
        return pd.DataFrame()
    for col in ("tags.mlflow.runName", f"tags.{TAG_KIND}"):
        if col not in frame:
            frame[col] = None
    frame["name"] = frame["tags.mlflow.runName"].fillna(frame["run_id"])
    frame = frame[~frame[f"tags.{TAG_KIND}"].isin(REPORT_KINDS)]
    frame = frame.sort_values("start_time", ascending=False, kind="stable")
    return frame.drop_duplicates("name", keep="first")  # a rerun of a name (quickstart --force) replaces the older


def collect(experiment: str, tracking_uri: str | None = None, extra_metrics: list[str] | None = None,
            also_from: list[str] | None = None) -> list[RunRow]:
    """One row per finished policy run of ``experiment`` (runs without test metrics are skipped), read from
    ``tracking_uri`` and from the stores in ``also_from`` (e.g. studies run in parallel into separate SQLite
    files); of runs with one name, the latest counts, whichever store holds it. Variant and seed come from the
    runs' tags (their names for older runs)."""
    from mlflow.tracking import MlflowClient

    uris = [tracking_uri or tracking_uri_default(), *(also_from or [])]
    for uri in uris:  # MLflow would create a missing SQLite file: refuse before anything is written
        if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
            raise CompareError(f"no MLflow store at {uri} (no such file)")
    runs = latest_runs([search_runs(experiment, uri) for uri in uris])
    if not len(runs):
        raise CompareError(f"experiment {experiment!r} has no runs yet")
    metric_cols = [c for c in runs.columns if c.startswith("metrics.")]
    evaluated = runs[metric_cols].columns[runs[metric_cols].columns.str.match(r"metrics\.(test|test_last)/hr_")]
    policy_runs = runs[runs[list(evaluated)].notna().any(axis=1)] if len(evaluated) else runs.iloc[0:0]
    if not len(policy_runs):  # e.g. only the reward model, or fits not yet tested
        raise CompareError(f"experiment {experiment!r} has {len(runs)} runs but none has test metrics; "
                           "run `adagrpo test` on them first")
    keys = [k for _, k in COLUMNS + SEEN_COLUMNS] + list(extra_metrics or [])
    tag_cols = [c for c in policy_runs.columns if c.startswith("tags.")]
    clients: dict[str, MlflowClient] = {}
    rows = []
    for rec in policy_runs.to_dict("records"):
        tags = {c[len("tags."):]: v for c in tag_cols if isinstance(v := rec.get(c), str)}
        values = {k: float(rec[f"metrics.{k}"]) for k in keys
                  if f"metrics.{k}" in rec and rec[f"metrics.{k}"] is not None and not pd.isna(rec[f"metrics.{k}"])}
        row = RunRow.tagged(rec["name"], tags, values)
        client = clients.setdefault(rec["store"], MlflowClient(tracking_uri=rec["store"]))
        for _, key in HISTORY_COLUMNS:  # over training, not the last value
            history = client.get_metric_history(rec["run_id"], key)
            if history:
                row.values[key] = statistics.fmean(h.value for h in history)
        rows.append(row)
    for key in extra_metrics or []:
        if not any(key in r.values for r in rows):
            have = sorted({k for r in rows for k in r.values})
            raise CompareError(f"no run of {experiment!r} has metric {key!r} (metrics present: {have})")
    return rows


def runs_frame(rows: list[RunRow]) -> pd.DataFrame:
    """One line per run: ``name, variant, label, seed`` and a column per metric."""
    return pd.DataFrame([{"name": r.name, "variant": r.variant, "label": r.label, "seed": r.seed, **r.values}
                         for r in rows])


def aggregate(rows: list[RunRow], keys: list[str]) -> list[dict]:
    """Group runs by variant: mean, std and count of every key (non-finite values left out)."""
    frame = runs_frame(rows)
    for key in keys:
        frame[key] = pd.to_numeric(frame[key], errors="coerce") if key in frame else math.nan
    finite = frame[keys].where(np.isfinite(frame[keys].astype(float)))
    grouped = finite.groupby(frame["variant"], sort=False)
    mean, std, count = grouped.mean(), grouped.std(ddof=1), grouped.count()
    out = []
    for variant, members in frame.groupby("variant", sort=False):
        entry: dict = {"variant": variant, "label": members["label"].iloc[0], "runs": len(members)}
        for key in keys:
            n = int(count.at[variant, key])
            entry[key] = float(mean.at[variant, key]) if n else math.nan
            entry[f"{key}:std"] = float(std.at[variant, key]) if n > 1 else (0.0 if n else math.nan)
            entry[f"{key}:n"] = n
        out.append(entry)
    order = {"sft": 0}
    out.sort(key=lambda e: (order.get(e["variant"], 1), e["variant"]))
    return out


def pairs_by_variant(rows: list[RunRow], baseline: str) -> dict[str, list[tuple[RunRow, RunRow]]]:
    """``variant → [(run, its baseline run), …]`` for every other variant. Runs pair by seed; a baseline of one run
    without a seed suffix (e.g. the SFT checkpoint every RL run starts from) pairs with every run. A baseline mixing
    seeded and unseeded runs is refused (which one would pair is ambiguous)."""
    base = [r for r in rows if r.variant == baseline]
    if not base:
        variants = sorted({r.variant for r in rows})
        raise CompareError(f"--paired {baseline!r}: no such variant (variants: {variants})")
    unseeded = [r.name for r in base if r.seed is None]
    if unseeded and len(base) > 1:
        raise CompareError(f"--paired {baseline!r}: its runs {sorted(r.name for r in base)} mix seeded and unseeded "
                           f"names; pair with a variant whose runs are all <variant>-s<seed>, or with a single run")
    shared = base[0] if unseeded else None
    by_seed = {r.seed: r for r in base if r.seed is not None}
    groups: dict[str, list[tuple[RunRow, RunRow]]] = {}
    for r in rows:
        if r.variant == baseline:
            continue
        partner = shared or by_seed.get(r.seed)
        groups.setdefault(r.variant, [])
        if partner is not None:
            groups[r.variant].append((r, partner))
    return dict(sorted(groups.items()))


def differences(pairs: list[tuple[RunRow, RunRow]], key: str) -> list[tuple[int | None, float]]:
    """``(seed, run − baseline)`` of ``key`` over the pairs where both values are finite."""
    return [(a.seed, a.values[key] - b.values[key]) for a, b in pairs
            if math.isfinite(a.values.get(key, math.nan)) and math.isfinite(b.values.get(key, math.nan))]


def paired(rows: list[RunRow], baseline: str, keys: list[str]) -> list[dict]:
    """Per-seed differences ``variant − baseline`` for every other variant (:func:`pairs_by_variant`): mean, std
    and the number of pairs (``runs``; ``<key>:n`` where a metric is missing from some pairs) of each key."""
    out = []
    for variant, pairs in pairs_by_variant(rows, baseline).items():
        entry: dict = {"variant": variant, "label": pairs[0][0].label if pairs else variant, "runs": len(pairs)}
        for key in keys:
            diffs = [d for _, d in differences(pairs, key)]
            entry[key] = statistics.fmean(diffs) if diffs else math.nan
            entry[f"{key}:std"] = statistics.stdev(diffs) if len(diffs) > 1 else (0.0 if diffs else math.nan)
            entry[f"{key}:n"] = len(diffs)
        out.append(entry)
    return out


def format_value(value: float, std: float | None = None, signed: bool = False, digits: int = 4) -> str:
    """A number as the table prints it. Alone: ``digits`` significant figures (``0.09412``, ``0.5000``). With a
    spread: the spread to two significant figures and the mean to the same decimal place (``0.0941±0.0032``,
    ``0.000412±0.000031``), so a small spread never prints as ``±0.0000``; an exact zero spread prints ``±0``."""
    if not math.isfinite(value):
        return "-"
    sign = "+" if signed and value >= 0 else ""
    if std is None or not math.isfinite(std):
        return sign + _sig(value, digits)
    if std == 0:
        return f"{sign}{_sig(value, digits)}±0"
    decimals = max(0, 1 - math.floor(math.log10(abs(std))))
    if decimals > 10:  # a spread far below the value's own precision: scientific notation
        return f"{sign}{_sig(value, digits)}±{std:.1e}"
    return f"{sign}{value:.{decimals}f}±{std:.{decimals}f}"


def _sig(value: float, digits: int) -> str:
    text = f"{value:#.{digits}g}"
    return text.rstrip(".") if "e" not in text else text


def format_table(entries: list[dict], keys: list[tuple[str, str]], signed: bool = False) -> str:
    def cell(e: dict, key: str) -> str:
        spread = e.get(f"{key}:std", math.nan) if e.get(f"{key}:n", e["runs"]) > 1 else None
        return format_value(e.get(key, math.nan), spread, signed)

    header = ["variant", "pairs" if signed else "runs"] + [title for title, _ in keys]
    body = [[e["variant"], str(e["runs"])] + [cell(e, k) for _, k in keys] for e in entries]
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(lines)


def write_csv(entries: list[dict], keys: list[tuple[str, str]], path: Path, count: str = "runs") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["variant", "label", count] + [k for _, k in keys] + [f"{k}:std" for _, k in keys])
        for e in entries:
            w.writerow([e["variant"], e["label"], e["runs"]] + [e.get(k) for _, k in keys]
                       + [e.get(f"{k}:std") for _, k in keys])
    return path


def plot_frontier(entries: list[dict], path: Path, title: str) -> Path:
    """HR@10 against unconstrained hallucination (best checkpoint filled, final checkpoint hollow), error bars the
    seeds' std. One name per variant (the legend; no annotations to overlap). When the hallucination rates span
    more than a decade (pure GRPO's next to the NLL-anchored variants'), the x axis is logarithmic (symlog: a rate
    of 0 stays on the axis), so the anchored variants do not collapse into one corner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    xs = []
    markers = "osD^vP*Xhp"
    for i, e in enumerate(entries):
        color, marker = f"C{i % 10}", markers[(i // 10) % len(markers)]
        for prefix, filled in (("test", True), ("test_last", False)):
            x, y = e.get(f"{prefix}/hallucination", math.nan), e.get(f"{prefix}/hr_10", math.nan)
            if math.isfinite(x) and math.isfinite(y):
                xs.append(x)
                xerr, yerr = e.get(f"{prefix}/hallucination:std") or 0, e.get(f"{prefix}/hr_10:std") or 0
                n = e.get(f"{prefix}/hr_10:n", e["runs"])
                ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=marker, color=color, mfc=color if filled else "white",
                            capsize=2, label=(f"{e['variant']} (n={n})" if n > 1 else e["variant"]) if filled else None)
    linthresh = log_threshold(xs)
    scale = ""
    if linthresh is not None:
        ax.set_xscale("symlog", linthresh=linthresh, linscale=0.5)
        scale = ", log scale"
    ax.set_xlabel(f"hallucination rate (unconstrained decoding{scale}) → lower is better")
    ax.set_ylabel("HR@10 (constrained beam search) → higher is better")
    ax.set_title(title + "\nfilled: best checkpoint, hollow: final; bars: std over seeds", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def log_threshold(xs: list[float]) -> float | None:
    """Where the frontier's symlog x axis turns linear (half the smallest positive rate), or ``None`` for a linear
    axis: the positive rates span at most a decade."""
    positive = [x for x in xs if x > 0]
    if positive and max(positive) / min(positive) > 10:
        return min(positive) / 2
    return None


def plot_paired(rows: list[RunRow], baseline: str, keys: list[tuple[str, str]], path: Path, title: str) -> Path:
    """Each variant minus ``baseline``, per seed (dots) with the mean and its 95 % t-interval (bar), one panel per
    metric: the seed moves every variant together, so this is where differences between variants show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    groups = pairs_by_variant(rows, baseline)
    keys = [(t, k) for t, k in keys if any(differences(p, k) for p in groups.values())]
    variants = [v for v, p in groups.items() if p]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(3.2 * max(1, len(keys)) + 1.5,
                                                              0.45 * len(variants) + 1.6), sharey=True, squeeze=False)
    for ax, (key_title, key) in zip(axes[0], keys or [("", "")]):
        for i, variant in enumerate(variants):
            diffs = differences(groups[variant], key) if key else []
            values = [d for _, d in diffs]
            if not values:
                continue
            jitter = [(j - (len(values) - 1) / 2) * 0.08 for j in range(len(values))]
            ax.scatter(values, [i + dj for dj in jitter], s=14, color=f"C{i % 10}", alpha=0.7, zorder=3)
            mean = statistics.fmean(values)
            if len(values) > 1:
                half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
                ax.errorbar(mean, i, xerr=half, fmt="|", color="black", markersize=12, capsize=3, zorder=4)
            else:
                ax.plot(mean, i, "|", color="black", markersize=12, zorder=4)
        ax.axvline(0, color="grey", lw=1, ls="--")
        ax.set_title(key_title, fontsize=9)
        ax.grid(alpha=0.3, axis="x")
        ax.set_xlabel(f"variant − {baseline}", fontsize=8)
    axes[0][0].set_yticks(range(len(variants)), variants, fontsize=8)
    axes[0][0].invert_yaxis()
    fig.suptitle(title + "\ndots: seeds; bar: mean with 95 % t-interval", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def run_compare(experiment: str, tracking_uri: str | None = None, out_dir: str | None = None,
                metrics: list[str] | None = None, log_to_mlflow: bool = True,
                paired_with: str | None = None, also_from: list[str] | None = None) -> tuple[str, list[Path], Path]:
    """The printed table(s), the CSVs written (``compare.csv``, then ``compare_paired_<variant>.csv``) and the
    frontier plot."""
    rows = collect(experiment, tracking_uri, metrics, also_from)
    columns = COLUMNS + [c for c in SEEN_COLUMNS if any(c[1] in r.values for r in rows)]
    keys = columns + HISTORY_COLUMNS + [(m, m) for m in metrics or []]
    entries = aggregate(rows, [k for _, k in keys])
    table = format_table(entries, keys)
    diff_keys = columns + [(m, m) for m in metrics or []]
    diffs = paired(rows, paired_with, [k for _, k in diff_keys]) if paired_with is not None else None  # may raise
    out = Path(out_dir) if out_dir else Path(os.environ.get("ADAGRPO_RUNS", "runs")) / experiment
    outputs = [write_csv(entries, keys, out / "compare.csv")]
    if diffs is not None:
        unpaired = sorted(e["variant"] for e in diffs if e["runs"] == 0)
        diffs = [e for e in diffs if e["runs"] > 0]
        table += (f"\n\npaired with {paired_with}: per-seed differences (variant − {paired_with}), mean ± std over "
                  f"pairs\n" + format_table(diffs, diff_keys, signed=True))
        if unpaired:
            table += f"\nno run shares a seed with {paired_with}: {', '.join(unpaired)}"
        outputs.append(write_csv(diffs, diff_keys, out / f"compare_paired_{paired_with}.csv", count="pairs"))
    png_path = plot_frontier(entries, out / "frontier.png", f"retrieval–validity frontier: {experiment}")
    if diffs:
        dot_keys = [k for k in diff_keys if k[1] in ("test/hr_10", "test/true/hr_10", "test/hallucination",
                                                     "test_last/hr_10", "test_last/true/hr_10")]
        outputs.append(plot_paired(rows, paired_with, dot_keys, out / f"paired_{paired_with}.png",
                                   f"paired differences to {paired_with}: {experiment}"))
    if log_to_mlflow:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri or tracking_uri_default())
        mlflow.set_experiment(experiment)
        # its own kind of run (not a training run; compare skips it), nested under the ablation that ran it
        tags = {TAG_KIND: "comparison"}
        if os.environ.get(PARENT_RUN_ENV):
            tags["mlflow.parentRunId"] = os.environ[PARENT_RUN_ENV]
        with mlflow.start_run(run_name="compare", tags=tags):
            for path in [*outputs, png_path]:
                mlflow.log_artifact(str(path))
            mlflow.log_params({"paired_with": paired_with or "", "stores": len(also_from or []) + 1})
    return table, outputs, png_path
