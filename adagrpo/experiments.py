"""Pipelines made of ordinary ``adagrpo fit``/``test`` runs: the quickstart and the ablation grid.

Every stage is a subprocess running the same command a user (or a cluster scheduler) would run, so a
pipeline is just a list of commands. A stage is skipped when its record
(``runs/<experiment>/<run>/stage.json``) holds the same key — a hash of its config files, its overrides
and the keys of the stages it depends on — and its checkpoint still exists; ``--force`` reruns it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from adagrpo.datamodules.cache import atomic_write_text
from adagrpo.resources import config_base, config_root


@dataclass
class Stage:
    """One ``fit`` (then ``test`` of its best and, optionally, last checkpoints)."""

    run_name: str
    config: Path
    overrides: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    depends: list[str] = field(default_factory=list)
    test_last: bool = False

    def files(self) -> list[Path]:
        """The config, its ``base:`` chain and every YAML they include (paths resolved relative to each file)."""
        seen, todo = [], [self.config]
        while todo:
            path = todo.pop()
            if path in seen or not path.exists():
                continue
            seen.append(path)
            base = config_base(path)
            if base is not None:
                todo.append(base.resolve())
            for line in path.read_text().splitlines():
                value = line.split(":", 1)[-1].strip()
                if value.endswith(".yaml") and not value.startswith("$"):
                    todo.append((path.parent / value).resolve())
        return seen


def stage_key(stage: Stage, upstream: dict[str, str]) -> str:
    h = hashlib.sha1()
    for f in stage.files():
        h.update(f.read_bytes())
    h.update(json.dumps([stage.overrides, stage.env, [upstream.get(d, "") for d in stage.depends]]).encode())
    return h.hexdigest()[:16]


def adagrpo_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "adagrpo", *args]


def run_command(cmd: list[str], env: dict[str, str], log_path: Path, echo: bool = True) -> None:
    """Run a stage command. With ``echo`` it shares this terminal (live progress bars); otherwise its output
    goes to ``log_path``. Raises on failure."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore"), **env}
    shown = " ".join(f"{k}={v}" for k, v in env.items())
    print(f"$ {shown + ' ' if shown else ''}adagrpo {shlex.join(cmd[3:])}", flush=True)
    if echo:
        code = subprocess.call(cmd, env=full_env)
        tail = ""
    else:
        with log_path.open("w") as log:
            code = subprocess.call(cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-25:])
    if code:
        raise RuntimeError(f"stage command failed with exit code {code}: {shlex.join(cmd)}\n{tail}")


STEP_TITLES = {"fit": "fit", "test": "test (best checkpoint)", "test_last": "test (final checkpoint)"}


def stage_commands(experiment: str, stage: Stage, force: bool = False) -> list[tuple[str, list[str]]]:
    """A stage's ``adagrpo`` commands, each with its log's name: ``fit`` (with ``--force`` when the pipeline decided
    to refit it), ``test`` of the best checkpoint and, with ``test_last``, of the last."""
    base = ["--config", str(stage.config), "--experiment", experiment, "--run_name", stage.run_name]
    out = [("fit", ["fit", *base, *(["--force"] if force else []), *stage.overrides]),
           ("test", ["test", *base, *stage.overrides])]
    if stage.test_last:
        out.append(("test_last", ["test", *base, "--checkpoint", "last", *stage.overrides]))
    return out


def run_pipeline(experiment: str, stages: list[Stage], force: bool = False, runs_root: Path = Path("runs"),
                 echo: bool = True, titles: dict[str, str] | None = None,
                 after: dict[str, Callable[[], None]] | None = None) -> dict[str, dict]:
    """Run ``stages`` in order (skipping finished ones); returns each stage's record. ``after[name]`` is called once
    stage ``name`` is done (run or reused), e.g. a report on its checkpoint."""
    keys: dict[str, str] = {}
    records: dict[str, dict] = {}
    for stage in stages:
        if titles and stage.run_name in titles:
            print(f"\n== {titles[stage.run_name]} ==", flush=True)
        folder = runs_root / experiment / stage.run_name
        key = stage_key(stage, keys)
        keys[stage.run_name] = key
        done = folder / "stage.json"
        if not force and done.exists():
            prior = json.loads(done.read_text())
            best = prior.get("best_copy")
            if prior.get("key") == key and best and Path(best).is_file():
                print(f"[{stage.run_name}] up to date (key {key}); reusing {prior['best_copy']}", flush=True)
                records[stage.run_name] = prior
                if after and stage.run_name in after:
                    after[stage.run_name]()
                continue
        start = time.perf_counter()
        # The pipeline decided to (re)fit this stage: --force lets the fit replace its earlier record.
        for name, args in stage_commands(experiment, stage, force=True):
            print(("\n" if name == "fit" else "") + f"[{stage.run_name}] {STEP_TITLES[name]}", flush=True)
            run_command(adagrpo_command(args), stage.env, folder / f"{name}.log", echo)
        record = json.loads((folder / "latest.json").read_text())
        record.update({"key": key, "seconds": round(time.perf_counter() - start, 1)})
        atomic_write_text(done, json.dumps(record, indent=2))
        records[stage.run_name] = record
        print(f"[{stage.run_name}] done in {record['seconds']} s", flush=True)
        if after and stage.run_name in after:
            after[stage.run_name]()
    return records


def open_ablation_run(experiment: str, configs: list[str], seeds: list[int], overrides: list[str],
                      tracking_uri: str | None = None, tags: dict[str, str] | None = None):  # noqa: ANN201
    """Create the MLflow parent run of an ablation (``adagrpo.kind = ablation``; its grid as params) in the store
    at ``tracking_uri`` (default: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``); returns the client and
    the run id."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    from adagrpo.compare import tracking_uri_default
    from adagrpo.mlflow_store import ensure_store
    from adagrpo.run_config import TAG_KIND

    uri = tracking_uri or tracking_uri_default()
    ensure_store(uri, experiment)  # a SQLite store shared with the stages' fits: created once, under a lock
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    run = client.create_run(exp_id, run_name="ablation", tags={TAG_KIND: "ablation", **(tags or {})})
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param("configs", json.dumps([Path(c).stem for c in configs])[:500]),
                                     Param("seeds", json.dumps(seeds)),
                                     Param("overrides", shlex.join(overrides)[:500])])
    return client, run_id


@contextlib.contextmanager
def ablation_run(experiment: str, configs: list[str], seeds: list[int], overrides: list[str],
                 tracking_uri: str | None = None) -> Iterator[str]:
    """An MLflow parent run for ``adagrpo ablate`` (:func:`open_ablation_run`). While it is open,
    :data:`~adagrpo.run_config.PARENT_RUN_ENV` names it, so the stages' fits (subprocesses) and the comparison nest
    under it in the MLflow UI. Ends FINISHED, or FAILED if the pipeline raises."""
    from adagrpo.run_config import PARENT_RUN_ENV

    client, run_id = open_ablation_run(experiment, configs, seeds, overrides, tracking_uri)
    previous = os.environ.get(PARENT_RUN_ENV)
    os.environ[PARENT_RUN_ENV] = run_id
    status = "FAILED"
    try:
        yield run_id
        status = "FINISHED"
    finally:
        if previous is None:
            os.environ.pop(PARENT_RUN_ENV, None)
        else:
            os.environ[PARENT_RUN_ENV] = previous
        client.set_terminated(run_id, status)


def absolute_tracking_uri(uri: str) -> str:
    """A ``sqlite:///relative.db`` URI with its file made absolute (the same store from any working directory);
    other URIs as they are."""
    from adagrpo.mlflow_store import sqlite_path

    db = sqlite_path(uri)
    return f"sqlite:///{db.resolve()}" if db is not None and not db.is_absolute() else uri


def ablation_script(experiment: str, stages: list[Stage], configs: list[str], seeds: list[int],
                    overrides: list[str], tracking_uri: str | None = None) -> list[str]:
    """``adagrpo ablate --print``: the ablation as shell lines whose runs nest under an MLflow parent run, as
    ``adagrpo ablate``'s own do. The parent run is created now (status SCHEDULED, tag ``adagrpo.printed``). Each
    line sets :data:`~adagrpo.run_config.PARENT_RUN_ENV` to its id and ``MLFLOW_TRACKING_URI`` to its store (a
    SQLite path made absolute), so a line runs the same from any directory or as a scheduler's job on its own: every
    stage's fit and tests, the comparison, and last the line that ends the parent run."""
    from adagrpo.compare import tracking_uri_default
    from adagrpo.run_config import PARENT_RUN_ENV

    uri = absolute_tracking_uri(tracking_uri or tracking_uri_default())
    client, run_id = open_ablation_run(experiment, configs, seeds, overrides, uri, tags={"adagrpo.printed": "true"})
    client.update_run(run_id, status="SCHEDULED")
    env = f"MLFLOW_TRACKING_URI={shlex.quote(uri)} {PARENT_RUN_ENV}={run_id} "  # assignments: names unquoted
    python = ["python", "-m", "adagrpo"]
    end = f'import mlflow; mlflow.MlflowClient().set_terminated("{run_id}")'
    return [f"# MLflow parent run {run_id} (experiment {experiment}, store {uri}): every run below nests under it",
            *(env + shlex.join([*python, *args]) for st in stages for _, args in stage_commands(experiment, st)),
            env + shlex.join([*python, "compare", "--experiment", experiment]),
            env + shlex.join(["python", "-c", end]) + "  # ends the parent run"]


#: The quickstart's reward: the world's true utility plus fixed noise σ = 0.3 on a fixed half of the users (0.03 on
#: the other half) — informative where the imitating policy is not, noisy on an identifiable part: the premise the
#: calibration report measures (benchmarks/results/calibration/biased_segment0.3.txt).
QUICKSTART_REWARD = {"class_path": "adagrpo.lightning_modules.NoisyReward",
                     "init_args": {"noise": 0.3, "noise_on": "segment"}}


def quickstart_stages(experiment: str, runs_root: Path, fast: bool = False) -> list[Stage]:
    """SFT → the continue-SFT control, GRPO (fixed λ = 1), AdaGRPO and the oracle gate (the ceiling of any gate), on
    the synthetic world with an imitation deficit and :data:`QUICKSTART_REWARD`."""
    exp = config_root() / "experiments"
    data = config_root() / "data"
    sft_ckpt = str(runs_root / experiment / "sft" / "best.ckpt")
    # Sized to finish in under 15 minutes on 2 CPU cores (SFT plateaus after ~5 epochs on this world).
    sft_over = ["--data", str(data / "synthetic_biased.yaml"), "--trainer.max_epochs", "2" if fast else "6",
                "--data.init_args.max_test_samples", "1000"]
    steps = "10" if fast else "60"
    # One validation, at the last step: the tested checkpoint is the final one.
    rl_over = ["--data", str(data / "synthetic_biased_rl.yaml"), "--model.init_args.init_from", sft_ckpt,
               "--model.init_args.reward", json.dumps(QUICKSTART_REWARD), "--trainer.max_steps", steps,
               "--trainer.val_check_interval", steps, "--data.init_args.max_eval_samples", "300",
               "--data.init_args.max_test_samples", "1000"]
    if fast:
        sft_over += ["--data.init_args.max_eval_samples", "300"]
    return [
        Stage("sft", exp / "sft.yaml", sft_over),
        Stage("continue_sft", exp / "continue_sft.yaml", rl_over, depends=["sft"]),
        Stage("grpo", exp / "grpo.yaml", rl_over, depends=["sft"]),
        Stage("adagrpo", exp / "adagrpo.yaml", rl_over, depends=["sft"]),
        Stage("adagrpo_oracle", exp / "adagrpo_oracle.yaml", rl_over, depends=["sft"]),
    ]
