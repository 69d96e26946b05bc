"""Records where a run's checkpoints are, in MLflow and in ``runs/<experiment>/<run_name>/``.

* While a fit runs: ``running.json`` (its MLflow run id, the resume checkpoint, the step) and, every
  ``every_n_train_steps`` optimizer steps whatever the monitored metric does, ``resume/last.ckpt`` (written
  atomically; one step later when a validation follows that step, so that the checkpoint holds its outcome).
  ``adagrpo fit … --resume`` continues from there, in the same MLflow run.
* When a fit completes: ``latest.json``, and the stable copies ``best.ckpt``/``last.ckpt`` that later stages read.
  ``best.ckpt`` is replaced only when the fit's best score is finite; ``running.json`` and ``resume/`` are removed.
  An interrupted or failed fit changes neither (the CLI refuses to start a fit over a recorded one without
  ``--force``).

``adagrpo test`` without ``--ckpt_path`` reads ``latest.json``; ``adagrpo compare`` reads the MLflow tags.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from adagrpo.datamodules.cache import atomic_write_text
from adagrpo.datamodules.resumable import validation_due

log = logging.getLogger(__name__)

RUNNING = "running.json"  # the record of a fit in progress (or killed)
RESUME_CKPT = Path("resume") / "last.ckpt"


class RunRecorder(Callback):
    """After ``fit``: tag the MLflow run with the best/last checkpoint paths and the best monitored
    score, copy the checkpoints to ``best.ckpt``/``last.ckpt`` and write ``latest.json`` (atomically) in
    the run's record folder (``record_dir``, else the CLI's ``runs/<experiment>/<run_name>``). During it: a
    resumable checkpoint every ``every_n_train_steps`` steps (see the module docstring).

    Args:
        record_dir: folder of ``latest.json`` and the stable copies (default: the CLI's record folder, else the
            trainer's ``default_root_dir``).
        every_n_train_steps: write ``resume/last.ckpt`` every this many optimizer steps (0 = never; default
            ``$ADAGRPO_RESUME_EVERY`` or 50).
    """

    def __init__(self, record_dir: str | None = None, every_n_train_steps: int | None = None) -> None:
        if every_n_train_steps is None:
            every_n_train_steps = int(os.environ.get("ADAGRPO_RESUME_EVERY", "50"))
        if every_n_train_steps < 0:
            from adagrpo.datamodules.errors import ConfigError

            raise ConfigError("RunRecorder.every_n_train_steps", f"must be >= 0, got {every_n_train_steps}")
        self.record_dir = record_dir
        self.every_n_train_steps = every_n_train_steps
        self._last_resume_step = -1
        self._deferred = False  # a periodic checkpoint due at a validation step, written at the next step

    def _folder(self, trainer: L.Trainer) -> Path:
        return Path(self.record_dir or os.environ.get("ADAGRPO_RECORD_DIR") or trainer.default_root_dir)

    def _record_path(self, trainer: L.Trainer) -> Path:
        return self._folder(trainer) / "latest.json"

    # ----------------------------------------------------------------------------------------- while running
    def _mlflow(self, trainer: L.Trainer) -> dict:
        from lightning.pytorch.loggers import MLFlowLogger

        for lg in trainer.loggers:
            if isinstance(lg, MLFlowLogger):
                return {"mlflow_run_id": lg.run_id, "mlflow_experiment": lg.name,
                        "tracking_uri": getattr(lg, "_tracking_uri", None)}
        return {}

    def _write_running(self, trainer: L.Trainer, checkpoint: str | None) -> None:
        folder = self._folder(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        info = {**self._mlflow(trainer), "checkpoint": checkpoint, "global_step": trainer.global_step,
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "pid": os.getpid()}
        atomic_write_text(folder / RUNNING, json.dumps(info, indent=2))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.fast_dev_run or not trainer.is_global_zero:
            return
        self._write_running(trainer, str(trainer.ckpt_path) if trainer.ckpt_path else None)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,  # noqa: ANN001
                           batch_idx: int) -> None:
        n = self.every_n_train_steps
        step = trainer.global_step
        if not n or trainer.fast_dev_run or step == 0 or step == self._last_resume_step:
            return
        if step % n and not self._deferred:
            return
        if not self._deferred and validation_due(trainer):
            # Lightning resumes a checkpoint written here after the validation that follows this step, without
            # running it: its score, best checkpoint and early-stopping count would be lost. Write it one step later.
            self._deferred = True
            return
        self._deferred = False
        self._last_resume_step = step
        self.save_resume_checkpoint(trainer)

    def save_resume_checkpoint(self, trainer: L.Trainer) -> Path:
        """Write ``resume/last.ckpt`` atomically (a temporary name, then a rename) and point ``running.json`` at it.
        Collective: every rank calls it."""
        dest = self._folder(trainer) / RESUME_CKPT
        tmp = dest.with_name(f".{dest.name}.tmp")
        if trainer.is_global_zero:
            dest.parent.mkdir(parents=True, exist_ok=True)
        trainer.strategy.barrier("adagrpo_resume_dir")
        # second argument: Trainer.save_checkpoint's weights_only, a save option (False = the full training state,
        # as ModelCheckpoint passes it); unset, Lightning logs a 'defaulting to False' line at every save
        trainer.save_checkpoint(str(tmp), False)
        if trainer.is_global_zero:
            if tmp.is_dir():  # a sharded checkpoint is a folder
                shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
            self._write_running(trainer, str(dest.resolve()))
        trainer.strategy.barrier("adagrpo_resume_saved")
        return dest

    # ----------------------------------------------------------------------------------------- at the end
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
        trainer.save_checkpoint(str(path), False)  # the full training state (see save_resume_checkpoint)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.interrupted or trainer.fast_dev_run:
            return  # an interrupted fit leaves the recorded results (and running.json, to resume) as they are
        ckpt = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        score = float(ckpt.best_model_score) if ckpt and ckpt.best_model_score is not None else None
        finite = score is None or math.isfinite(score)
        info = {
            "best": str(Path(ckpt.best_model_path).resolve()) if ckpt and ckpt.best_model_path and finite else None,
            "last": str(Path(ckpt.last_model_path).resolve()) if ckpt and ckpt.last_model_path else None,
            "best_score": score,
            "monitor": ckpt.monitor if ckpt else None,
            "global_step": trainer.global_step,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        if not finite:
            info["warning"] = (f"best {ckpt.monitor} is {score}: no best checkpoint recorded; an earlier best.ckpt "
                               "in this folder (if any) was kept")
            log.warning("RunRecorder: %s", info["warning"])
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
            # Stable names next to the record, so later stages can name runs/<experiment>/best.ckpt: hard links to
            # Lightning's files (no second copy on disk; a completed fit's checkpoint folder, named by its MLflow run,
            # is never written again), or copies where the filesystem cannot link.
            for key in ("best", "last"):
                if info[key]:
                    dest = record.parent / f"{key}.ckpt"
                    tmp = dest.with_suffix(".ckpt.tmp")
                    tmp.unlink(missing_ok=True)
                    link_or_copy(info[key], tmp)
                    os.replace(tmp, dest)
                    info[f"{key}_copy"] = str(dest.resolve())
            atomic_write_text(record, json.dumps(info, indent=2))
            (record.parent / RUNNING).unlink(missing_ok=True)  # completed: nothing to resume
            shutil.rmtree(record.parent / RESUME_CKPT.parent, ignore_errors=True)


def link_or_copy(src: str | os.PathLike, dest: str | os.PathLike) -> str:
    """Hard-link ``src`` at ``dest`` (a new name for the same file, no extra disk), or copy it when the filesystem
    cannot (another device, links unsupported). Returns ``"link"`` or ``"copy"``."""
    try:
        os.link(src, dest)
        return "link"
    except OSError:
        shutil.copy2(src, dest)
        return "copy"
