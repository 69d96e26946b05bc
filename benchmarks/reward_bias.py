"""How much does exposure bias flatter a reward model? Train it on biased logs, then compare its ranking
quality on held-out *biased* logs with its quality against an unbiased reference.

* ``--dataset synthetic`` (default): for each α in ``--alphas`` (the logging policy's popularity exponent,
  ``SyntheticSource(exposure_bias=α)`` with :class:`WorldExposure`), train a :class:`RewardModelModule`
  (its defaults) and report: AUC on held-out biased logs, AUC against the world's true utility on
  uniformly random slates, concordance with the truth, discriminability of the true next item vs
  uniform / popular negatives, and the gap ``AUC biased − AUC truth``.
* ``--dataset coat``: Coat's self-selected ratings train the model; AUC on the held-out self-selected
  ratings vs on the randomly assigned ones (liked = rating ≥ 4), overall and by popularity bucket.
* ``--dataset beauty``: Amazon Beauty with simulated exposure (``SimulatedExposure(alpha=1)``);
  AUC on held-out biased logs and discriminability by popularity bucket of the true item.

Results go to ``benchmarks/results/reward_bias_<dataset>.txt`` (``--out`` to change), and the bias report's
plot (AUC and discriminability by popularity bucket, 95% intervals, counts) beside it:
``reward_bias_<dataset>.png``, one per α for the synthetic world (``reward_bias_synthetic_alpha<α>.png``);
``--no-plot`` skips it. Progress bars (SIDs, the report) go to stderr when it is a terminal;
``--quiet`` turns them off.

    python benchmarks/reward_bias.py                          # synthetic, α ∈ {0, 1, 2}
    python benchmarks/reward_bias.py --users 2000 --epochs 2  # smaller / quicker
    python benchmarks/reward_bias.py --dataset coat
    python benchmarks/reward_bias.py --dataset beauty --max-users 8000
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402

from adagrpo import datamodules  # noqa: E402
from adagrpo.datamodules.exposure import CoatExposure, CoatSource, SimulatedExposure, WorldExposure  # noqa: E402
from adagrpo.datamodules.reward_data import RewardDataModule  # noqa: E402
from adagrpo.lightning_modules.bias_report import bias_report, plot_report  # noqa: E402
from adagrpo.lightning_modules.reward import RewardModelModule  # noqa: E402
from adagrpo.progress import set_quiet  # noqa: E402

DEFAULT_EPOCHS = {"synthetic": 3, "coat": 20, "beauty": 3}
DEFAULT_BATCH = {"synthetic": 256, "coat": 128, "beauty": 256}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="synthetic", choices=["synthetic", "coat", "beauty"])
    p.add_argument("--alphas", type=float, nargs="+", default=[0.0, 1.0, 2.0], help="synthetic: exposure biases")
    p.add_argument("--users", type=int, default=5000, help="synthetic: users in the world")
    p.add_argument("--items", type=int, default=2000, help="synthetic: items in the world")
    p.add_argument("--max-users", type=int, default=None,
                   help="beauty: keep only the first N users' sequences (a smaller run)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: 3; coat 20)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: 256; coat 128)")
    p.add_argument("--report-users", type=int, default=2000, help="test users in the bias report")
    p.add_argument("--negatives", type=int, default=10, help="negatives for discriminability")
    p.add_argument("--buckets", type=int, default=5, help="item-popularity buckets")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (1 is fastest for these small ops on a busy 2-core machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=os.environ.get("ADAGRPO_DATA_ROOT", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--out", default=None, help="results file (default benchmarks/results/reward_bias_<dataset>.txt)")
    p.add_argument("--no-plot", action="store_true", help="do not write the bias report's PNG beside the results")
    p.add_argument("--quiet", action="store_true", help="no progress bars on stderr")
    args = p.parse_args(argv)
    args.epochs = args.epochs or DEFAULT_EPOCHS[args.dataset]
    args.batch = args.batch or DEFAULT_BATCH[args.dataset]
    return args


# ---------------------------------------------------------------------------------------------- data
def text_sids(dim: int, cap: bool) -> datamodules.RQKMeansSids:
    """``configs/data/sids/text_small.yaml`` (dim 32, capped) or ``text_256.yaml`` (dim 64, 256 codes)."""
    return datamodules.RQKMeansSids(embeddings=datamodules.TextEmbeddings(dim=dim), levels=3, codebook_size=256,
                                    cap_small_catalogue=cap)


def synthetic_dm(args: argparse.Namespace, alpha: float) -> RewardDataModule:
    """``configs/data/synthetic_reward.yaml`` with ``exposure_bias = α``."""
    return RewardDataModule(
        source=datamodules.SyntheticSource(num_users=args.users, num_items=args.items, exposure_bias=alpha,
                                           seed=args.seed),
        sids=text_sids(32, cap=True), exposure=WorldExposure(), split="leave_one_out", max_history=20,
        batch_size=args.batch, eval_batch_size=512, seed=args.seed)


def coat_dm(args: argparse.Namespace) -> RewardDataModule:
    """``configs/data/coat_reward.yaml``."""
    root = Path(args.data_root) / "coat"
    if not (root / "train.ascii").is_file():
        sys.exit(f"Coat data not found under {root} (set --data-root or ADAGRPO_DATA_ROOT)")
    return RewardDataModule(source=CoatSource(str(root)), sids=text_sids(32, cap=True),
                            exposure=CoatExposure(), split="ratio", max_history=24,
                            batch_size=args.batch, eval_batch_size=512, seed=args.seed)


class _FirstUsers(datamodules.DataSource):
    """A source's first ``n`` users (same catalogue), for a smaller Beauty run."""

    def __init__(self, inner: datamodules.DataSource, n: int) -> None:
        super().__init__(min_length=inner.min_length, on_short=inner.on_short, name=inner.name)
        self.inner, self.n = inner, n

    def cache_key(self) -> dict:
        return {"inner": self.inner.cache_key(), "first_users": self.n}

    def read(self):  # noqa: ANN201
        data, where = self.inner.read()
        n = min(self.n, data.num_users)
        sub = datamodules.Interactions.from_lists(data.name, data.catalog, data.user_ids[:n],
                                                  [data.sequence(u).tolist() for u in range(n)], data.files)
        return sub, where[:n]


def beauty_dm(args: argparse.Namespace) -> RewardDataModule:
    """``configs/data/beauty_reward.yaml``."""
    root = Path(args.data_root) / "amazon_beauty_2014"
    if not (root / "user_sequences.txt").is_file():
        sys.exit(f"Beauty data not found under {root} (set --data-root or ADAGRPO_DATA_ROOT)")
    source = datamodules.SasRecText(
        path=str(root / "user_sequences.txt"), layout="lines",
        items=datamodules.ItemFile(str(root / "items.jsonl"), id_field="asin", keep_fields=["item_id"]),
        min_length=3, name="beauty")
    if args.max_users:
        source = _FirstUsers(source, args.max_users)
    return RewardDataModule(source=source, sids=text_sids(64, cap=False),
                            exposure=SimulatedExposure(alpha=1.0, num_exposed=9, retriever_share=0.5, seed=args.seed),
                            split="leave_one_out", max_history=20, batch_size=args.batch, eval_batch_size=512,
                            seed=args.seed)


# ---------------------------------------------------------------------------------------------- training
def train_and_report(dm: RewardDataModule, args: argparse.Namespace) -> tuple[dict, dict]:
    L.seed_everything(args.seed, verbose=False)
    t0 = time.perf_counter()
    dm.prepare()
    t_data = time.perf_counter() - t0
    module = RewardModelModule(report_users=args.report_users, report_negatives=args.negatives,
                               report_buckets=args.buckets)  # the module's defaults otherwise
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=args.epochs, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, gradient_clip_val=1.0)
    t0 = time.perf_counter()
    trainer.fit(module, dm)
    t_fit = time.perf_counter() - t0
    val_auc = float(trainer.callback_metrics.get("val/auc", math.nan))
    t0 = time.perf_counter()
    module.net.eval()
    report = bias_report(module.net, dm, negatives=args.negatives, buckets=args.buckets,
                         max_users=args.report_users, seed=args.seed)
    t_report = time.perf_counter() - t0
    info = {"events": {k: len(getattr(dm.logs, k)) for k in ("train", "val", "test")},
            "unbiased": len(dm.logs.unbiased) if dm.logs.unbiased is not None else 0,
            "positive_rate": dm.logs.train.positive_rate(), "users": dm.data.num_users, "items": dm.num_items,
            "val_auc": val_auc, "t_data": t_data, "t_fit": t_fit, "t_report": t_report,
            "steps": int(trainer.global_step)}
    return report, info


def fmt(v: float) -> str:
    return "  nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def bucket_row(report: dict, key: str, buckets: int) -> str:
    return " ".join(f"{fmt(report.get(f'{key}/bucket{b}', math.nan)):>6}" for b in range(buckets))


def info_line(info: dict) -> str:
    e = info["events"]
    return (f"users {info['users']}, items {info['items']}, events train/val/test {e['train']}/{e['val']}/{e['test']}"
            + (f", unbiased {info['unbiased']}" if info["unbiased"] else "")
            + f", train positive rate {info['positive_rate']:.3f}, {info['steps']} steps; "
            f"data {info['t_data']:.0f}s, fit {info['t_fit']:.0f}s, report {info['t_report']:.0f}s")


def out_path(args: argparse.Namespace) -> Path:
    return Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"reward_bias_{args.dataset}.txt"


def save_plot(args: argparse.Namespace, report: dict, title: str, suffix: str = "") -> None:
    if args.no_plot:
        return
    txt = out_path(args)
    png = plot_report(report, txt.with_name(f"{txt.stem}{suffix}.png"), title=title)
    print(f"plot written to {png}", flush=True)


def run_synthetic(args: argparse.Namespace) -> list[str]:
    rows, details = [], []
    header = (f"{'alpha':>5} | {'AUC biased':>10} | {'AUC truth':>9} | {'concord.':>8} | {'discr unif':>10} | "
              f"{'discr pop':>9} | {'gap (biased-truth)':>18}")
    for alpha in args.alphas:
        report, info = train_and_report(synthetic_dm(args, alpha), args)
        save_plot(args, report, f"reward model bias — synthetic world ({args.users} users x {args.items} items), "
                                f"exposure bias α = {alpha:g}", f"_alpha{alpha:g}")
        gap = report["auc/biased"] - report["auc/truth"]
        row = (f"{alpha:>5.1f} | {fmt(report['auc/biased']):>10} | {fmt(report['auc/truth']):>9} | "
               f"{fmt(report['concordance/truth']):>8} | {fmt(report['discr/uniform']):>10} | "
               f"{fmt(report['discr/popular']):>9} | {gap:>+18.3f}")
        print(row, flush=True)
        rows.append(row)
        details += [f"alpha {alpha:g}: {info_line(info)}; val AUC {fmt(info['val_auc'])}",
                    f"  max train popularity per bucket: {report['bucket_max_popularity']}",
                    f"  AUC biased    by bucket: {bucket_row(report, 'auc/biased', args.buckets)}",
                    f"  AUC truth     by bucket: {bucket_row(report, 'auc/truth', args.buckets)}",
                    f"  discr uniform by bucket: {bucket_row(report, 'discr/uniform', args.buckets)}",
                    f"  discr popular by bucket: {bucket_row(report, 'discr/popular', args.buckets)}"]
    return [header, "-" * len(header), *rows, "", *details]


def run_coat(args: argparse.Namespace) -> list[str]:
    report, info = train_and_report(coat_dm(args), args)
    save_plot(args, report, "reward model bias — Coat (self-selected vs random exposure)")
    b = args.buckets
    header = f"{'':<28} {'all':>6} | " + " ".join(f"{'b' + str(i):>6}" for i in range(b))
    lines = [header, "-" * len(header)]
    for key, label in (("auc/biased", "AUC self-selected test"), ("auc/unbiased", "AUC random test"),
                       ("discr/uniform", "discr vs uniform"), ("discr/popular", "discr vs popular")):
        lines.append(f"{label:<28} {fmt(report[key]):>6} | {bucket_row(report, key, b)}")
    lines += ["", f"gap (self-selected - random): {report['auc/biased'] - report['auc/unbiased']:+.3f}",
              f"max train popularity per bucket: {report['bucket_max_popularity']}",
              f"discr users per bucket: {[report[f'discr_users/bucket{i}'] for i in range(b)]}",
              info_line(info) + f"; val AUC {fmt(info['val_auc'])}"]
    return lines


def run_beauty(args: argparse.Namespace) -> list[str]:
    report, info = train_and_report(beauty_dm(args), args)
    save_plot(args, report, "reward model bias — Amazon Beauty (simulated exposure)")
    b = args.buckets
    header = f"{'':<26} {'all':>6} | " + " ".join(f"{'b' + str(i):>6}" for i in range(b))
    lines = [header, "-" * len(header)]
    for key, label in (("auc/biased", "AUC held-out biased logs"), ("discr/uniform", "discr vs uniform"),
                       ("discr/popular", "discr vs popular")):
        lines.append(f"{label:<26} {fmt(report[key]):>6} | {bucket_row(report, key, b)}")
    lines += ["", f"discr_auc uniform {fmt(report['discr_auc/uniform'])}, popular {fmt(report['discr_auc/popular'])}",
              f"max train popularity per bucket: {report['bucket_max_popularity']}",
              f"discr users per bucket: {[report[f'discr_users/bucket{i}'] for i in range(b)]}",
              info_line(info) + f"; val AUC {fmt(info['val_auc'])}"]
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.quiet:
        set_quiet()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    run = {"synthetic": run_synthetic, "coat": run_coat, "beauty": run_beauty}[args.dataset]
    body = run(args)
    total = time.perf_counter() - t0
    settings = (f"epochs {args.epochs}, batch {args.batch}, RewardModelModule defaults (dim 64, 2 layers, dot, "
                f"AdamW lr 1e-3), report users {args.report_users}, negatives {args.negatives}, "
                f"buckets {args.buckets} (b0 = least popular items)")
    if args.dataset == "synthetic":
        settings = f"SyntheticSource({args.users} users x {args.items} items, exposure_bias=alpha), WorldExposure; " \
                   + settings
    elif args.dataset == "beauty":
        settings = (f"Beauty{f' (first {args.max_users} users)' if args.max_users else ''}, "
                    "SimulatedExposure(alpha=1, 9 exposed, retriever share 0.5); ") + settings
    else:
        settings = "Coat, CoatSource(test_share=0.2, val_share=0.1), liked = rating >= 4; " + settings
    text = "\n".join([
        f"# reward_bias --dataset {args.dataset}   {datetime.datetime.now():%Y-%m-%d %H:%M}",
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads} threads; total {total:.0f}s",
        f"# {settings}",
        "", *body, ""])
    out = out_path(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
