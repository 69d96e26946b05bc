"""The tiny synthetic world every module-level test trains on (200 users × 120 items, RQ-KMeans SIDs 3 × 8, history
5, no disk cache) and a quiet CPU trainer. One definition, so that SFT checkpoints trained on the conftest
``tiny_world_dm`` fit the DataModules other tests build from :func:`tiny_world_kwargs`."""

from __future__ import annotations

import lightning as L

from adagrpo import datamodules


def tiny_world_kwargs(seed: int = 0) -> dict:
    """SeqRecDataModule arguments: source, SIDs, max_history, use_cache (add train_mode, batch sizes)."""
    return dict(
        source=datamodules.SyntheticSource(num_users=200, num_items=120, max_length=20, seed=seed),
        sids=datamodules.RQKMeansSids(embeddings=datamodules.TextEmbeddings(dim=16), levels=3, codebook_size=8,
                                      iters=20),
        max_history=5,
        use_cache=False,
    )


def quiet_trainer(**kwargs) -> L.Trainer:
    """A CPU Trainer without logger, checkpointing, progress bar, summary, validation or sanity check."""
    base = dict(logger=False, enable_checkpointing=False, accelerator="cpu", enable_progress_bar=False,
                enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    base.update(kwargs)
    return L.Trainer(**base)
