"""The reward model's DataModule: exposure logs (clicks vs exposed-not-clicked) over the same catalogue,
semantic IDs and splits as the policy's data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from adagrpo.datamodules.exposure import ExposureLog, ExposureSpec, ExposureSplits, SimulatedExposure, WorldExposure
from adagrpo.datamodules.semantic_ids import SidBuilder
from adagrpo.datamodules.sequence import SeqRecDataModule, _left_pad, _Rows
from adagrpo.datamodules.sources import DataSource
from adagrpo.datamodules.splits import user_folds
from adagrpo.errors import ConfigError


@dataclass
class ExposureBatch:
    """``history [B, H]`` item indices (left-padded with -1; the scored items are never in it),
    ``items [B, S]`` shown items, ``labels [B, S]`` (1 click, 0 not, -1 empty slot),
    ``user [B]``, ``position [B]``."""

    history: torch.Tensor
    items: torch.Tensor
    labels: torch.Tensor
    user: torch.Tensor
    position: torch.Tensor

    def __len__(self) -> int:
        return self.items.shape[0]


class RewardDataModule(SeqRecDataModule):
    """Exposure logs for training and evaluating a reward model (a ranker).

    The other arguments are :class:`SeqRecDataModule`'s. With ``rl_users: heldout`` the held-out users' events
    are dropped from the *training* log (the logging policy itself is unchanged); validation and test logs keep
    every user.

    Args:
        exposure: where the logs come from (``class_path`` of an
            :class:`~adagrpo.datamodules.exposure.ExposureSpec`); default: the synthetic world's own logging
            policy for the synthetic source, simulated exposure (popularity^α + co-occurrence) otherwise.
        crossfit_folds: cross-fitting: split the users into this many seeded folds (``crossfit_seed``) and drop the
            training events of the users of fold ``crossfit_fold``; train one reward model per fold and score with
            :class:`~adagrpo.lightning_modules.crossfit.CrossFitReward` (same folds and seed), so every user is
            scored by a model that never trained on them. ``None``: no cross-fitting.
        crossfit_fold: the fold left out of this model's training log (``0 .. crossfit_folds-1``).
        crossfit_seed: seeds the fold assignment.
        batch_size: per-process batch size of training (exposure rows).
        eval_batch_size: per-process batch size of validation and test.
    """

    def __init__(
        self,
        source: DataSource | None = None,
        sids: SidBuilder | None = None,
        exposure: ExposureSpec | None = None,
        split: Literal["leave_one_out", "ratio"] = "leave_one_out",
        ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
        max_history: int = 20,
        rl_users: Literal["all", "heldout"] = "all",
        heldout_fraction: float = 0.2,
        heldout_seed: int = 0,
        crossfit_folds: int | None = None,
        crossfit_fold: int = 0,
        crossfit_seed: int = 0,
        batch_size: int = 256,
        eval_batch_size: int = 512,
        max_eval_samples: int | None = None,
        max_test_samples: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        use_cache: bool = True,
    ) -> None:
        super().__init__(source=source, sids=sids, split=split, ratios=ratios, max_history=max_history,
                         train_mode="sft", rl_users=rl_users, heldout_fraction=heldout_fraction,
                         heldout_seed=heldout_seed, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         max_eval_samples=max_eval_samples, max_test_samples=max_test_samples,
                         num_workers=num_workers, seed=seed, use_cache=use_cache)
        if crossfit_folds is not None:
            if crossfit_folds < 2:
                raise ConfigError("data.crossfit_folds",
                                  f"must be >= 2 (or null for no cross-fitting), got {crossfit_folds}")
            if not 0 <= crossfit_fold < crossfit_folds:
                raise ConfigError("data.crossfit_fold", f"must be in 0..{crossfit_folds - 1}, got {crossfit_fold}")
        self.crossfit_folds = crossfit_folds
        self.crossfit_fold = crossfit_fold
        self.crossfit_seed = crossfit_seed
        self.exposure_spec = exposure
        self.logs: ExposureSplits | None = None

    def prepare(self) -> None:
        if self._prepared:
            return
        super().prepare()
        spec = self.exposure_spec
        if spec is None:
            spec = WorldExposure() if getattr(self.source, "world", None) is not None else SimulatedExposure()
            self.exposure_spec = spec
        self.logs = spec.build(self.data, self.split.train_end, self.source)
        heldout = self.split.heldout_mask()
        if heldout.any():  # no held-out user's event trains the reward model
            self.logs.train = self.logs.train.select(~heldout[self.logs.train.user])
        if self.crossfit_folds is not None:  # this model never trains on the users of its left-out fold
            fold = user_folds(self.data.num_users, self.crossfit_folds, self.crossfit_seed)
            self.logs.train = self.logs.train.select(fold[self.logs.train.user] != self.crossfit_fold)

    # ---------------------------------------------------------------------------------- batches
    def exposure_batch(self, log: ExposureLog, rows: list[int] | np.ndarray) -> ExposureBatch:
        rows = np.asarray(rows)
        users, positions = log.user[rows], log.position[rows]
        items = log.items[rows]  # [B, S]
        h = self.max_history
        histories = []
        for u, p, shown in zip(users, positions, items):
            seq = self.data.sequence(int(u))[: int(p)]
            seq = seq[~np.isin(seq, shown)]  # a scored item never appears in its own history
            histories.append(seq[-h:])
        return ExposureBatch(
            history=torch.from_numpy(_left_pad(histories, h)),
            items=torch.from_numpy(items.copy()),
            labels=torch.from_numpy(log.labels[rows].copy()),
            user=torch.from_numpy(users.copy()),
            position=torch.from_numpy(positions.copy()),
        )

    def _log_loader(self, log: ExposureLog, batch_size: int, shuffle: bool) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(_Rows(len(log)), batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=lambda rows: self.exposure_batch(log, rows), generator=gen if shuffle else None)

    def _capped(self, log: ExposureLog, cap: int | None) -> ExposureLog:
        if cap is None or len(log) <= cap:
            return log
        keep = np.zeros(len(log), dtype=bool)
        keep[np.random.default_rng(self.eval_seed).choice(len(log), cap, replace=False)] = True
        return log.select(keep)

    def train_dataloader(self) -> DataLoader:
        self.prepare()
        return self._log_loader(self.logs.train, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self.prepare()
        return self._log_loader(self._capped(self.logs.val, self.max_eval_samples), self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        self.prepare()
        log = self._capped(self.logs.test, self.max_test_samples)
        return self._log_loader(log, self.eval_batch_size, shuffle=False)

    def report(self) -> dict:
        out = super().report()
        self.prepare()
        out["exposure"] = {
            "spec": type(self.exposure_spec).__name__,
            **{f"{name}_events": len(getattr(self.logs, name)) for name in ("train", "val", "test")},
            "train_positive_rate": self.logs.train.positive_rate(),
            "unbiased_events": len(self.logs.unbiased) if self.logs.unbiased is not None else 0,
            "heldout_users": int(self.split.heldout_mask().sum()),
            "crossfit": None if self.crossfit_folds is None else f"fold {self.crossfit_fold} of {self.crossfit_folds} "
                                                                  f"left out (seed {self.crossfit_seed})",
        }
        return out
