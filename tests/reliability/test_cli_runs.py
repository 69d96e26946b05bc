"""Runs through the real `adagrpo` CLI on a tiny SFT: a rerun never silently replaces a recorded fit (refused with
exit code 2 and nothing changed; --force replaces), a fit that fails on the project's own error exits 2 with one
line and tags its FAILED MLflow run, and a fit killed with SIGKILL after its second periodic checkpoint resumes
with the documented command to the uninterrupted run's final numbers, in one MLflow run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reliability_helpers import tree_digest

from adagrpo.cli import main

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
HERE = Path(__file__).resolve().parent
EXPERIMENT = "synthetic"

SFT = ["--config", str(CONFIGS / "experiments" / "sft.yaml"),
       "--model.init_args.policy", str(CONFIGS / "model" / "policy_tiny.yaml"),
       "--data.init_args.source.init_args.num_users", "150", "--data.init_args.source.init_args.num_items", "100",
       "--data.init_args.max_eval_samples", "40", "--data.init_args.max_test_samples", "40",
       "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4", "--trainer.log_every_n_steps", "1",
       "--trainer.enable_progress_bar", "false"]


def run(argv: list[str], capsys) -> tuple[int, str]:
    """``adagrpo <argv>`` in-process: exit code and stderr."""
    try:
        rc = main(argv)
    except SystemExit as exit_:
        rc = exit_.code if isinstance(exit_.code, int) else 1
    return int(rc or 0), capsys.readouterr().err


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("ADAGRPO_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("ADAGRPO_EXPERIMENT", "")
    monkeypatch.setenv("ADAGRPO_RECORD_DIR", "")
    monkeypatch.setenv("ADAGRPO_DEBUG", "")
    return tmp_path


def mlflow_runs(root: Path, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    return [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == name]


def test_rerun_refused_force_replaces_and_errors_tag_the_run(world, capsys):
    rc, err = run(["fit", *SFT], capsys)
    assert rc == 0, err
    folder = world / "runs" / EXPERIMENT / "sft"  # sft.yaml names the run
    first = json.loads((folder / "latest.json").read_text())
    assert (folder / "best.ckpt").is_file() and not (folder / "running.json").exists()
    assert not (folder / "resume").exists()  # removed once the fit completed

    before = tree_digest(world / "runs", world / "mlflow.db")
    rc, err = run(["fit", *SFT], capsys)
    assert rc == 2, err
    assert "synthetic/sft already has a recorded fit" in err and "--force" in err and "Traceback" not in err
    assert tree_digest(world / "runs", world / "mlflow.db") == before  # nothing written, no MLflow run
    rc, err = run(["fit", *SFT, "--resume"], capsys)
    assert rc == 2 and "cannot resume synthetic/sft" in err, err
    assert tree_digest(world / "runs", world / "mlflow.db") == before

    rc, err = run(["fit", *SFT, "--force"], capsys)
    assert rc == 0, err
    assert json.loads((folder / "latest.json").read_text())["mlflow_run_id"] != first["mlflow_run_id"]

    # A fit that diverges: every step NaN/inf → stopped with one line, exit 2, its MLflow run FAILED with the reason;
    # the recorded fit of another run name is untouched.
    before = tree_digest(folder)
    rc, err = run(["fit", *SFT, "--run_name", "diverges", "--model.init_args.optimizer", "torch.optim.SGD",
                   "--model.init_args.optimizer.init_args.lr", "1e30", "--model.init_args.scheduler", "null",
                   "--trainer.max_epochs", "8"], capsys)  # 2 batches an epoch
    assert rc == 2, err
    assert "adagrpo fit: NonFiniteTraining:" in err and "Traceback" not in err, err
    failed = mlflow_runs(world, "diverges")
    assert len(failed) == 1 and failed[0].info.status == "FAILED"
    assert failed[0].data.tags["adagrpo.error"].startswith("NonFiniteTraining")
    assert not (world / "runs" / EXPERIMENT / "diverges" / "latest.json").exists()
    assert tree_digest(folder) == before


def test_debug_env_shows_the_traceback(world, capsys, monkeypatch):
    monkeypatch.setenv("ADAGRPO_DEBUG", "1")
    from adagrpo.datamodules.errors import ConfigError

    with pytest.raises(ConfigError, match="beam_width"):
        main(["fit", *SFT, "--model.init_args.beam_width", "1000"])


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(world):
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "ADAGRPO_RESUME_EVERY": "3", "OMP_NUM_THREADS": "1"}
    # 4 batches an epoch, 12 steps; periodic checkpoints at steps 3 and 6 (two batches into the second epoch)
    args = [*SFT, "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "4", "--data.init_args.batch_size", "8"]

    def fit(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "adagrpo", "fit", *args, *extra], env=env, cwd=world,
                              capture_output=True, text=True, timeout=600)

    full = fit("--run_name", "full")
    assert full.returncode == 0, full.stderr[-3000:]
    killer = '{"class_path": "reliability_helpers.KillAfterSaves", "init_args": {"step": 6}}'
    killed = fit("--run_name", "sft", f"--trainer.callbacks+={killer}")
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL: no hook ran after the second save
    folder = world / "runs" / EXPERIMENT / "sft"
    running = json.loads((folder / "running.json").read_text())
    assert running["global_step"] == 6 and Path(running["checkpoint"]).is_file()
    assert not (folder / "latest.json").exists()
    resumed = fit("--run_name", "sft", "--resume")  # the documented command
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    rec_full = json.loads((world / "runs" / EXPERIMENT / "full" / "latest.json").read_text())
    rec = json.loads((folder / "latest.json").read_text())
    assert rec["global_step"] == rec_full["global_step"] == 12
    a = torch.load(rec_full["last_copy"], map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(rec["last_copy"], map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed parameters differ from the uninterrupted fit"
    assert rec["best_score"] == rec_full["best_score"]
    runs = mlflow_runs(world, "sft")
    assert len(runs) == 1 and runs[0].info.run_id == running["mlflow_run_id"] == rec["mlflow_run_id"]
    assert runs[0].info.status == "FINISHED"
    ref = mlflow_runs(world, "full")[0]
    for key in ("val/hr_10", "loss/nll"):
        assert runs[0].data.metrics[key] == ref.data.metrics[key], key
