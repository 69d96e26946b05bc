"""Records where a run's checkpoints are, in MLflow and in ``runs/<experiment>/<run_name>/latest.json``.

``adagrpo test`` without ``--ckpt_path`` reads ``latest.json`` to find the best (or last) checkpoint of
the latest ``fit``; later stages name the stable copies ``best.ckpt`` / ``last.ckpt`` next to it;
``adagrpo compare`` reads the MLflow tags.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from adagrpo.datamodules.cache import atomic_write_text


class RunRecorder(Callback):
    """After ``fit``: tag the MLflow run with the best/last checkpoint paths and the best monitored
    score, copy the checkpoints to ``best.ckpt``/``last.ckpt`` and write ``latest.json`` (atomically) in
    the run's record folder (``record_dir``, else the CLI's ``runs/<experiment>/<run_name>``)."""

    def __init__(self, record_dir: str | None = None) -> None:
        self.record_dir = record_dir

    def _record_path(self, trainer: L.Trainer) -> Path:
        folder = self.record_dir or os.environ.get("ADAGRPO_RECORD_DIR") or trainer.default_root_dir
        return Path(folder) / "latest.json"

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Make ``last`` the final state. Since Lightning 2.6, ``ModelCheckpoint(save_last=True)`` writes
        ``last.ckpt`` only at steps where it also saves a top-k checkpoint, so with ``save_top_k=1`` "last" is
        the best checkpoint whenever the monitored metric stops improving. Called on every rank (a sharded
        save is collective)."""
        ckpt = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        if ckpt is None or not ckpt.save_last or trainer.fast_dev_run or ckpt.dirpath is None:
            return
        if ckpt.last_model_path and getattr(ckpt, "_last_global_step_saved", None) == trainer.global_step:
            return  # a checkpoint (and so "last") was written at the final step already
        path = Path(ckpt.dirpath) / f"{ckpt.CHECKPOINT_NAME_LAST}{ckpt.FILE_EXTENSION}"
        ckpt.last_model_path = str(path)
        trainer.save_checkpoint(str(path))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ckpt = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        info = {
            "best": str(Path(ckpt.best_model_path).resolve()) if ckpt and ckpt.best_model_path else None,
            "last": str(Path(ckpt.last_model_path).resolve()) if ckpt and ckpt.last_model_path else None,
            "best_score": float(ckpt.best_model_score) if ckpt and ckpt.best_model_score is not None else None,
            "monitor": ckpt.monitor if ckpt else None,
            "global_step": trainer.global_step,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        from lightning.pytorch.loggers import MLFlowLogger

        for lg in trainer.loggers:
            if isinstance(lg, MLFlowLogger):
                info["mlflow_run_id"] = lg.run_id
                info["mlflow_experiment"] = lg.name
                for key in ("best", "last"):
                    if info[key]:
                        lg.experiment.set_tag(lg.run_id, f"checkpoint.{key}", info[key])
                if info["best_score"] is not None:
                    lg.experiment.set_tag(lg.run_id, "checkpoint.best_score", str(info["best_score"]))
        if trainer.is_global_zero:
            record = self._record_path(trainer)
            record.parent.mkdir(parents=True, exist_ok=True)
            # Stable copies next to the record, so later stages can name runs/<experiment>/best.ckpt.
            for key in ("best", "last"):
                if info[key]:
                    dest = record.parent / f"{key}.ckpt"
                    tmp = dest.with_suffix(".ckpt.tmp")
                    shutil.copy2(info[key], tmp)
                    os.replace(tmp, dest)
                    info[f"{key}_copy"] = str(dest.resolve())
            atomic_write_text(record, json.dumps(info, indent=2))
