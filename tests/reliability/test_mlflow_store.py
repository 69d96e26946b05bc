"""Four processes starting at the same moment on a fresh SQLite MLflow store all succeed, and all four runs are
recorded (the schema and the experiment are created once, under a file lock)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from adagrpo.mlflow_store import sqlite_path

WORKER = textwrap.dedent("""
    import sys, time
    from adagrpo.mlflow_store import ensure_store
    uri, name, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
    while time.time() < start:  # every process touches the store at the same moment
        time.sleep(0.005)
    ensure_store(uri, "concurrent")
    # What Lightning's MLFlowLogger does on first use: find the experiment, open a run, log, end it.
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("concurrent")
    run = client.create_run(exp.experiment_id, run_name=name)
    client.log_metric(run.info.run_id, "x", 1.0, step=0)
    client.set_terminated(run.info.run_id, "FINISHED")
    print("ok", run.info.run_id)
""")


@pytest.mark.slow
def test_four_concurrent_loggers_on_a_fresh_store(tmp_path):
    import time

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    start = time.time() + 8  # after every interpreter has started
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, uri, f"run{i}", str(start)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path) for i in range(4)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
        assert out.startswith("ok"), out
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("concurrent")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["run0", "run1", "run2", "run3"]
    assert all(r.info.status == "FINISHED" and r.data.metrics["x"] == 1.0 for r in runs)


def test_sqlite_path():
    assert str(sqlite_path("sqlite:////abs/m.db")) == "/abs/m.db"
    assert str(sqlite_path("sqlite:///rel.db")) == "rel.db"
    assert sqlite_path("http://host:5000") is None and sqlite_path("sqlite:///:memory:") is None
