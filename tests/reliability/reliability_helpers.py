"""Helpers of the reliability tests (a module of its own: conftest files are not importable by name)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)

HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parents[1] / "configs"
EXPERIMENT = "synthetic"  # the experiment of the shipped configs

# A tiny SFT through the real CLI: the shipped config on a 150-user world, the tiny policy, 4 batches, 40 eval users.
SFT = ["--config", str(CONFIGS / "experiments" / "sft.yaml"),
       "--model.init_args.policy", str(CONFIGS / "model" / "policy_tiny.yaml"),
       "--data.init_args.source.init_args.num_users", "150", "--data.init_args.source.init_args.num_items", "100",
       "--data.init_args.max_eval_samples", "40", "--data.init_args.max_test_samples", "40",
       "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4", "--trainer.log_every_n_steps", "1",
       "--trainer.enable_progress_bar", "false"]


def run(argv: list[str], capsys) -> tuple[int, str]:  # noqa: ANN001 — pytest's capsys
    """``adagrpo <argv>`` in-process: exit code and stderr."""
    from adagrpo.cli import main

    try:
        rc = main(argv)
    except SystemExit as exit_:
        rc = exit_.code if isinstance(exit_.code, int) else 1
    return int(rc or 0), capsys.readouterr().err


def mlflow_runs(root: Path, name: str, experiment: str = EXPERIMENT) -> list:
    """The MLflow runs named ``name`` in ``root/mlflow.db``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == name]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of an ``adagrpo`` subprocess: one thread, this folder importable (for the callbacks here)."""
    return {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "OMP_NUM_THREADS": "1", **extra}


def subprocess_fit(root: Path, args: list[str]) -> subprocess.CompletedProcess:
    """``python -m adagrpo fit <args>`` in ``root``, with a periodic checkpoint every 3 steps."""
    return subprocess.run([sys.executable, "-m", "adagrpo", "fit", *args], env=cli_env(ADAGRPO_RESUME_EVERY="3"),
                          cwd=root, capture_output=True, text=True, timeout=600)


def kill_after(step: int) -> str:
    """The option that adds :class:`KillAfterSaves` to a fit: SIGKILL once its periodic checkpoint holds ``step``."""
    killer = {"class_path": "reliability_helpers.KillAfterSaves", "init_args": {"step": step}}
    return f"--trainer.callbacks+={json.dumps(killer)}"


def tree_digest(*roots: Path) -> str:
    """One hash of every file (path and bytes) under ``roots`` (a missing root hashes as absent)."""
    h = hashlib.sha256()
    for root in roots:
        root = Path(root)
        if root.is_file():
            h.update(str(root).encode() + root.read_bytes())
            continue
        if not root.exists():
            h.update(f"{root}:absent".encode())
            continue
        for dirpath, _, files in sorted(os.walk(root)):
            for name in sorted(files):
                p = Path(dirpath) / name
                h.update(str(p).encode() + p.read_bytes())
    return h.hexdigest()


class KillAfterSaves(L.Callback):
    """Kills its own process with SIGKILL (no cleanup, no hook runs) once ``resume/last.ckpt`` holds step ``step``
    or later: a fit killed after its second periodic checkpoint."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        import json
        import signal

        running = Path(os.environ["ADAGRPO_RECORD_DIR"]) / "running.json"
        if running.is_file() and (json.loads(running.read_text()).get("global_step") or 0) >= self.step:
            if json.loads(running.read_text()).get("checkpoint"):
                os.kill(os.getpid(), signal.SIGKILL)


class BatchLog(L.Callback):
    """Appends ``global_step batch_idx sum(input_ids) lr`` of every training batch to ``path`` (debugging aid)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        w = float(next(pl_module.parameters()).detach().double().sum())
        with open(self.path, "a") as fh:
            fh.write(f"{trainer.global_step} {batch_idx} {int(batch.input_ids.sum())} {lr:.6g} {w:.10g}\n")
