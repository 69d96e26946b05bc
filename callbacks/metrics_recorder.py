"""Per-step, per-rank metric records: one JSON line per training step in ``<path>/rank<r>.jsonl``.

Used to compare loss trajectories across runs (one process vs DDP vs FSDP2, a fit vs its resumption)::

    adagrpo fit --config ... --trainer.callbacks+='{"class_path": "adagrpo.callbacks.StepMetricsRecorder",
                                                    "init_args": {"path": "out/metrics", "keys": ["loss/nll"]}}'

Every rank writes its own file (its own, unreduced values: what ``self.log`` received on that rank), and
lines are appended, so a resumed fit continues the same file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        value = value.detach().float().item()
    if isinstance(value, (int, float)):
        return float(value)  # NaN/inf are written as JSON's NaN/Infinity (read back by json.loads)
    return None


class StepMetricsRecorder(Callback):
    """Append ``{"rank", "step", "batch_idx", "epoch", key: value, ...}`` after every training batch.

    Args:
        path: folder of the records (``rank<r>.jsonl`` per global rank; created if missing).
        keys: metric names to record, looked up in the trainer's ``callback_metrics`` (the values logged in
            this step on this rank) and then in the ``training_step`` output (e.g. ``loss``). A key found in
            neither is written as ``null``.

    ``step`` is ``trainer.global_step`` after the batch (optimizer steps taken so far, so the first batch is
    step 1 with automatic optimisation and one pass per batch).
    """

    def __init__(self, path: str, keys: list[str] | None = None) -> None:
        self.path = str(path)
        self.keys = list(keys or ["loss"])

    def file(self, rank: int) -> Path:
        return Path(self.path) / f"rank{rank}.jsonl"

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        metrics = trainer.callback_metrics
        out = outputs if isinstance(outputs, dict) else ({"loss": outputs} if outputs is not None else {})
        record: dict[str, Any] = {"rank": trainer.global_rank, "step": trainer.global_step, "batch_idx": batch_idx,
                                  "epoch": trainer.current_epoch}
        for key in self.keys:
            value = metrics.get(key) if key in metrics else out.get(key)
            record[key] = _scalar(value)
        path = self.file(trainer.global_rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


def read_records(path: str | Path) -> dict[int, list[dict]]:
    """``{rank: [record, ...]}`` from a recorder folder (records in file order)."""
    out: dict[int, list[dict]] = {}
    for f in sorted(Path(path).glob("rank*.jsonl")):
        rank = int(f.stem.removeprefix("rank"))
        out[rank] = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out
