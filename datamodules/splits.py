"""Train / validation / test splits of user sequences.

A split yields, per user, the training prefix (for SFT and RL prompts) and evaluation *targets*:
``(user, position)`` pairs meaning "predict item ``seq[position]`` from ``seq[:position]``".
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from adagrpo.datamodules.catalog import Interactions
from adagrpo.errors import ConfigError


@dataclass
class Split:
    """``train_end[u]``: the training prefix of user ``u`` is ``seq[:train_end[u]]``.
    ``val`` / ``test``: ``[M, 2]`` arrays of ``(user, position)`` targets.
    ``heldout``: ``[U]`` bool, users whose training prefixes no model is fit on (SFT windows, reward-model
    training logs, interaction-based SIDs); they supply the RL prompts of ``rl_users: heldout``. ``None`` = none."""

    train_end: np.ndarray  # [U]
    val: np.ndarray  # [Mv, 2]
    test: np.ndarray  # [Mt, 2]
    heldout: np.ndarray | None = None  # [U] bool

    def heldout_mask(self) -> np.ndarray:
        """``[U]`` bool: the held-out users (all False when there are none)."""
        return np.zeros(len(self.train_end), dtype=bool) if self.heldout is None else self.heldout

    def fit_end(self) -> np.ndarray:
        """``[U]``: where the prefix that models are fit on ends — ``train_end``, or 0 for held-out users."""
        return np.where(self.heldout_mask(), 0, self.train_end)


def heldout_users(num_users: int, fraction: float, seed: int) -> np.ndarray:
    """``[U]`` bool: a seeded random ``round(fraction · U)`` users (at least one, never all)."""
    if not 0 < fraction < 1:
        raise ConfigError("data.heldout_fraction", f"must be in (0, 1), got {fraction}")
    n = min(num_users - 1, max(1, int(round(fraction * num_users))))
    if n < 1:
        raise ConfigError("data.heldout_fraction", f"cannot hold out users from {num_users} user(s); need >= 2")
    mask = np.zeros(num_users, dtype=bool)
    mask[np.random.default_rng(seed).choice(num_users, n, replace=False)] = True
    return mask


def with_heldout_users(split: Split, fraction: float, seed: int) -> Split:
    """``split`` with a seeded slice of users held out of model fitting (see :class:`Split`); their
    validation and test targets stay (evaluation covers everyone)."""
    return replace(split, heldout=heldout_users(len(split.train_end), fraction, seed))


def leave_one_out(data: Interactions) -> Split:
    """Last item = test target, second-to-last = validation target, the rest trains (users need ≥ 3)."""
    lengths = data.lengths()
    if (lengths < 3).any():
        u = int(np.flatnonzero(lengths < 3)[0])
        raise ConfigError("split", f"leave-one-out needs sequences of length >= 3; user {data.user_ids[u]!r} "
                                   f"has {int(lengths[u])} (raise the source's min_length or drop short users)")
    users = np.arange(data.num_users)
    return Split(
        train_end=lengths - 2,
        val=np.stack([users, lengths - 2], axis=1),
        test=np.stack([users, lengths - 1], axis=1),
    )


def ratio_split(data: Interactions, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> Split:
    """Positional split of each sequence: the first ``ratios[0]`` of positions train, the next
    ``ratios[1]`` are validation targets, the rest test targets (each user keeps ≥ 1 of each when
    the sequence has ≥ 3 items; a 2-item sequence gets a test target only, a 1-item one trains only)."""
    if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1) > 1e-6:
        raise ConfigError("ratios", f"must be three non-negative numbers summing to 1, got {ratios}")
    lengths = data.lengths()
    # A test target needs >= 1 training item before it, a validation target >= 2 items: shorter sequences
    # only train (never is a held-out item also a training item).
    n_test = np.where(lengths >= 2, np.maximum(1, np.floor(lengths * ratios[2] + 0.5)), 0).astype(np.int64)
    n_val = np.where(lengths >= 3, np.maximum(1, np.floor(lengths * ratios[1] + 0.5)), 0).astype(np.int64)
    train_end = np.maximum(1, lengths - n_test - n_val)
    val_end = np.minimum(lengths - n_test, train_end + n_val)
    val, test = [], []
    for u in range(data.num_users):
        val.extend((u, p) for p in range(int(train_end[u]), int(val_end[u])))
        test.extend((u, p) for p in range(int(val_end[u]), int(lengths[u])))
    return Split(train_end=train_end, val=np.asarray(val, dtype=np.int64).reshape(-1, 2),
                 test=np.asarray(test, dtype=np.int64).reshape(-1, 2))


def user_folds(num_users: int, folds: int, seed: int) -> np.ndarray:
    """``[U]`` int: each user's cross-fitting fold in ``0 .. folds-1`` (a seeded permutation cut into near-equal
    folds). The reward data's ``crossfit_*`` options and :class:`~adagrpo.lightning_modules.crossfit.CrossFitReward`
    call this with the same ``folds`` and ``seed``, so each user is scored by the model trained without them."""
    if folds < 2:
        raise ConfigError("crossfit_folds", f"must be >= 2, got {folds}")
    if folds > num_users:
        raise ConfigError("crossfit_folds", f"{folds} folds for {num_users} users: every fold needs a user")
    out = np.empty(num_users, dtype=np.int64)
    out[np.random.default_rng(seed).permutation(num_users)] = np.arange(num_users) % folds
    return out
