"""Cross-fitted reward: K reward models, each trained without one fold of users, and every user scored by the
model that did not train on them — so the reward side of the rollout diagnostics is out of sample.

Train the K models with the reward data's cross-fitting options (``configs/data/synthetic_reward_crossfit.yaml``),
one run per fold::

    for f in 0 1 2 3 4; do
      adagrpo fit --config configs/experiments/reward.yaml --data configs/data/synthetic_reward_crossfit.yaml \\
          --data.init_args.crossfit_fold $f --run_name reward-fold$f
    done

then give GRPO (or ``adagrpo analyze``'s library API) the reward::

    reward:
      class_path: adagrpo.lightning_modules.crossfit.CrossFitReward
      init_args:
        checkpoints: [runs/synthetic/reward-fold0/best.ckpt, ..., runs/synthetic/reward-fold4/best.ckpt]
        seed: 0   # the data config's crossfit_seed

Checkpoint ``f`` must be the one trained with ``crossfit_fold: f``, and ``len(checkpoints)`` and ``seed`` must
equal the data config's ``crossfit_folds`` and ``crossfit_seed``.
"""

from __future__ import annotations

import torch

from adagrpo.datamodules.sequence import SeqRecDataModule
from adagrpo.datamodules.splits import user_folds
from adagrpo.errors import ConfigError
from adagrpo.lightning_modules.reward import RewardModel, TrainedReward


class CrossFitReward(RewardModel):
    """Dispatches each user to the reward model of their fold (the one trained without them).

    Args:
        checkpoints: reward-model checkpoints, the ``f``-th trained with ``crossfit_fold: f``.
        seed: the fold assignment's seed (the reward data's ``crossfit_seed``).
        members: instead of ``checkpoints``, reward models already built (one per fold, in fold order).
    """

    def __init__(self, checkpoints: list[str] | None = None, seed: int = 0,
                 members: list[RewardModel] | None = None) -> None:
        super().__init__()
        if (checkpoints is None) == (members is None):
            raise ConfigError("reward.checkpoints", "give exactly one of `checkpoints` or `members`")
        models = [TrainedReward(c) for c in checkpoints] if checkpoints is not None else list(members)
        if len(models) < 2:
            raise ConfigError("reward.checkpoints", f"cross-fitting needs >= 2 fold models, got {len(models)}")
        self.members = torch.nn.ModuleList(models)
        self.seed = seed
        self.fold_of: torch.Tensor | None = None

    @property
    def folds(self) -> int:
        return len(self.members)

    def attach(self, data: SeqRecDataModule) -> None:
        super().attach(data)
        self.fold_of = torch.from_numpy(user_folds(data.data.num_users, self.folds, self.seed))  # [U]
        for member in self.members:
            member.attach(data)

    @torch.no_grad()
    def score(self, histories: torch.Tensor, items: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        if users is None:
            raise ValueError("CrossFitReward needs the users of the batch (score(..., users=...))")
        fold = self.fold_of.to(users.device)[users]  # [B]
        out = torch.zeros(items.shape, dtype=torch.float32, device=items.device)
        for f, member in enumerate(self.members):
            rows = fold == f
            if rows.any():
                out[rows] = member.score(histories[rows], items[rows], users[rows]).float()
        return out.masked_fill(items < 0, 0.0)
