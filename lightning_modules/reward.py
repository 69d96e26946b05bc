"""The reward model: a ranker trained on exposure-biased logs, and the interface GRPO calls.

* :class:`RewardNet` — a SASRec-style transformer over the history gives a user state; an item is the
  sum of its SID-token embeddings (so rarely shown items share statistics with their neighbours in
  the SID tree); the score is a dot product plus a SID-level bias, or an MLP.
* :class:`RewardModelModule` — trains it with BCE on clicked vs exposed-not-clicked items and writes
  the bias report at test time.
* :class:`RewardModel` — what GRPO uses: ``score(histories, items) -> [B, N]``, batched, no grad, on
  the policy's device. Implementations: :class:`TrainedReward` (a RewardModelModule checkpoint),
  :class:`TorchReward` (any module a user brings), :class:`OracleReward` (the synthetic world's truth)
  and :class:`NoisyReward` (truth plus popularity-dependent noise).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from adagrpo.datamodules.reward_data import ExposureBatch, RewardDataModule
from adagrpo.datamodules.sequence import SeqRecDataModule
from adagrpo.datamodules.synthetic import hash_uniform as _hash_uniform
from adagrpo.errors import ConfigError
from adagrpo.lightning_modules.base import CKPT_KEY, IncompatibleCheckpoint, check_signature
from adagrpo.lightning_modules.checkpoint_io import load_checkpoint, load_module_file
from adagrpo.lightning_modules.finite import FiniteSteps
from adagrpo.lightning_modules.metrics import auc  # noqa: F401  (re-exported: adagrpo.lightning_modules.reward.auc)
from adagrpo.lightning_modules.optim import build_optimizers


class RewardNet(nn.Module):
    """Scores ``items [B, S]`` for ``history [B, H]`` (item indices, -1 = padding / invalid).

    Args:
        codes: ``[N, L]`` the item → SID table (a buffer: the network is tied to its catalogue).
        codebook_sizes: codes per level.
        dim: embedding width.
        num_layers: layers of the history transformer.
        num_heads: attention heads of the history transformer.
        max_history: longest history (positional embeddings).
        dropout: dropout in the transformer and embeddings.
        scorer: ``dot`` (state · item + bias) or ``mlp``.
        item_id_embedding: also learn a per-item vector (sharper for head items, nothing for the tail).
        user_features: ``[U, F]`` features of every user (a buffer), projected into the user state — reward-side
            information the policy never sees (e.g. the synthetic world's noisy user features); None = none.
    """

    def __init__(
        self,
        codes: torch.Tensor,
        codebook_sizes: list[int],
        dim: int = 64,
        num_layers: int = 2,
        num_heads: int = 2,
        max_history: int = 20,
        dropout: float = 0.1,
        scorer: Literal["dot", "mlp"] = "dot",
        item_id_embedding: bool = False,
        user_features: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("codes", codes.long().clone())
        self.user_features: torch.Tensor | None
        if user_features is not None:
            self.register_buffer("user_features", user_features.float().clone())
            self.user_proj = nn.Linear(user_features.shape[1], dim)
        else:
            self.user_features = None
        self.codebook_sizes = list(codebook_sizes)
        self.level_emb = nn.ModuleList(nn.Embedding(c, dim) for c in codebook_sizes)
        self.level_bias = nn.ModuleList(nn.Embedding(c, 1) for c in codebook_sizes)
        self.item_emb = nn.Embedding(codes.shape[0], dim) if item_id_embedding else None
        self.start = nn.Parameter(torch.zeros(dim))
        self.pos = nn.Embedding(max_history + 1, dim)
        layer = nn.TransformerEncoderLayer(dim, num_heads, 4 * dim, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.scorer = scorer
        if scorer == "mlp":
            self.mlp = nn.Sequential(nn.Linear(3 * dim, dim), nn.GELU(), nn.Linear(dim, 1))
        elif scorer != "dot":
            raise ConfigError("model.scorer", f"must be dot or mlp, got {scorer!r}")
        self.max_history = max_history
        for emb in self.level_emb:
            nn.init.normal_(emb.weight, std=0.05)
        for emb in self.level_bias:
            nn.init.zeros_(emb.weight)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """``items [*]`` → ``[*, D]`` (invalid items → zero vector)."""
        valid = items >= 0
        codes = self.codes[items.clamp_min(0)]  # [*, L]
        vec = sum(emb(codes[..., level]) for level, emb in enumerate(self.level_emb))
        if self.item_emb is not None:
            vec = vec + self.item_emb(items.clamp_min(0))
        return vec * valid[..., None]

    def item_bias(self, items: torch.Tensor) -> torch.Tensor:
        codes = self.codes[items.clamp_min(0)]
        return sum(b(codes[..., level]).squeeze(-1) for level, b in enumerate(self.level_bias))

    def user_state(self, history: torch.Tensor) -> torch.Tensor:
        """``history [B, H]`` (left-padded) → ``[B, D]``: the encoder output at the most recent item,
        or at a learned start token for an empty history."""
        history = history[:, -self.max_history:]
        b, h = history.shape
        real = history >= 0  # [B, H]
        # Positions count back from the most recent item (1 = latest), so the padding width does not matter.
        x = self.item_vectors(history) + self.pos(torch.arange(h, 0, -1, device=history.device))  # [B, H, D]
        start = (self.start + self.pos.weight[0]).expand(b, 1, -1)  # [B, 1, D]
        x = self.drop(torch.cat([start, x], 1))  # [B, 1+H, D]
        pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=x.device), ~real], 1)  # [B, 1+H]
        out = self.norm(self.encoder(x, src_key_padding_mask=pad))  # [B, 1+H, D]
        has = real[:, -1]
        return torch.where(has[:, None], out[:, -1], out[:, 0])

    def forward(self, history: torch.Tensor, items: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``[B, S]``; ``users [B]`` (user indices) is needed only with ``user_features``."""
        state = self.user_state(history)  # [B, D]
        if self.user_features is not None:
            if users is None:
                raise ValueError("this reward model reads user features: pass the batch's users")
            state = state + self.user_proj(self.user_features[users.long()])  # [B, D]
        vec = self.item_vectors(items)  # [B, S, D]
        if self.scorer == "dot":
            return torch.einsum("bd,bsd->bs", state, vec) + self.item_bias(items)  # [B, S]
        s = state[:, None].expand_as(vec)
        return self.mlp(torch.cat([s, vec, s * vec], -1)).squeeze(-1)  # [B, S]


def bce_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the filled slots (label ≥ 0) of ``[B, S]``."""
    valid = labels >= 0
    return F.binary_cross_entropy_with_logits(scores[valid], labels[valid].float())


class RewardModelModule(FiniteSteps, L.LightningModule):
    """Trains a :class:`RewardNet` on exposure logs (BCE) and reports its exposure bias at test time.

    Args:
        dim: embedding width of the :class:`RewardNet`.
        num_layers: layers of the history transformer.
        num_heads: attention heads of the history transformer.
        dropout: dropout in the transformer and embeddings.
        scorer: ``dot`` (state · item + bias) or ``mlp``.
        item_id_embedding: also learn a per-item vector (sharper for head items, nothing for the tail).
        user_features: read the data's user features (the synthetic world's, simulated with
            ``user_feature_noise``): reward-side information the policy never sees.
        optimizer: e.g. ``torch.optim.AdamW`` (default AdamW, lr 1e-3, wd 0.01).
        scheduler: optional, stepped every optimizer step.
        report_negatives: N for discriminability (true item vs N sampled / N popular negatives).
        report_buckets: item-popularity buckets in the bias report.
        report_users: test users sampled for discriminability and truth AUC (None = all).
    """

    def __init__(
        self,
        dim: int = 64,
        num_layers: int = 2,
        num_heads: int = 2,
        dropout: float = 0.1,
        scorer: Literal["dot", "mlp"] = "dot",
        item_id_embedding: bool = False,
        user_features: bool = False,
        optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedulerCallable | None = None,
        report_negatives: int = 10,
        report_buckets: int = 5,
        report_users: int | None = 2000,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.net: RewardNet | None = None
        self.data: RewardDataModule | None = None
        self._val_scores: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []
        self.last_report: dict[str, Any] | None = None

    def net_kwargs(self) -> dict:
        h = self.hparams
        return dict(dim=h.dim, num_layers=h.num_layers, num_heads=h.num_heads, dropout=h.dropout,
                    scorer=h.scorer, item_id_embedding=h.item_id_embedding)

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        if not isinstance(dm, RewardDataModule):
            raise TypeError(f"RewardModelModule needs a RewardDataModule (got {type(dm).__name__})")
        dm.prepare()
        self.data = dm

    def configure_model(self) -> None:
        if self.net is None:
            self.net = RewardNet(self.data.sids.codes, self.data.sids.codebook_sizes,
                                 max_history=self.data.max_history, user_features=self.user_feature_table(),
                                 **self.net_kwargs())

    def user_feature_table(self) -> torch.Tensor | None:
        """The data's user features ``[U, F]`` when ``user_features`` is on (the synthetic world's, if simulated)."""
        if not self.hparams.get("user_features", False):
            return None
        feats = getattr(getattr(self.data.source, "world", None), "user_features", None)
        if feats is None:
            raise ConfigError("model.user_features", "the data has no user features: use the synthetic world with "
                                                     "data.source.init_args.user_feature_noise set")
        return feats

    def forward(self, history: torch.Tensor, items: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(history, items, users)

    # ----------------------------------------------------------------------------------- steps
    def training_step(self, batch: ExposureBatch, batch_idx: int) -> torch.Tensor:
        loss = self.finite_loss(bce_loss(self.net(batch.history, batch.items, batch.user), batch.labels))
        if loss is None:  # NaN/inf: counted and skipped
            return None
        self.log("loss/bce", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def _eval_step(self, batch: ExposureBatch, stage: str) -> None:
        scores = self.net(batch.history, batch.items, batch.user)
        self.log(f"{stage}/bce", bce_loss(scores, batch.labels), batch_size=len(batch))
        valid = batch.labels >= 0
        self._val_scores.append(scores[valid].detach().cpu())
        self._val_labels.append(batch.labels[valid].detach().cpu())

    def _eval_end(self, stage: str) -> float:
        value = auc(torch.cat(self._val_scores), torch.cat(self._val_labels)) if self._val_scores else math.nan
        self._val_scores, self._val_labels = [], []
        self.log(f"{stage}/auc", value, prog_bar=True)
        return value

    def validation_step(self, batch: ExposureBatch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def test_step(self, batch: ExposureBatch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")
        from adagrpo.lightning_modules.bias_report import bias_report, log_report

        self.net.eval()
        report = bias_report(self.net, self.data, negatives=self.hparams.report_negatives,
                             buckets=self.hparams.report_buckets, max_users=self.hparams.report_users)
        self.last_report = report
        log_report(self, report)

    # ----------------------------------------------------------------------------------- plumbing
    def configure_optimizers(self) -> Any:
        return build_optimizers(self, self.optimizer_factory, self.scheduler_factory)

    def sid_signature(self) -> dict:
        sids = self.data.sids
        return {"sid_fingerprint": sids.fingerprint(), "codebook_sizes": list(sids.codebook_sizes),
                "num_items": sids.num_items, "vocab_size": self.data.vocab.vocab_size, "dataset": self.data.data.name}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CKPT_KEY] = {**self.sid_signature(), "module": "RewardModelModule",
                                "net": {**self.net_kwargs(), "max_history": self.data.max_history,
                                        "codebook_sizes": list(self.data.sids.codebook_sizes),
                                        "user_features": self.net.user_features is not None}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        where = getattr(self._trainer, "ckpt_path", None) or "<checkpoint>"
        if self.data is not None:
            check_signature(checkpoint.get(CKPT_KEY), self.sid_signature(), where)


# ====================================================================================== the interface
class RewardModel(nn.Module, ABC):
    """What GRPO calls. :meth:`attach` gives it the data (catalogue, popularity, ground truth);
    :meth:`score` is batched and gradient-free."""

    def attach(self, data: SeqRecDataModule) -> None:
        """Bind to the policy's data; called once before the first rollout. Fails here, not mid-training,
        when the reward model does not fit the data."""
        self.data = data

    @abstractmethod
    def score(self, histories: torch.Tensor, items: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``[B, N]`` of ``items [B, N]`` (item indices; -1 entries get 0 and must be masked by
        the caller) for ``histories [B, H]`` (left-padded with -1). ``users [B]`` is only needed by
        ground-truth rewards."""


class TrainedReward(RewardModel):
    """A :class:`RewardModelModule` checkpoint, frozen.

    Args:
        checkpoint: path to the ``.ckpt`` written by ``adagrpo fit --config configs/experiments/reward.yaml``.
    """

    def __init__(self, checkpoint: str) -> None:
        super().__init__()
        self.checkpoint = str(checkpoint)
        self.net: RewardNet | None = None

    def attach(self, data: SeqRecDataModule) -> None:
        super().attach(data)
        path = Path(self.checkpoint)
        if not path.exists():
            raise IncompatibleCheckpoint(f"reward checkpoint not found: {path}")
        ckpt = load_checkpoint(path, what="reward checkpoint (model.reward)")
        info = ckpt.get(CKPT_KEY)
        if info is None or info.get("module") != "RewardModelModule":
            raise IncompatibleCheckpoint(f"{path} is not a reward-model checkpoint (module: "
                                         f"{None if info is None else info.get('module')!r})")
        sids = data.sids
        current = {"sid_fingerprint": sids.fingerprint(), "codebook_sizes": list(sids.codebook_sizes),
                   "num_items": sids.num_items, "vocab_size": data.vocab.vocab_size, "dataset": data.data.name}
        check_signature(info, current, str(path))
        kwargs = dict(info["net"])
        state = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
        features = state.get("user_features") if kwargs.pop("user_features", False) else None
        if features is not None and hasattr(data, "data") and features.shape[0] != data.data.num_users:
            raise IncompatibleCheckpoint(f"{path}: its user features cover {features.shape[0]} users, the data has "
                                         f"{data.data.num_users}")
        self.net = RewardNet(sids.codes, kwargs.pop("codebook_sizes"), user_features=features, **kwargs)
        self.net.load_state_dict(state)
        self.net.eval().requires_grad_(False)

    @torch.no_grad()
    def score(self, histories: torch.Tensor, items: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        self.net.to(items.device)
        if self.net.user_features is not None and users is None:
            raise ValueError("this reward model reads user features: score() needs the batch's users")
        return self.net(histories, items, users).masked_fill(items < 0, 0.0)


class TorchReward(RewardModel):
    """Any reward a user brings: a module whose ``forward(histories [B, H], items [B, N]) -> [B, N]``
    (selected by ``class_path`` in YAML), or a file saved with ``torch.save(module)`` / TorchScript.

    Args:
        module: the scoring module (instantiated by the CLI from its ``class_path``).
        path: alternatively, a saved module file: TorchScript, or a ``torch.save(module)`` pickle with ``trust_pickle``.
        trust_pickle: load a pickled module file (it runs whatever code the file holds; only for files you trust).
    """

    def __init__(self, module: nn.Module | None = None, path: str | None = None, trust_pickle: bool = False) -> None:
        super().__init__()
        if (module is None) == (path is None):
            raise ConfigError("reward", "give exactly one of `module` or `path`")
        self.path = path
        self.module = module
        self.trust_pickle = trust_pickle

    def attach(self, data: SeqRecDataModule) -> None:
        super().attach(data)
        if self.module is None:
            self.module = load_module_file(self.path, self.trust_pickle)  # TorchScript, or a trusted pickle
        for param in self.module.eval().parameters():  # not Module.requires_grad_: ScriptModules lack it
            param.requires_grad_(False)
        device = next((p.device for p in self.module.parameters()), torch.device("cpu"))
        probe = self.module(torch.full((1, 2), -1, dtype=torch.long, device=device),
                            torch.zeros(1, 3, dtype=torch.long, device=device))
        if tuple(probe.shape) != (1, 3):
            raise IncompatibleCheckpoint(f"reward module returned shape {tuple(probe.shape)} for items [1, 3]; "
                                         "expected [1, 3]")

    @torch.no_grad()
    def score(self, histories: torch.Tensor, items: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        self.module.to(items.device)
        return self.module(histories, items.clamp_min(0)).float().masked_fill(items < 0, 0.0)


class OracleReward(RewardModel):
    """The synthetic world's true utility ``U(state, item)`` (needs the synthetic source).

    Args:
        scale: multiplies the utility.
    """

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def attach(self, data: SeqRecDataModule) -> None:
        super().attach(data)
        if getattr(data.source, "world", None) is None:
            raise ConfigError("model.reward", f"{type(self).__name__} needs the synthetic world as data.source")
        self.world = data.source.world

    @torch.no_grad()
    def score(self, histories: torch.Tensor, items: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        if users is None:
            raise ValueError("OracleReward needs the users of the batch")
        last = histories[:, -1].cpu()
        util = self.world.utility(users.cpu(), last, items.cpu())  # [B, N]
        return (self.scale * util).masked_fill(items.cpu() < 0, 0.0).to(items.device)


class NoisyReward(OracleReward):
    """The world's true utility plus noise whose size depends on *where* it lives, fixed per (user, item) — a
    reward model's errors are systematic — unless ``resample``.

    ``noise_on`` says where (σ is the noise std on an item for a user):

    * ``popularity`` (the original form): ``σ_i = noise · ((pop_i + 1) / (median_pop + 1)) ** -popularity_exponent``,
      capped at ``max_factor · noise``; grows smoothly towards the tail;
    * ``uniform``: ``σ = noise`` everywhere;
    * ``tail``: ``σ = noise`` on tail items (all but the ``head_share`` most-clicked items of the training
      data) and ``clean_factor · noise`` on head items;
    * ``segment``: ``σ = noise`` for a fixed ``segment_share`` of users (chosen by a hash of the user and
      ``seed``) and ``clean_factor · noise`` for the others.

    Args:
        noise: noise std where it lives (0 = the oracle exactly).
        noise_on: ``popularity``, ``uniform``, ``tail`` or ``segment`` (above).
        popularity_exponent: how much faster noise grows towards the tail (``popularity`` form; 0 = same for all).
        max_factor: cap on the per-item noise multiplier (``popularity`` form).
        head_share: share of items that count as the head (``tail``).
        segment_share: share of users in the noisy segment (``segment``).
        clean_factor: noise multiplier off the noisy part (``tail``, ``segment``).
        resample: fresh noise on every call instead of fixed per (user, item).
        seed: seeds the fixed noise and the segment.
        scale: multiplies the utility and the noise.
    """

    def __init__(self, noise: float = 0.5, noise_on: Literal["popularity", "uniform", "tail", "segment"] = "popularity",
                 popularity_exponent: float = 0.5, max_factor: float = 5.0, head_share: float = 0.2,
                 segment_share: float = 0.5, clean_factor: float = 0.1, resample: bool = False, seed: int = 0,
                 scale: float = 1.0) -> None:
        super().__init__(scale)
        checks = {"noise": noise >= 0, "head_share": 0 < head_share < 1, "segment_share": 0 < segment_share < 1,
                  "clean_factor": clean_factor >= 0, "max_factor": max_factor > 0}
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"reward.{key}", f"invalid value {locals()[key]!r}")
        if noise_on not in ("popularity", "uniform", "tail", "segment"):
            raise ConfigError("reward.noise_on", f"must be popularity, uniform, tail or segment, got {noise_on!r}")
        self.noise = noise
        self.noise_on = noise_on
        self.popularity_exponent = popularity_exponent
        self.max_factor = max_factor
        self.head_share = head_share
        self.segment_share = segment_share
        self.clean_factor = clean_factor
        self.resample = resample
        self.seed = seed

    def attach(self, data: SeqRecDataModule) -> None:
        super().attach(data)
        pop = data.train_popularity().double()
        if self.noise_on == "popularity":
            factor = (((pop + 1) / (pop.median() + 1)) ** (-self.popularity_exponent)).clamp_max(self.max_factor)
        elif self.noise_on == "tail":
            factor = torch.where(self.is_tail(pop), 1.0, self.clean_factor).double()
        else:  # uniform; segment: per user, applied in score()
            factor = torch.ones_like(pop)
        self.sigma = (self.noise * factor).float()  # [N]

    def is_tail(self, popularity: torch.Tensor) -> torch.Tensor:
        """Bool ``[N]``: items outside the ``head_share`` most popular (ties broken by item index)."""
        n_head = max(1, int(round(self.head_share * len(popularity))))
        head = torch.zeros(len(popularity), dtype=torch.bool)
        head[torch.argsort(-popularity, stable=True)[:n_head]] = True
        return ~head

    def in_segment(self, users: torch.Tensor) -> torch.Tensor:
        """Bool ``[B]``: the users in the noisy segment (``noise_on: segment``)."""
        return _hash_uniform(users.long() * 2_654_435_761 + self.seed * 97 + 13) < self.segment_share

    def noise_std(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """σ ``[B, M]`` of the noise on ``items [B, M]`` for ``users [B]``."""
        sigma = self.sigma[items.clamp_min(0)]
        if self.noise_on == "segment":
            sigma = sigma * torch.where(self.in_segment(users), 1.0, self.clean_factor)[:, None].float()
        return sigma

    def _standard_normal(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        if self.resample:
            return torch.randn(items.shape)
        # A deterministic N(0, 1) per (seed, user, item): hash to two uniforms, Box–Muller.
        key = (users[:, None].long() * 1_000_003 + items.long()) * 2 + self.seed * 7_919
        u1 = _hash_uniform(key)
        u2 = _hash_uniform(key + 1)
        return torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * math.pi * u2)

    @torch.no_grad()
    def score(self, histories: torch.Tensor, items: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        base = super().score(histories, items, users).cpu()
        if self.noise == 0:
            return base.to(items.device)
        it, us = items.cpu(), users.cpu()
        z = self._standard_normal(us, it.clamp_min(0))
        noisy = base + self.scale * self.noise_std(us, it) * z
        return noisy.masked_fill(it < 0, 0.0).to(items.device)
