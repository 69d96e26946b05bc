"""The noise map (issue 11): where does gating pay? A resumable grid of ordinary ``adagrpo fit``/``test`` runs over
reward noise × where it lives, on a world with an imitation deficit, with paired comparisons by seed.

Each seed trains its own SFT policy (``--seed_everything`` and data order) and draws its own reward noise (the
``NoisyReward`` seed), so seeds vary the SFT and the reward model, not only the prompt order. Every RL arm of a
seed starts from that seed's SFT checkpoint and is tested at its **final** checkpoint on the same seeded test users.

    python -m benchmarks.noise_map plan                 # the stages and the commands, nothing run
    python -m benchmarks.noise_map run --workers 2      # resumable: finished stages are skipped
    python -m benchmarks.noise_map report               # tables, paired intervals, heatmaps

The runs use a **frozen snapshot** of the package (``--snapshot DIR``: a wheel of one commit installed with
``pip install --no-deps --target DIR``; ``snapshot`` builds it), so the code a study measures does not change while
the repository moves on; each result records the snapshot's commit. Stages are claimed through lock files
(``runs/noise-map/<stage>/claim``, holding the pid), so several workers share one queue and a rerun after a crash
(or a new session) picks up exactly the unfinished stages. Each worker writes
its own MLflow store (``runs/noise-map/mlflow_w<k>.db``); a finished stage's metrics are copied into
``runs/noise-map/<stage>/done.json`` and appended to ``benchmarks/results/noise_map/results.jsonl``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "noise-map"
RESULTS = REPO / "benchmarks" / "results" / "noise_map"

WORLD = {"sft_data": "configs/data/synthetic_biased.yaml", "rl_data": "configs/data/synthetic_biased_rl.yaml",
         "reward_data": "configs/data/synthetic_biased_reward.yaml"}
# Noise levels in reward (utility) units, fixed before any RL run from the calibration reports of the seed-0 SFT
# policy (benchmarks/results/calibration/biased_uniform*.txt): "moderate" is where a uniformly noisy reward orders the
# policy's beams about as well as the policy does (reward − policy concordance +0.041 at σ = 0.2, −0.050 at 0.4:
# the crossing, interpolated, is 0.29); "large" is four times that.
MODERATE, LARGE = 0.3, 1.2
CELLS = {  # name -> (noise, where); the extra cells run in this order after the main ones
    "clean": (0.0, "uniform"),
    "segment-moderate": (MODERATE, "segment"),
    "uniform-large": (LARGE, "uniform"),
    "tail-moderate": (MODERATE, "tail"),
    "uniform-moderate": (MODERATE, "uniform"),
    "tail-large": (LARGE, "tail"),
    "trained": (None, "trained"),  # the reward model trained on the world's exposure logs (seed s), not an oracle
}
# The cells of the pre-registered pattern, with segment-moderate promoted and tail-moderate demoted from calibration
# (before any RL result): tail noise barely reaches the policy's beams (reward concordance 0.931 vs 0.687 at σ = 0.3),
# while segment noise makes the reward better than the policy on half of the users and worse on the other half.
MAIN_CELLS = ["clean", "segment-moderate", "uniform-large"]
ARMS = ["grpo_fixed_0.1", "grpo_fixed_0.3", "grpo_fixed_1.0", "adagrpo", "adagrpo_relative", "adagrpo_oracle"]
CONTROL = "continue_sft"
EXTRA = [("clean", "pure_grpo")]  # pure GRPO in one cell
METRICS = ["test_last/true/hr_10", "test_last/filtered/true/hr_10", "test_last/true/utility_10",
           "test_last/filtered/true/utility_10", "test_last/hr_10", "test_last/filtered/hr_10",
           "test_last/repeat_rate_10", "gate/open_rate", "gate/oracle_rate", "gate/oracle_agreement",
           "diag/rm_concordance", "diag/policy_concordance", "reward/repeat", "loss/grpo", "kl"]


@dataclass
class Stage:
    name: str
    kind: str  # sft | rl
    fit: list[str]
    test: list[str] = field(default_factory=list)
    depends: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def key(self) -> str:
        return hashlib.sha1(json.dumps([self.fit, self.test]).encode()).hexdigest()[:16]


def reward_spec(noise: float | None, where: str, seed: int, runs: Path) -> str:
    if where == "trained":
        ckpt = runs / EXPERIMENT / f"reward-biased-s{seed}" / "best.ckpt"
        return json.dumps({"class_path": "adagrpo.lightning_modules.TrainedReward",
                           "init_args": {"checkpoint": str(ckpt)}})
    return json.dumps({"class_path": "adagrpo.lightning_modules.NoisyReward",
                       "init_args": {"noise": noise, "noise_on": where, "seed": seed}})


def sft_stage(s: int) -> Stage:
    return Stage(f"sft-biased-s{s}", "sft", [
        "fit", "--config", "configs/experiments/sft.yaml", "--data", WORLD["sft_data"], "--experiment", EXPERIMENT,
        "--run_name", f"sft-biased-s{s}", "--seed_everything", str(s), "--data.init_args.seed", str(s),
        "--trainer.max_epochs", "6"], info={"seed": s})


def reward_stage(s: int) -> Stage:
    return Stage(f"reward-biased-s{s}", "reward", [
        "fit", "--config", "configs/experiments/reward.yaml", "--data", WORLD["reward_data"],
        "--experiment", EXPERIMENT, "--run_name", f"reward-biased-s{s}", "--seed_everything", str(s),
        "--data.init_args.seed", str(s), "--trainer.max_epochs", "3"], info={"seed": s})


def rl_stage(s: int, cell: str, arm: str, steps: int, test_users: int, runs: Path, name: str | None = None) -> Stage:
    """One RL run of seed s: ``arm`` is a shipped config (``configs/experiments/<arm>.yaml``) or a key of ``VARIANTS``
    (a config plus overrides); ``name`` (default ``<cell>-<arm>-s<s>``) also names the run."""
    noise, where = CELLS[cell]
    config, overrides = VARIANTS.get(arm, (arm, []))
    name = name or (f"{cell}-{arm}-s{s}" if arm != CONTROL else f"{CONTROL}-s{s}")
    rl_eval = ["--data.init_args.max_eval_samples", "200", "--data.init_args.max_test_samples", str(test_users),
               "--model.init_args.test_unconstrained", "false", "--model.init_args.val_unconstrained", "false"]
    base = ["--config", f"configs/experiments/{config}.yaml", "--data", WORLD["rl_data"], "--experiment", EXPERIMENT,
            "--run_name", name, "--seed_everything", str(s), "--data.init_args.seed", str(s),
            "--model.init_args.init_from", str(runs / EXPERIMENT / f"sft-biased-s{s}" / "best.ckpt"),
            "--model.init_args.reward", reward_spec(noise, where, s, runs), *rl_eval, *overrides]
    fit = ["fit", *base, "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps)]
    deps = [f"sft-biased-s{s}"] + ([f"reward-biased-s{s}"] if where == "trained" else [])
    return Stage(name, "rl", fit, ["test", *base, "--checkpoint", "last"], depends=deps,
                 info={"seed": s, "cell": cell if arm != CONTROL else "-", "arm": arm, "noise": noise, "where": where})


def plan(seeds: list[int], steps: int, test_users: int, cells: list[str], runs: Path) -> list[Stage]:
    stages: list[Stage] = [sft_stage(s) for s in seeds]

    def rl(s: int, cell: str, arm: str) -> Stage:
        return rl_stage(s, cell, arm, steps, test_users, runs)

    # The main cells for every seed first, then pure GRPO, then the extra cells: a run cut short still has complete
    # seeds of the main cells.
    main = [c for c in cells if c in MAIN_CELLS]
    for s in seeds:
        stages.append(rl(s, "clean", CONTROL))
        for cell in main:
            for arm in ARMS:
                stages.append(rl(s, cell, arm))
    # The learned reward model's cell (its reward models first), then pure GRPO, then the other extra cells.
    if "trained" in cells:
        stages.extend(reward_stage(s) for s in seeds)
        for s in seeds:
            stages.extend(rl(s, "trained", arm) for arm in ARMS)
    for s in seeds:
        for cell, arm in EXTRA:
            if cell in cells:
                stages.append(rl(s, cell, arm))
    for s in seeds:
        for cell in cells:
            if cell not in MAIN_CELLS and cell != "trained":
                stages.extend(rl(s, cell, arm) for arm in ARMS)
    return stages


# Addendum 3: is λ = 1's utility gain repeat suppression? λ = 1 without the repeat penalty, and with rollouts that
# cannot propose seen items, paired by seed with the map's committed control and λ = 1
# (benchmarks/results/noise_map.md).
VARIANTS = {  # arm -> (config, overrides appended to the run's arguments)
    "lambda1_rp0": ("grpo_fixed_1.0", ["--model.init_args.repeat_penalty", "0"]),
    "lambda1_noseen": ("grpo_fixed_1.0", ["--model.init_args.exclude_seen", "true"]),
    "adagrpo_rp0": ("adagrpo", ["--model.init_args.repeat_penalty", "0"]),
    "lambda1_rerun": ("grpo_fixed_1.0", []),  # the map's λ = 1 run again (only its name differs): see plan_repeat
}
REPEAT_CELLS = ["uniform-large", "trained"]
REPEAT_ARMS = ["lambda1_rp0", "lambda1_noseen"]
REPEAT_OPTIONAL = ["adagrpo_rp0"]  # queued after every seed of the required arms
REPRO = f"repro-{CONTROL}"  # the control rerun whose metrics must equal the committed control's (pairing check)
L1_RERUN = "lambda1_rerun"


def plan_repeat(seeds: list[int], steps: int, test_users: int, cells: list[str], runs: Path,
                optional: bool = True, rerun: bool = False) -> list[Stage]:
    """Addendum 3, seed by seed (so a run cut short leaves complete pairs): SFT, the control rerun of the first seed
    (the reproduction check), the new arms in the oracle-noise cells, the reward model, the new arms in *trained*;
    then, if ``optional``, AdaGRPO without the repeat penalty for every seed. The SFT, reward and map stages are the
    map's own (same keys), so finished ones are reused. ``rerun`` (when the check fails): the control of every seed
    and λ = 1 in every cell are rerun too (``repro-continue_sft-s<s>``, ``<cell>-lambda1_rerun-s<s>``), before the
    new arms of their seed and cell, and the new arms are paired with those reruns."""
    stages: list[Stage] = []
    cells = [c for c in REPEAT_CELLS if c in cells] + [c for c in cells if c not in REPEAT_CELLS]
    for i, s in enumerate(seeds):
        stages.append(sft_stage(s))
        if i == 0 or rerun:
            repro = rl_stage(s, "clean", CONTROL, steps, test_users, runs, name=f"{REPRO}-s{s}")
            repro.info.update(cell="repro", arm=REPRO)
            stages.append(repro)
        for cell in cells:
            if CELLS[cell][1] == "trained":
                stages.append(reward_stage(s))
            arms = [L1_RERUN, *REPEAT_ARMS] if rerun else REPEAT_ARMS
            stages.extend(rl_stage(s, cell, arm, steps, test_users, runs) for arm in arms)
    if optional:
        for s in seeds:
            stages.extend(rl_stage(s, cell, arm, steps, test_users, runs) for cell in cells for arm in REPEAT_OPTIONAL)
    return stages


# ------------------------------------------------------------------------------------------------ running
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _claim(folder: Path) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    claim = folder / "claim"
    if claim.exists():
        try:
            pid = int(claim.read_text().strip() or 0)
        except ValueError:
            pid = 0
        if pid and _alive(pid):
            return False
        claim.unlink(missing_ok=True)  # left by a worker that died
    try:
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def _done(folder: Path, stage: Stage, committed: Path | None = None) -> dict | None:
    """The stage's finished record, or None. Besides ``done.json`` in the (uncommitted) runs folder, an RL stage counts
    as done when the committed results file holds its key, so a new checkout resumes the study; an SFT or reward stage
    only while its checkpoint exists (later stages start from it)."""
    path = folder / "done.json"
    if path.exists():
        record = json.loads(path.read_text())
        if record.get("key") == stage.key():
            return record
    committed = RESULTS / "results.jsonl" if committed is None else committed
    for record in load_results(committed):
        if record.get("stage") == stage.name and record.get("key") == stage.key():
            if stage.kind == "rl" or (folder / "best.ckpt").is_file():
                return record
    return None


def _run(cmd: list[str], env: dict, log: Path, cwd: Path) -> None:
    with log.open("a") as fh:
        fh.write(f"\n$ adagrpo {' '.join(cmd)}\n")
        fh.flush()
        code = subprocess.call([sys.executable, "-m", "adagrpo", *cmd], env=env, cwd=cwd, stdout=fh,
                               stderr=subprocess.STDOUT)
    if code:
        raise RuntimeError(f"exit {code}: adagrpo {' '.join(cmd[:6])} … (log {log})")


HISTORY = ["gate/open_rate", "gate/oracle_rate", "gate/oracle_agreement", "diag/rm_concordance",
           "diag/policy_concordance", "reward/repeat", "kl"]  # averaged over the training steps as "mean/<key>"


def _metrics(tracking_uri: str, record_dir: Path) -> dict:
    from mlflow.tracking import MlflowClient

    record = json.loads((record_dir / "latest.json").read_text())
    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(record["mlflow_run_id"])
    out = {k: v for k, v in run.data.metrics.items() if k in METRICS or k.startswith("test_last/")}
    for key in HISTORY:
        values = [m.value for m in client.get_metric_history(run.info.run_id, key) if math.isfinite(m.value)]
        if values:
            out[f"mean/{key}"] = sum(values) / len(values)
    return out


def backfill(runs: Path) -> int:
    """Recompute the metrics of finished stages from their worker's MLflow store (appends superseding lines)."""
    n = 0
    for record in load_results():
        if record.get("worker") is None or "arm" not in record:
            continue
        db = runs / EXPERIMENT / f"mlflow_w{record['worker']}.db"
        store = f"sqlite:///{db.resolve()}"
        metrics = _metrics(store, runs / EXPERIMENT / record["stage"])
        if metrics != record["metrics"]:
            record["metrics"] = metrics
            with (RESULTS / "results.jsonl").open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            n += 1
    return n


def worker(stages: list[Stage], index: int, runs: Path, snapshot: Path | None = None, max_failures: int = 3) -> None:
    tracking_uri = f"sqlite:///{(runs / EXPERIMENT / f'mlflow_w{index}.db').resolve()}"
    env = {**os.environ, "ADAGRPO_RUNS": str(runs.resolve()), "MLFLOW_TRACKING_URI": tracking_uri,
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cwd, commit = REPO, _git_commit(REPO)
    if snapshot is not None:
        # The snapshot first on the path; configs/... then resolve to its packaged configs (cwd has none).
        env["PYTHONPATH"] = str(snapshot.resolve())
        cwd = (runs / EXPERIMENT).resolve()
        cwd.mkdir(parents=True, exist_ok=True)
        commit = (snapshot / "COMMIT").read_text().strip() if (snapshot / "COMMIT").exists() else "?"
        env["ADAGRPO_CACHE"] = str(cwd / ".adagrpo_cache")
    failures = 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    pending = list(stages)
    while pending:
        progressed = False
        for stage in list(pending):
            folder = runs / EXPERIMENT / stage.name
            if _done(folder, stage):
                pending.remove(stage)
                continue
            by_name = {s.name: s for s in stages}
            if any(not _done(runs / EXPERIMENT / d, by_name[d]) for d in stage.depends):
                continue
            if not _claim(folder):
                continue
            start = time.time()
            log = folder / "stage.log"
            try:
                # A stage killed half-way left a partial record: `fit --force` replaces it (and says so in MLflow).
                started = any((folder / f).exists() for f in ("latest.json", "running.json", "resume"))
                print(f"[w{index}] {stage.name} …", flush=True)
                _run([*stage.fit, "--force"] if started else stage.fit, env, log, cwd)
                if stage.test:
                    _run(stage.test, env, log, cwd)
                metrics = _metrics(tracking_uri, folder)
                record = {"stage": stage.name, "key": stage.key(), **stage.info, "metrics": metrics,
                          "seconds": round(time.time() - start, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                          "worker": index, "commit": commit}
                (folder / "done.json").write_text(json.dumps(record, indent=1))
                with (RESULTS / "results.jsonl").open("a") as fh:
                    fh.write(json.dumps(record) + "\n")
                print(f"[w{index}] {stage.name} done in {record['seconds']} s", flush=True)
                pending.remove(stage)
                progressed = True
            except Exception as err:  # noqa: BLE001 — the stage stays pending for a rerun
                failures += 1
                print(f"[w{index}] {stage.name} FAILED: {err}", flush=True)
                pending.remove(stage)
                if failures >= max_failures:
                    raise SystemExit(f"[w{index}] {failures} failed stages; stopping") from None
            finally:
                (folder / "claim").unlink(missing_ok=True)
        if not progressed and pending:
            time.sleep(20)  # waiting for a dependency another worker is running


def _git_commit(repo: Path) -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=repo, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def build_snapshot(target: Path, ref: str = "HEAD") -> str:
    """A wheel of commit ``ref`` (from a clean worktree, so uncommitted edits stay out) installed into ``target``."""
    import tempfile

    commit = subprocess.check_output(["git", "rev-parse", "--short", ref], cwd=REPO, text=True).strip()
    if target.exists():
        raise SystemExit(f"{target} exists; remove it or choose another --snapshot")
    with tempfile.TemporaryDirectory() as tmp:
        src, wheels = Path(tmp) / "src", Path(tmp) / "wheels"
        subprocess.check_call(["git", "worktree", "add", "--detach", "-q", str(src), commit], cwd=REPO)
        try:
            subprocess.check_call([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                                   "-w", str(wheels), str(src)])
        finally:
            subprocess.call(["git", "worktree", "remove", "--force", str(src)], cwd=REPO)
        (wheel,) = wheels.glob("adagrpo-*.whl")
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                               str(wheel)])
    (target / "COMMIT").write_text(commit + "\n")
    return commit


# ------------------------------------------------------------------------------------------------ report
def load_results(path: Path = RESULTS / "results.jsonl") -> list[dict]:
    latest: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                latest[r["stage"]] = r  # a rerun of a stage supersedes its earlier line
    return list(latest.values())


def t_interval(diffs: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval of paired differences (one per seed)."""
    from scipy import stats

    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def paired_table(results: list[dict], metric: str) -> dict:
    """For each (cell, arm): per-seed values, the paired difference to the control and to the best fixed mixture
    of the cell (chosen by its seed-mean), with 95 % intervals."""
    control = {r["seed"]: r["metrics"].get(metric) for r in results if r["arm"] == CONTROL}
    by_cell: dict[str, dict[str, dict[int, float]]] = {}
    for r in results:
        if r["arm"] == CONTROL:
            continue
        by_cell.setdefault(r["cell"], {}).setdefault(r["arm"], {})[r["seed"]] = r["metrics"].get(metric)
    out = {}
    for cell, arms in by_cell.items():
        fixed = {a: v for a, v in arms.items() if a.startswith("grpo_fixed")}
        best_fixed = max(fixed, key=lambda a: _mean(fixed[a].values())) if fixed else None
        for arm, values in arms.items():
            row = {"values": values, "mean": _mean(values.values())}
            seeds = [s for s in values if control.get(s) is not None and values[s] is not None]
            if seeds:
                row["vs_control"] = t_interval([values[s] - control[s] for s in seeds])
            if best_fixed and arm != best_fixed:
                bf = arms[best_fixed]
                seeds_bf = [s for s in values if bf.get(s) is not None and values[s] is not None]
                if seeds_bf:
                    row["vs_best_fixed"] = t_interval([values[s] - bf[s] for s in seeds_bf])
            row["best_fixed"] = best_fixed
            out[(cell, arm)] = row
    out[("-", CONTROL)] = {"values": control, "mean": _mean(v for v in control.values() if v is not None)}
    return out


def _mean(values) -> float:  # noqa: ANN001
    v = [x for x in values if x is not None and math.isfinite(x)]
    return sum(v) / len(v) if v else math.nan


def heatmap(table: dict, cells: list[str], arms: list[str], key: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.full((len(arms), len(cells)), np.nan)
    lo = np.full_like(grid, np.nan)
    hi = np.full_like(grid, np.nan)
    for j, cell in enumerate(cells):
        for i, arm in enumerate(arms):
            row = table.get((cell, arm), {})
            if key in row:
                grid[i, j], lo[i, j], hi[i, j] = row[key]
    fig, ax = plt.subplots(figsize=(1.6 * len(cells) + 2.5, 0.55 * len(arms) + 1.8))
    bound = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
    im = ax.imshow(grid, cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
    for i in range(len(arms)):
        for j in range(len(cells)):
            if np.isfinite(grid[i, j]):
                mark = "*" if (lo[i, j] > 0 or hi[i, j] < 0) else ""
                ax.text(j, i, f"{grid[i, j]:+.3f}{mark}\n[{lo[i, j]:+.3f}, {hi[i, j]:+.3f}]", ha="center",
                        va="center", fontsize=7)
    ax.set_xticks(range(len(cells)), cells, rotation=20, ha="right", fontsize=8)
    ax.set_yticks(range(len(arms)), arms, fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8, label="paired difference (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def report(metric: str, out: Path) -> str:
    results = [r for r in load_results() if r.get("arm")]
    if not results:
        return "no results yet"
    table = paired_table(results, metric)
    cells = [c for c in CELLS if any(k[0] == c for k in table)]
    arms = [a for a in [*ARMS, "pure_grpo"] if any(k[1] == a for k in table)]
    out.mkdir(parents=True, exist_ok=True)
    short = metric.replace("test_last/", "").replace("/", "_")
    heatmap(table, cells, arms, "vs_control", out / f"heatmap_{short}_vs_control.png",
            f"{metric} (final): arm − continue-SFT control, 95 % t-interval over seeds (* excludes 0)")
    heatmap(table, cells, [a for a in arms if not a.startswith("grpo_fixed")], "vs_best_fixed",
            out / f"heatmap_{short}_vs_best_fixed.png",
            f"{metric} (final): arm − the cell's best fixed mixture, 95 % t-interval (* excludes 0)")
    fmt = lambda t: "–" if not t or not math.isfinite(t[0]) else (  # noqa: E731
        f"{t[0]:+.4f} [{t[1]:+.4f}, {t[2]:+.4f}]" if math.isfinite(t[1]) else f"{t[0]:+.4f} [n=1]")
    lines = [f"metric: {metric} (final checkpoints); control (continue-SFT) mean "
             f"{table[('-', CONTROL)]['mean']:.4f} over seeds {sorted(table[('-', CONTROL)]['values'])}", "",
             "| cell | arm | seeds | mean | − control (95 % CI) | − best fixed (95 % CI) |",
             "|---|---|---|---|---|---|"]
    for cell in cells:
        for arm in arms:
            row = table.get((cell, arm))
            if not row:
                continue
            bf = row.get("best_fixed")
            lines.append(f"| {cell} | {arm}{' (best fixed)' if arm == bf else ''} | {len(row['values'])} | "
                         f"{row['mean']:.4f} | {fmt(row.get('vs_control'))} | {fmt(row.get('vs_best_fixed'))} |")
    lines += ["", "verdict per cell (a method wins a cell when, over at least 3 seeds, its 95 % intervals against the "
              "control AND against the cell's best fixed mixture both lie above 0; the oracle gate is the ceiling):"]
    for cell in cells:
        # At least 3 seeds: with 2, two equal differences (metrics move in steps of 1/users) give a zero-width interval.
        winners = [arm for arm in ("adagrpo", "adagrpo_relative")
                   if len(table.get((cell, arm), {}).get("values", {})) >= 3
                   and all(math.isfinite(table[(cell, arm)].get(k, (math.nan,) * 3)[1])
                           and table[(cell, arm)][k][1] > 0 for k in ("vs_control", "vs_best_fixed"))]
        oracle = table.get((cell, "adagrpo_oracle"), {}).get("vs_control")
        ceiling = f"oracle gate − control {fmt(oracle)}" if oracle else "oracle gate: not run"
        seeds = len(table.get((cell, "adagrpo"), {}).get("values", {}))
        lines.append(f"- {cell} ({seeds} seeds): {', '.join(winners) if winners else 'no method wins'}; {ceiling}")
    return "\n".join(lines)


SUMMARY = [("test_last/true/hr_10", "true HR@10"), ("test_last/filtered/true/hr_10", "filtered true HR@10"),
           ("test_last/true/utility_10", "true utility@10"), ("test_last/hr_10", "HR@10 (logged)"),
           ("test_last/filtered/hr_10", "filtered HR@10"), ("test_last/repeat_rate_10", "repeat rate"),
           ("mean/kl", "KL to SFT (mean)"),
           ("mean/gate/open_rate", "gate open (mean)"), ("mean/gate/oracle_rate", "oracle gate would open"),
           ("mean/gate/oracle_agreement", "agrees with the oracle gate")]


def summary_table(results: list[dict]) -> str:
    """Seed means of every reported metric per (cell, arm), with the number of seeds (final checkpoints)."""
    rows: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        rows.setdefault((r["cell"], r["arm"]), []).append(r["metrics"])
    order = {c: i for i, c in enumerate(["-", *CELLS])}
    arms = {a: i for i, a in enumerate([CONTROL, *ARMS, "pure_grpo"])}
    lines = ["| cell | arm | seeds | " + " | ".join(n for _, n in SUMMARY) + " |", "|---" * (len(SUMMARY) + 3) + "|"]
    for cell, arm in sorted(rows, key=lambda k: (order.get(k[0], 99), arms.get(k[1], 99))):
        ms = rows[(cell, arm)]
        vals = [_mean(m.get(key) for m in ms) for key, _ in SUMMARY]
        lines.append(f"| {cell} | {arm} | {len(ms)} | " + " | ".join("–" if not math.isfinite(v) else f"{v:.4f}"
                                                                     for v in vals) + " |")
    return "\n".join(lines)


def _by_seed(results: list[dict], cell: str, arm: str, metric: str) -> dict[int, float]:
    return {r["seed"]: r["metrics"][metric] for r in results
            if r.get("arm") == arm and r.get("cell") == cell and r["metrics"].get(metric) is not None}


def paired(values: dict[int, float], ref: dict[int, float]) -> tuple[float, float, float] | None:
    """Mean and 95 % t-interval of ``values − ref`` over the seeds both have (None when they share none)."""
    seeds = sorted(set(values) & set(ref))
    return t_interval([values[s] - ref[s] for s in seeds]) if seeds else None


def repeat_verdict(arm_vs_control: tuple, l1_vs_control: tuple, arm_vs_l1: tuple, seeds: int) -> str:
    """The pre-registered reading of addendum 3 (benchmarks/results/noise_map.md) for one (cell, arm)."""
    if seeds < 3:
        return f"undecided ({seeds} seeds)"
    gain, l1_gain, (_, lo, hi) = arm_vs_control[0], l1_vs_control[0], arm_vs_l1
    if gain < 0.5 * l1_gain and hi < 0:
        return "keeps little of λ = 1's gain"
    if lo > 0:
        return "keeps the gain (above λ = 1)"
    if lo <= 0 <= hi and gain >= 0.5 * l1_gain:
        return "keeps the gain"
    return "partial"


REPEAT_METRICS = [("test_last/true/utility_10", "true utility@10"), ("test_last/true/hr_10", "true HR@10"),
                  ("test_last/filtered/true/hr_10", "seen-filtered true HR@10"),
                  ("test_last/repeat_rate_10", "repeat rate@10"), ("mean/kl", "KL to SFT (mean over steps)"),
                  ("mean/reward/repeat", "repeat reward component (mean)")]
LAMBDA1 = "grpo_fixed_1.0"


def _repro_line(rerun: dict, committed: dict | None) -> tuple[str, bool]:
    if committed is None:
        return f"- {rerun['stage']}: no committed run to compare with", False
    keys = sorted(k for k in rerun["metrics"] if k.startswith("test_last/"))
    diffs = {k: abs(rerun["metrics"][k] - committed["metrics"].get(k, math.nan)) for k in keys}
    worst = max(diffs, key=lambda k: diffs[k] if math.isfinite(diffs[k]) else math.inf)
    ok = all(math.isfinite(d) and d <= 1e-5 for d in diffs.values())
    shown = ", ".join(f"{k.replace('test_last/', '')} {committed['metrics'][k]:.4f} → {rerun['metrics'][k]:.4f}"
                      for k, _ in REPEAT_METRICS[:4] if k in committed["metrics"] and k in rerun["metrics"])
    return (f"- {rerun['stage']} vs {committed['stage']}: {len(keys)} metrics, largest |difference| "
            f"{diffs[worst]:.2e} ({worst}): {'REPRODUCES' if ok else 'DOES NOT REPRODUCE'}; {shown}"), ok


def repeat_report(results: list[dict], cells: list[str], seeds: list[int], pair_with: str | None = None) -> str:
    """Addendum 3: the reruns against the committed runs, then per metric the new arms' seed means and paired
    differences to the control and to λ = 1 (95 % t-intervals over seeds), then the pre-registered verdict.
    ``pair_with``: ``committed`` (the map's control and λ = 1) or ``reruns`` (this checkout's reruns of them);
    default, as pre-registered: the committed runs if every control rerun reproduces its committed run, else the
    reruns."""
    fmt = lambda t: "–" if not t or not math.isfinite(t[0]) else (  # noqa: E731
        f"{t[0]:+.4f} [{t[1]:+.4f}, {t[2]:+.4f}]" if math.isfinite(t[1]) else f"{t[0]:+.4f} [n=1]")
    stage = {r["stage"]: r for r in results}
    lines = ["reproduction check (reruns in this checkout vs the committed runs, every test_last/* metric):"]
    control_ok = []
    for s in seeds:
        if f"{REPRO}-s{s}" in stage:
            line, ok = _repro_line(stage[f"{REPRO}-s{s}"], stage.get(f"{CONTROL}-s{s}"))
            lines.append(line)
            control_ok.append(ok)
        for cell in cells:
            if f"{cell}-{L1_RERUN}-s{s}" in stage:
                lines.append(_repro_line(stage[f"{cell}-{L1_RERUN}-s{s}"], stage.get(f"{cell}-{LAMBDA1}-s{s}"))[0])
    if pair_with is None:
        pair_with = "committed" if control_ok and all(control_ok) else "reruns"
    control_key, l1_arm = (("-", CONTROL), LAMBDA1) if pair_with == "committed" else (("repro", REPRO), L1_RERUN)
    lines.append(f"pairing with the {pair_with} control and λ = 1 ({control_key[1]}, {l1_arm})")
    # AdaGRPO (the map's, for comparison) only beside the committed runs: it started from the committed SFT policies.
    arms = [l1_arm, *REPEAT_ARMS, *REPEAT_OPTIONAL] + (["adagrpo"] if pair_with == "committed" else [])
    for metric, label in REPEAT_METRICS:
        control = _by_seed(results, *control_key, metric)
        lines += ["", f"{label} ({metric}, final checkpoints); control mean {_mean(control.values()):.4f} "
                  f"(seeds {sorted(control)})", "",
                  "| cell | arm | seeds | mean | − control (95 % CI) | − λ = 1 (95 % CI) |",
                  "|---|---|---|---|---|---|"]
        for cell in cells:
            l1 = _by_seed(results, cell, l1_arm, metric)
            for arm in arms:
                values = _by_seed(results, cell, arm, metric)
                if not values:
                    continue
                vs_l1 = paired(values, l1) if arm != l1_arm else None
                lines.append(f"| {cell} | {arm} | {len(values)} | {_mean(values.values()):.4f} | "
                             f"{fmt(paired(values, control))} | {fmt(vs_l1)} |")
    metric = REPEAT_METRICS[0][0]
    control = _by_seed(results, *control_key, metric)
    lines += ["", f"pre-registered reading on {REPEAT_METRICS[0][1]} (seeds with the arm, the control and λ = 1):"]
    for cell in cells:
        l1 = _by_seed(results, cell, l1_arm, metric)
        for arm in [*REPEAT_ARMS, *REPEAT_OPTIONAL]:
            values = _by_seed(results, cell, arm, metric)
            common = {s: values[s] for s in values if s in l1 and s in control}
            if not common:
                continue
            verdict = repeat_verdict(paired(common, control), paired({s: l1[s] for s in common}, control),
                                     paired(common, l1), len(common))
            lines.append(f"- {cell} / {arm} (seeds {sorted(common)}): {verdict}")
    return "\n".join(lines)


def stages_for(args: argparse.Namespace) -> list[Stage]:
    if args.study == "repeat":
        stages = plan_repeat(args.seeds, args.steps, args.test_users, args.cells or REPEAT_CELLS, args.runs,
                             optional=not args.no_optional, rerun=args.rerun)
    else:
        stages = plan(args.seeds, args.steps, args.test_users, args.cells or list(CELLS), args.runs)
    return [st for st in stages if args.only == "all" or st.kind == "sft"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.noise_map", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["plan", "run", "report", "snapshot", "backfill"])
    parser.add_argument("--snapshot", type=Path, default=None, help="run the stages with this frozen package")
    parser.add_argument("--ref", default="HEAD", help="snapshot: the commit to build (the map so far: 911d19e)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cells", nargs="+", default=None, choices=list(CELLS),
                        help="default: every cell (map), trained and uniform-large (repeat)")
    parser.add_argument("--study", choices=["map", "repeat"], default="map",
                        help="the map, or addendum 3 (λ = 1 without the repeat penalty / with seen items excluded)")
    parser.add_argument("--no-optional", action="store_true", help="repeat: leave out AdaGRPO without the penalty")
    parser.add_argument("--rerun", action="store_true",
                        help="repeat: rerun the control and λ = 1 for every seed (when the reproduction check fails)")
    parser.add_argument("--pair-with", choices=["committed", "reruns"], default=None,
                        help="repeat report: default as pre-registered (committed if the control reruns reproduce)")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per RL run (B = 32 prompts × G = 16)")
    parser.add_argument("--test-users", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=Path, default=REPO / "runs")
    parser.add_argument("--metric", action="append", default=None)
    parser.add_argument("--only", choices=["sft", "all"], default="all", help="run only the SFT stages")
    args = parser.parse_args(argv)
    stages = stages_for(args)
    if args.action == "snapshot":
        if args.snapshot is None:
            raise SystemExit("--snapshot DIR is required")
        print(f"snapshot of {build_snapshot(args.snapshot, args.ref)} in {args.snapshot}")
        return 0
    if args.action == "backfill":
        print(f"{backfill(args.runs)} results updated")
        return 0
    if args.action == "plan":
        for st in stages:
            done = _done(args.runs / EXPERIMENT / st.name, st)
            print(f"{'done' if done else 'todo'}  {st.name}")
        print(f"{len(stages)} stages")
        return 0
    if args.action == "run":
        procs = []
        for k in range(1, args.workers):
            code = "import sys; from benchmarks.noise_map import _worker_main; _worker_main(sys.argv[1:])"
            cmd = [sys.executable, "-c", code, str(k), json.dumps(argv or sys.argv[1:])]
            procs.append(subprocess.Popen(cmd, cwd=REPO))
        worker(stages, 0, args.runs, args.snapshot)
        for p in procs:
            p.wait()
        return 0
    if args.study == "repeat":
        results = [r for r in load_results() if r.get("arm")]
        print(repeat_report(results, args.cells or REPEAT_CELLS, args.seeds, args.pair_with))
        return 0
    out = RESULTS
    texts = [report(m, out) for m in (args.metric or ["test_last/true/hr_10", "test_last/filtered/true/hr_10"])]
    results = [r for r in load_results() if r.get("arm")]
    texts.append("seed means (final checkpoints):\n\n" + summary_table(results))
    print("\n\n".join(texts))
    return 0


def _worker_main(argv: list[str]) -> None:
    index, original = int(argv[0]), json.loads(argv[1])
    parser = argparse.ArgumentParser()
    parser.add_argument("action")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cells", nargs="+", default=None)
    parser.add_argument("--study", default="map")
    parser.add_argument("--no-optional", action="store_true")
    parser.add_argument("--rerun", action="store_true")
    parser.add_argument("--pair-with", default=None)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--test-users", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=Path, default=REPO / "runs")
    parser.add_argument("--metric", action="append", default=None)
    parser.add_argument("--only", default="all")
    parser.add_argument("--snapshot", type=Path, default=None)
    args = parser.parse_args(original)
    worker(stages_for(args), index, args.runs, args.snapshot)


if __name__ == "__main__":
    raise SystemExit(main())
