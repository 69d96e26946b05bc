"""Four `adagrpo fit` processes started at the same moment on a fresh SQLite MLflow store all finish, and all four
runs are recorded (the schema and the experiment are created once, under a file lock)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest
from reliability_helpers import EXPERIMENT, SFT, cli_env

from adagrpo.mlflow_store import sqlite_path

# `adagrpo fit <argv>` (adagrpo.cli.main, the console script's function) once every process has imported Lightning
# and MLflow: their start-up takes seconds and differs between processes, so without this line up the fits would
# reach the store one after another. (A process that waits 300 s for the others goes ahead alone.)
WORKER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import adagrpo.lightning_cli, mlflow.tracking
    from adagrpo.cli import main
    ready, n = Path(sys.argv[1]), int(sys.argv[2])
    (ready / str(os.getpid())).touch()
    deadline = time.time() + 300
    while len(list(ready.iterdir())) < n and time.time() < deadline:
        time.sleep(0.002)
    sys.exit(main(sys.argv[3:]))
""")

TINY_FIT = [*SFT, "--model.init_args.train_dtype", "float32", "--trainer.limit_train_batches", "2",
            "--data.init_args.max_eval_samples", "20"]


@pytest.mark.slow
def test_four_fits_at_once_on_a_fresh_store(tmp_path):
    db = tmp_path / "mlflow.db"
    env = cli_env(MLFLOW_TRACKING_URI=f"sqlite:///{db}", ADAGRPO_RUNS=str(tmp_path / "runs"), ADAGRPO_EXPERIMENT="",
                  ADAGRPO_RECORD_DIR="", ADAGRPO_DEBUG="")
    ready = tmp_path / "ready"
    ready.mkdir()
    names = [f"fit{i}" for i in range(4)]
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(ready), "4", "fit", *TINY_FIT, "--run_name", name],
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in names]
    deadline = time.time() + 900
    try:
        results = [p.communicate(timeout=max(1.0, deadline - time.time())) for p in procs]
    finally:
        for p in procs:  # none outlives the test
            if p.poll() is None:
                p.kill()
                p.wait()
    assert len(list(ready.iterdir())) == 4  # every process reached the line
    for name, p, (_, err) in zip(names, procs, results):
        assert p.returncode == 0, f"{name}: exit {p.returncode}\n{err[-3000:]}"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    assert [e.name for e in client.search_experiments()].count(EXPERIMENT) == 1
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert sorted(r.info.run_name for r in runs) == names
    assert all(r.info.status == "FINISHED" and "val/hr_10" in r.data.metrics for r in runs)
    for r in runs:  # each fit's record names its own MLflow run
        record = json.loads((tmp_path / "runs" / EXPERIMENT / r.info.run_name / "latest.json").read_text())
        assert record["mlflow_run_id"] == r.info.run_id


def test_sqlite_path():
    assert str(sqlite_path("sqlite:////abs/m.db")) == "/abs/m.db"
    assert str(sqlite_path("sqlite:///rel.db")) == "rel.db"
    assert sqlite_path("http://host:5000") is None and sqlite_path("sqlite:///:memory:") is None
