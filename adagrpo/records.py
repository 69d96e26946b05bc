"""Where a fit's record lives: ``$ADAGRPO_RUNS`` (default ``runs``)/<experiment>/<run_name>/latest.json, written
by :class:`~adagrpo.callbacks.run_recorder.RunRecorder`. Read by commands that find a recorded fit (``predict``)
without importing the Lightning CLI (which dispatches to them)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def record_dir(experiment: str, run_name: str) -> Path:
    """Where a fit records its checkpoints: ``$ADAGRPO_RUNS`` (default ``runs``)/experiment/run_name."""
    return Path(os.environ.get("ADAGRPO_RUNS", "runs")) / experiment / run_name


def read_record(experiment: str, run_name: str) -> dict | None:
    """The fit's ``latest.json`` (None when there is none)."""
    path = record_dir(experiment, run_name) / "latest.json"
    return json.loads(path.read_text()) if path.exists() else None
