"""Helpers of the reliability tests (a module of its own: conftest files are not importable by name)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import lightning as L

from adagrpo import datamodules

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def world_kwargs() -> dict:
    # The conftest `tiny_world_dm` world and SIDs, so SFT checkpoints trained there fit here.
    return dict(
        source=datamodules.SyntheticSource(num_users=200, num_items=120, max_length=20, seed=0),
        sids=datamodules.RQKMeansSids(embeddings=datamodules.TextEmbeddings(dim=16), levels=3, codebook_size=8,
                                      iters=20),
        max_history=5,
        use_cache=False,
    )


def quiet_trainer(**kwargs) -> L.Trainer:
    base = dict(logger=False, enable_checkpointing=False, accelerator="cpu", enable_progress_bar=False,
                enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    base.update(kwargs)
    return L.Trainer(**base)


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
