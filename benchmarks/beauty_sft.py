"""Beauty SFT (issue 14): the semantic-ID comparison at equal budget and the recipe's learning curve, as ordinary
``adagrpo fit``/``test`` runs driven by a resumable runner.

    ADAGRPO_DATA_ROOT=../shared/data python -m benchmarks.beauty_sft plan          # stages and commands
    ADAGRPO_DATA_ROOT=../shared/data python -m benchmarks.beauty_sft run sids      # SID kinds, equal budget
    ADAGRPO_DATA_ROOT=../shared/data python -m benchmarks.beauty_sft run recipe    # configs/experiments/beauty_sft.yaml
    ADAGRPO_DATA_ROOT=../shared/data python -m benchmarks.beauty_sft run industrial  # the same recipe, Industrial data
    python -m benchmarks.beauty_sft report                                         # tables + learning-curve PNG

Every stage is the shipped recipe (``configs/experiments/beauty_sft.yaml``); the SID comparison changes only the
``sids`` entry and cuts training to ``--sid-steps`` optimizer steps (its warmup-cosine schedule spans those steps),
validating every ``--sid-steps``/3 steps and testing on a seeded subset of ``--sid-test-users`` users. The recipe is
tested on all 22,363 users (full catalogue, constrained beam search, no seen-item filtering: the protocol of TIGER's
table, which ranks the whole catalogue). ``industrial`` runs the recipe unchanged except for its data (the
Industrial_and_Scientific source and the same kind of SIDs, ``--industrial-sids``), into experiment
``industrial-sft``, tested on all users.

Resumable: a stage whose ``runs/beauty-sft/<stage>/tested.json`` exists is skipped; an interrupted fit (its
``running.json`` is there) continues with ``adagrpo fit --resume``; a fitted but untested stage is only tested. Each
finished stage appends one line (metrics, validation history with wall-clock, SID statistics, load average,
commit) to ``benchmarks/results/beauty_sft/results.jsonl``; ``report`` reads only that file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "beauty_sft"
EXPERIMENT = "beauty-sft"
RECIPE = "configs/experiments/beauty_sft.yaml"
#: SID kinds compared at equal budget: the project's text RQ-KMeans and collaborative RQ-KMeans SIDs (built here),
#: and two of the precomputed indexes shipped with the dataset (TIGER-style RQ-VAE and LETTER, collisions removed).
SID_KINDS = {
    "text_rqkmeans": "configs/data/sids/text_256.yaml",
    "collab_rqkmeans": "configs/data/sids/collaborative_256.yaml",
    "rqvae_zcr": "configs/data/sids/beauty_rqvae_zcr.yaml",
    "letter_zcr": "configs/data/sids/beauty_letter_zcr.yaml",
}
#: Published Beauty numbers (leave-one-out, full ranking), for the report only.
PUBLISHED = {
    "TIGER (Rajput et al., NeurIPS 2023, Table 2)": (0.0648, 0.0384),
    "LC-Rec (Zheng et al., ICDE 2024)": (0.0791, 0.0438),
    "XiaoLongtaoo/TIGER reproduction (README)": (0.0594, 0.0321),
}
PAUSE_MIN = 10  # minutes without a logged training or validation point: the fit was not running
TEST_METRICS = ("test/hr_5", "test/hr_10", "test/ndcg_5", "test/ndcg_10", "test/hallucination",
                "test/repeat_rate_10", "test/popular/hr_10", "test/popular/ndcg_10")


@dataclass
class Stage:
    name: str
    sids: str | None  # None: the recipe's own
    overrides: list[str] = field(default_factory=list)
    experiment: str = EXPERIMENT

    def fit_cmd(self) -> list[str]:
        cmd = ["fit", "--config", RECIPE, "--experiment", self.experiment, "--run_name", self.name]
        if self.sids:
            cmd += ["--data.init_args.sids", self.sids]
        return cmd + self.overrides

    def test_cmd(self) -> list[str]:
        return ["test", *self.fit_cmd()[1:]]


def plan(sid_steps: int, sid_test_users: int, sid_val_users: int,
         industrial_sids: str = "configs/data/sids/industrial_letter_zcr.yaml") -> dict[str, list[Stage]]:
    val_every = max(1, sid_steps // 3)
    cut = ["--trainer.max_steps", str(sid_steps), "--trainer.val_check_interval", str(val_every),
           "--data.init_args.max_eval_samples", str(sid_val_users),
           "--data.init_args.max_test_samples", str(sid_test_users),
           "--model.init_args.scheduler.init_args.warmup_steps", str(max(1, sid_steps // 6))]
    sids = [Stage(f"sid-{kind}-{sid_steps}", path, cut) for kind, path in SID_KINDS.items()]
    industrial = Stage("recipe", industrial_sids, ["--data.init_args.source", "configs/data/sources/industrial.yaml"],
                       experiment="industrial-sft")
    # the recipe with more regularisation (attention dropout 0.1, weight decay 0.1): pre-registered in
    # benchmarks/results/beauty_sft.md after the recipe's validation HR@10 peaked at step 1,400 while its training NLL
    # kept falling (memorisation)
    regularized = Stage("recipe-reg", None, ["--model.init_args.policy.init_args.dropout", "0.1",
                                             "--model.init_args.optimizer.init_args.weight_decay", "0.1"])
    return {"sids": sids, "recipe": [Stage("recipe", None)], "regularized": [regularized], "industrial": [industrial]}


def _run(cmd: list[str], log: Path) -> None:
    with log.open("a") as fh:
        fh.write(f"\n$ adagrpo {' '.join(cmd)}  # {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        fh.flush()
        code = subprocess.call([sys.executable, "-m", "adagrpo", *cmd], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    if code:
        raise RuntimeError(f"exit {code}: adagrpo {' '.join(cmd[:8])} … (log {log})")


def _sid_stats(stage: Stage) -> dict:
    """Collision rate (before the dedup level) and per-level codebook use of the stage's SIDs."""
    from adagrpo.data_loading import load_datamodule

    over = ["--data.init_args.sids", stage.sids] if stage.sids else []
    pairs = list(zip(stage.overrides[::2], stage.overrides[1::2]))
    over += [x for key, value in pairs if key == "--data.init_args.source" for x in (key, value)]
    recipe = ROOT / RECIPE
    dm = load_datamodule(str(recipe), over) if over else load_datamodule(str(recipe))
    rep = dm.report()
    sids = rep["sids"]
    return {"depth": rep["sid_depth"], "codebook_sizes": rep["codebook_sizes"], "vocab": rep["vocab_size"],
            "collision_rate": sids.get("collision_rate"), "max_collision": sids.get("max_collision"),
            "levels": sids.get("levels"), "dedup_level_added": sids.get("dedup_level_added")}


def _metrics(run_dir: Path) -> dict:
    from mlflow.tracking import MlflowClient

    record = json.loads((run_dir / "latest.json").read_text())
    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    run = client.get_run(record["mlflow_run_id"])
    start = run.info.start_time
    series = {key: client.get_metric_history(run.info.run_id, key) for key in ("val/hr_10", "val/ndcg_10", "loss/nll")}
    # a fit killed and resumed later (the same MLflow run) has a gap in its timestamps: its minutes count only the
    # time it ran, every pause longer than PAUSE_MIN between two logged points removed
    stamps = sorted(p.timestamp for key in ("loss/nll", "val/hr_10") for p in series[key])
    pauses = [(a, b) for a, b in zip(stamps, stamps[1:]) if b - a > PAUSE_MIN * 60000]

    def active(ts: int) -> float:
        return round((ts - start - sum(min(b, ts) - a for a, b in pauses if a < ts)) / 60000, 2)

    history = {key: [(p.step, active(p.timestamp), p.value) for p in points if math.isfinite(p.value)]
               for key, points in series.items()}
    metrics = {k: v for k, v in run.data.metrics.items() if k in TEST_METRICS}
    return {"test": metrics, "history": history, "global_step": record.get("global_step"),
            "best_score": record.get("best_score"), "best": Path(record["best"]).name,
            "fit_minutes": round((run.info.end_time - start) / 60000, 1) if run.info.end_time else None,
            "fit_active_minutes": round(active(run.info.end_time), 1) if run.info.end_time else None,
            "paused_minutes": round(sum(b - a for a, b in pauses) / 60000, 1)}


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "")


def run_stage(stage: Stage, runs: Path, refresh: bool = False) -> dict | None:
    run_dir = runs / stage.experiment / stage.name
    done = run_dir / "tested.json"
    if done.exists() and refresh:  # re-read the finished stage's metrics (e.g. after a change to _metrics)
        result = {**json.loads(done.read_text()), **_metrics(run_dir), "refreshed": time.strftime("%Y-%m-%dT%H:%M")}
        done.write_text(json.dumps(result, indent=1))
        with (RESULTS / "results.jsonl").open("a") as fh:
            fh.write(json.dumps(result) + "\n")
        print(f"[{stage.name}] refreshed: {done}", flush=True)
        return result
    if done.exists():
        print(f"[{stage.name}] done: {done}", flush=True)
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "log.txt"
    t0 = time.time()
    load0 = os.getloadavg()[0]
    if not (run_dir / "latest.json").exists() or (run_dir / "running.json").exists():
        resume = ["--resume"] if (run_dir / "running.json").exists() else []
        print(f"[{stage.name}] fit{' (resume)' if resume else ''} … log {log}", flush=True)
        _run(stage.fit_cmd() + resume, log)
    if "test/hr_10" not in _metrics(run_dir)["test"]:  # a stage interrupted after its test is not tested again
        print(f"[{stage.name}] test …", flush=True)
        _run(stage.test_cmd(), log)
    result = {"stage": stage.name, "experiment": stage.experiment, "sids": stage.sids or "recipe",
              "overrides": stage.overrides,
              "commit": _commit(), "threads": os.environ.get("OMP_NUM_THREADS"),
              "load_avg_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)],
              "wall_minutes_this_session": round((time.time() - t0) / 60, 1),
              **_metrics(run_dir), "sid_stats": _sid_stats(stage)}
    done.write_text(json.dumps(result, indent=1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / "results.jsonl").open("a") as fh:
        fh.write(json.dumps(result) + "\n")
    print(f"[{stage.name}] test HR@10 {result['test'].get('test/hr_10')}", flush=True)
    return result


def load_results() -> dict[str, dict]:
    path = RESULTS / "results.jsonl"
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                exp = rec.get("experiment", EXPERIMENT)
                key = rec["stage"] if exp == EXPERIMENT else f"{exp}/{rec['stage']}"
                out[key] = rec  # a later line supersedes
    return out


def _fmt(x: float | None, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def report() -> str:
    results = load_results()
    lines = ["| SIDs | depth | collision rate (before dedup) | codebook use per level | val HR@10 (steps) | "
             "test HR@10 | test NDCG@10 | users |", "|---|---|---|---|---|---|---|---|"]
    for name, rec in results.items():
        if not name.startswith("sid-"):
            continue
        st = rec["sid_stats"]
        use = " / ".join(f"{lv['used']}/{lv['codebook_size']}" for lv in (st.get("levels") or []))
        val = rec["history"].get("val/hr_10", [])
        curve = ", ".join(f"{v:.4f} ({s})" for s, _, v in val)
        users = next((o for i, o in enumerate(rec["overrides"]) if i and rec["overrides"][i - 1].endswith(
            "max_test_samples")), "all")
        lines.append(f"| {name} | {st['depth']} | {_fmt(st.get('collision_rate'), 3)} | {use} | {curve} | "
                     f"{_fmt(rec['test'].get('test/hr_10'))} | {_fmt(rec['test'].get('test/ndcg_10'))} | {users} |")
    if "recipe" in results:
        rec = results["recipe"]
        t = rec["test"]
        lines += ["", "| model | HR@5 | HR@10 | NDCG@5 | NDCG@10 |", "|---|---|---|---|---|",
                  f"| adagrpo recipe (step {rec['global_step']}, {rec['fit_minutes']} min fit) | "
                  f"{_fmt(t.get('test/hr_5'))} | {_fmt(t.get('test/hr_10'))} | {_fmt(t.get('test/ndcg_5'))} | "
                  f"{_fmt(t.get('test/ndcg_10'))} |"]
        lines += [f"| {k} | | {r:.4f} | | {n:.4f} |" for k, (r, n) in PUBLISHED.items()]
    text = "\n".join(lines)
    _plot(results)
    return text


def _plot(results: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for name, rec in results.items():
        if rec.get("experiment", EXPERIMENT) != EXPERIMENT:  # another dataset (Industrial): not on Beauty's axes
            continue
        for ax, key in zip(axes, ("val/hr_10", "val/ndcg_10")):
            pts = rec["history"].get(key, [])
            if pts:
                line, = ax.plot([m for _, m, _ in pts], [v for _, _, v in pts], marker="o", ms=3, label=name)
                test = rec["test"].get(key.replace("val/", "test/"))
                if test is not None:  # the tested (best) checkpoint's test value, at the end of its curve
                    ax.plot([pts[-1][1]], [test], marker="*", ms=11, color=line.get_color(), ls="none")
    for ax, key, ref in zip(axes, ("HR@10", "NDCG@10"), (0.0648, 0.0384)):
        ax.axhline(ref, color="grey", ls="--", lw=1, label="TIGER (published, test)")
        ax.plot([], [], marker="*", ms=11, color="black", ls="none", label="test of the tested checkpoint")
        ax.set_xlabel("wall-clock minutes since the fit started")
        ax.set_ylabel(f"{key}: validation (lines), test (stars)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Beauty SFT: validation (user subsets) and test against wall-clock (2-core CPU)", fontsize=10)
    fig.savefig(RESULTS / "learning_curve.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.beauty_sft", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["plan", "run", "report"])
    p.add_argument("group", nargs="?", choices=["sids", "recipe", "regularized", "industrial", "all"], default="all")
    p.add_argument("--industrial-sids", default="configs/data/sids/industrial_letter_zcr.yaml")
    p.add_argument("--sid-steps", type=int, default=300)
    p.add_argument("--sid-test-users", type=int, default=3000)
    p.add_argument("--sid-val-users", type=int, default=1000)
    p.add_argument("--refresh", action="store_true",
                   help="run: re-read the metrics of finished stages into the results")
    p.add_argument("--runs", type=Path, default=Path(os.environ.get("ADAGRPO_RUNS", "runs")))
    args = p.parse_args(argv)
    (args.runs / EXPERIMENT).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{(args.runs / EXPERIMENT / 'mlflow.db').resolve()}")
    stages = plan(args.sid_steps, args.sid_test_users, args.sid_val_users, args.industrial_sids)
    chosen = [s for group in stages.values() for s in group] if args.group == "all" else stages[args.group]
    if args.command == "plan":
        for s in chosen:
            print(f"{s.name}: adagrpo {' '.join(s.fit_cmd())}")
        return 0
    if args.command == "report":
        RESULTS.mkdir(parents=True, exist_ok=True)
        print(report())
        return 0
    for s in chosen:
        run_stage(s, args.runs, args.refresh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
