"""Exposure logs: what a logging policy showed each user and what they clicked — the reward model's data.

An :class:`ExposureLog` holds impression *events*: user ``u`` at sequence position ``p`` (history =
the user's items before ``p``) was shown ``items[e]`` with ``labels[e]`` (1 = clicked / liked, 0 =
exposed but not clicked, -1 = empty slot). Where logs come from is an :class:`ExposureSpec`
(selected in YAML by ``class_path``):

* :class:`SimulatedExposure` — datasets without impressions: each logged (history, clicked item) is
  joined by exposed-not-clicked items from a logging policy mixing popularity^α with a
  co-occurrence retriever;
* :class:`WorldExposure` — the synthetic world's own slates and clicks;
* :class:`CoatExposure` — Coat's self-selected ratings (biased) and randomly assigned ratings
  (unbiased test), liked = rating ≥ 4.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from adagrpo.datamodules.catalog import Catalog, Interactions
from adagrpo.datamodules.sources import DataSource
from adagrpo.errors import ConfigError, DataError


@dataclass
class ExposureLog:
    """Impression events. ``user``/``position``: ``[E]``; ``items``/``labels``: ``[E, S]``."""

    user: np.ndarray
    position: np.ndarray
    items: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.user)

    def select(self, mask: np.ndarray) -> ExposureLog:
        return ExposureLog(self.user[mask], self.position[mask], self.items[mask], self.labels[mask])

    def positive_rate(self) -> float:
        valid = self.labels >= 0
        return float((self.labels == 1).sum() / max(1, valid.sum()))


@dataclass
class ExposureSplits:
    """Biased train/val/test logs, plus an unbiased test log where the data has one (Coat)."""

    train: ExposureLog
    val: ExposureLog
    test: ExposureLog
    unbiased: ExposureLog | None = None


class ExposureSpec(ABC):
    """Produces exposure logs for a dataset; ``train_end[u]`` is where user ``u``'s training prefix ends."""

    @abstractmethod
    def build(self, data: Interactions, train_end: np.ndarray, source: object) -> ExposureSplits:
        """Logs split like the sequences: events before ``train_end`` train, at ``train_end`` validate,
        after it test."""


def split_by_position(log: ExposureLog, train_end: np.ndarray) -> tuple[ExposureLog, ExposureLog, ExposureLog]:
    end = train_end[log.user]
    return log.select(log.position < end), log.select(log.position == end), log.select(log.position > end)


class SimulatedExposure(ExposureSpec):
    """Simulated impressions for logs without them.

    For every position ``p ≥ 1`` of every sequence, the clicked item ``seq[p]`` is shown among
    ``num_exposed`` other items: a share ``retriever_share`` from a co-occurrence retriever (items
    seen right after the user's last item, drawn ∝ count) and the rest ∝ ``popularity ** alpha``.
    Items already in the history or equal to the click are left out of the slate (and replaced by spare
    draws). Popularity and co-occurrence are counted over the training prefixes only, so validation and
    test events never inform the logging policy; within the training period the simulation is not
    time-ordered (a standard simplification: the logging policy knows the whole training log).

    Args:
        alpha: exposure bias (popularity exponent; 0 = uniform).
        num_exposed: exposed-not-clicked items per event.
        retriever_share: share of them from the co-occurrence retriever.
        neighbours: co-occurrence neighbours kept per item.
        seed: sampling seed.
    """

    def __init__(self, alpha: float = 1.0, num_exposed: int = 9, retriever_share: float = 0.5,
                 neighbours: int = 50, seed: int = 0) -> None:
        if alpha < 0:
            raise ConfigError("exposure.alpha", f"must be >= 0, got {alpha}")
        if num_exposed < 1:
            raise ConfigError("exposure.num_exposed", f"must be >= 1, got {num_exposed}")
        if not 0 <= retriever_share <= 1:
            raise ConfigError("exposure.retriever_share", f"must be in [0, 1], got {retriever_share}")
        self.alpha = alpha
        self.num_exposed = num_exposed
        self.retriever_share = retriever_share
        self.neighbours = neighbours
        self.seed = seed

    def build(self, data: Interactions, train_end: np.ndarray, source: object) -> ExposureSplits:
        gen = torch.Generator().manual_seed(self.seed)
        n = data.num_items
        lengths = data.lengths()
        user = np.repeat(np.arange(data.num_users), lengths)  # [nnz]
        position = np.arange(len(data.items)) - data.offsets[user]  # [nnz]
        keep = position >= 1
        user, position = user[keep], position[keep]
        flat = data.offsets[user] + position
        clicked = torch.from_numpy(data.items[flat])  # [E]
        last = torch.from_numpy(data.items[flat - 1])  # [E]
        # Popularity over training prefixes only (the logging policy must not see the future).
        in_train = np.arange(len(data.items)) - data.offsets[np.repeat(np.arange(data.num_users), lengths)]
        train_items = data.items[in_train < np.repeat(train_end, lengths)]
        pop = torch.from_numpy(np.bincount(train_items, minlength=n)).double() + 1.0  # [N], +1 smoothing
        weights = pop ** self.alpha
        cdf = torch.cumsum(weights / weights.sum(), 0)  # [N]
        e = len(clicked)
        # Draw twice the slate: slots equal to the click, repeated, or already in the history are dropped and the
        # slate is refilled from the spare draws, so the number of negatives does not depend on the label.
        n_ret = 2 * int(round(self.retriever_share * self.num_exposed))
        n_pop = 2 * self.num_exposed - n_ret
        draws = [torch.searchsorted(cdf, torch.rand(e, n_pop, generator=gen, dtype=torch.float64))]
        if n_ret:
            nbr, nbr_w = _cooccurrence_neighbours(data, train_end, self.neighbours)  # [N, M]
            rows = nbr_w[last]  # [E, M]
            empty = rows.sum(1) == 0  # the last item was never followed by anything in training
            rows[empty] = 1.0
            pick = torch.multinomial(rows, n_ret, replacement=True, generator=gen)  # [E, n_ret]
            retrieved = torch.gather(nbr[last], 1, pick)
            # No co-occurrence to retrieve from: the retriever's share is drawn uniformly from the catalogue.
            uniform = torch.randint(n, (e, n_ret), generator=gen)
            draws.append(torch.where(empty[:, None], uniform, retrieved))
        # Interleave popularity and retriever draws so the kept slots keep the mixture's proportions.
        slate = torch.cat(draws, 1).clamp_max(n - 1)  # [E, 2 * num_exposed]
        slate = slate[:, torch.argsort(torch.cat([torch.arange(n_pop) / max(n_pop, 1),
                                                   torch.arange(n_ret) / max(n_ret, 1)]), stable=True)]
        slate = _drop_repeats(slate, clicked, data, user, position)
        first_valid = torch.argsort((slate < 0).long(), dim=1, stable=True)[:, : self.num_exposed]
        slate = slate.gather(1, first_valid)  # [E, num_exposed], -1 only when too few distinct items were drawn
        items = torch.cat([clicked[:, None], slate], 1).numpy()  # [E, 1 + num_exposed]
        labels = np.zeros_like(items, dtype=np.float32)
        labels[:, 0] = 1.0
        labels[items < 0] = -1.0
        log = ExposureLog(user.astype(np.int64), position.astype(np.int64), items.astype(np.int64), labels)
        train, val, test = split_by_position(log, train_end)
        return ExposureSplits(train, val, test)


def _cooccurrence_neighbours(data: Interactions, train_end: np.ndarray, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each item, the ``m`` items most often clicked right after it in training prefixes:
    ``(neighbours [N, M], counts [N, M] float)`` (count 0 = no such neighbour)."""
    n = data.num_items
    src, dst = [], []
    for u in range(data.num_users):
        seq = data.sequence(u)[: train_end[u]]
        if len(seq) > 1:
            src.append(seq[:-1])
            dst.append(seq[1:])
    if not src:
        return torch.zeros(n, 1, dtype=torch.long), torch.zeros(n, 1)
    s = torch.from_numpy(np.concatenate(src))
    d = torch.from_numpy(np.concatenate(dst))
    counts = torch.sparse_coo_tensor(torch.stack([s, d]), torch.ones(len(s)), (n, n)).coalesce().to_dense()
    counts.fill_diagonal_(0)
    m = min(m, n)
    w, idx = torch.topk(counts, m, dim=1)  # [N, M]
    return idx, w


def _drop_repeats(slate: torch.Tensor, clicked: torch.Tensor, data: Interactions, user: np.ndarray,
                  position: np.ndarray) -> torch.Tensor:
    """Replace with -1 slate items equal to the click, repeated within the slate, or already in the history."""
    out = slate.clone()
    out[slate == clicked[:, None]] = -1
    same = slate[:, :, None] == slate[:, None, :]
    out[torch.tril(same, diagonal=-1).any(2)] = -1
    # History membership: compare against the (short) histories; vectorised over a padded matrix.
    h = int(min(position.max(), 50)) if len(position) else 0
    if h:
        hist = np.full((len(user), h), -1, dtype=np.int64)
        for r, (u, p) in enumerate(zip(user, position)):
            seq = data.sequence(int(u))[max(0, int(p) - h): int(p)]
            hist[r, h - len(seq):] = seq
        hist_t = torch.from_numpy(hist)
        seen = (slate[:, :, None] == hist_t[:, None, :]).any(2)
        out[seen] = -1
    return out


class WorldExposure(ExposureSpec):
    """The synthetic world's logging policy: its slates (exposure ∝ popularity^α plus a noisy retriever)
    and the clicks its users made. Needs a :class:`~adagrpo.datamodules.synthetic.SyntheticSource`."""

    def build(self, data: Interactions, train_end: np.ndarray, source: object) -> ExposureSplits:
        world = getattr(source, "world", None)
        if world is None:
            raise ConfigError("exposure", "WorldExposure needs the synthetic source (data.source: SyntheticSource)")
        imp = world.impressions
        slates = imp.slates.clone()  # [E, S]
        same = slates[:, :, None] == slates[:, None, :]
        slates[torch.tril(same, diagonal=-1).any(2)] = -1  # duplicate slots in a slate count once
        labels = (slates == imp.clicked[:, None]).float()
        labels[slates < 0] = -1
        log = ExposureLog(imp.user.numpy(), imp.step.numpy(), slates.numpy(), labels.numpy())
        train, val, test = split_by_position(log, train_end)
        return ExposureSplits(train, val, test)


class CoatExposure(ExposureSpec):
    """Coat: biased (self-selected) ratings train the model, randomly assigned ratings test it.

    The data source must be :class:`CoatSource`, which splits the self-selected ratings into train /
    validation / biased-test events and builds every user's history from the liked coats of their
    *training* events only (so held-out ratings never appear in any history). Liked = rating ≥ the
    source's ``like_threshold``. The random-exposure ratings form the unbiased log. A scored coat is
    always removed from the history it is scored against.
    """

    def build(self, data: Interactions, train_end: np.ndarray, source: object) -> ExposureSplits:
        if not isinstance(source, CoatSource):
            raise ConfigError("exposure", "CoatExposure needs data.source: adagrpo.datamodules.CoatSource")
        biased, split = source.ratings("train"), source.event_split()
        history_len = data.lengths()  # history = the user's liked training coats (minus the scored one)

        def log(rows: np.ndarray) -> ExposureLog:
            labels = (rows[:, 2] >= source.like_threshold).astype(np.float32)[:, None]
            users = rows[:, 0].astype(np.int64)
            return ExposureLog(users, history_len[users], rows[:, 1:2].astype(np.int64), labels)

        return ExposureSplits(train=log(biased[split == 0]), val=log(biased[split == 1]),
                              test=log(biased[split == 2]), unbiased=log(source.ratings("test")))


class CoatSource(DataSource):
    """Coat (Schnabel et al., 2016): 290 users × 300 coats, self-selected and random ratings.

    Each user's "sequence" is the coats they rated ≥ ``like_threshold`` in the self-selected set
    (file order; Coat has no time order), used as the history a reward model conditions on. Item text
    comes from the one-hot item features (gender, jacket type, colour) so text SIDs work.

    Args:
        root: the ``coat`` folder (``train.ascii``, ``test.ascii``, ``user_item_features/``).
        like_threshold: ratings at or above it count as a click / like.
        test_share: share of the self-selected ratings held out as the biased test log (seeded).
        val_share: share of the self-selected ratings held out for validation (seeded).
        seed: seeds the train / validation / test split of the ratings.
        name: the dataset's name (in checkpoints' SID signatures and run records).
    """

    def __init__(self, root: str, like_threshold: int = 4, test_share: float = 0.2, val_share: float = 0.1,
                 seed: int = 0, name: str = "coat") -> None:
        super().__init__(min_length=1, on_short="error", name=name)
        if not (0 <= test_share < 1 and 0 <= val_share < 1 and test_share + val_share < 1):
            raise ConfigError("source.test_share", f"test_share {test_share} + val_share {val_share} must be < 1")
        self.root = str(root)
        self.like_threshold = like_threshold
        self.test_share = test_share
        self.val_share = val_share
        self.seed = seed
        self._matrices: dict[str, np.ndarray] = {}

    def event_split(self) -> np.ndarray:
        """For each row of ``ratings("train")``: 0 = train, 1 = validation, 2 = biased test (seeded)."""
        u = np.random.default_rng(self.seed).random(len(self.ratings("train")))
        return np.where(u < self.test_share, 2, np.where(u < self.test_share + self.val_share, 1, 0))

    def _matrix(self, split: str) -> np.ndarray:
        if split not in self._matrices:
            path = Path(self.root) / f"{split}.ascii"
            if not path.exists():
                raise DataError("Coat rating matrix not found", file=path)
            rows = []
            for n, line in enumerate(path.read_text().splitlines(), start=1):
                try:
                    rows.append([int(v) for v in line.split()])
                except ValueError:
                    raise DataError("expected space-separated integer ratings", file=path, line=n) from None
            if not rows:
                raise DataError("empty rating matrix", file=path)
            for n, r in enumerate(rows, start=1):
                if len(r) != len(rows[0]):
                    raise DataError(f"row has {len(r)} ratings, row 1 has {len(rows[0])}", file=path, line=n)
            m = np.asarray(rows, dtype=np.int64)
            if m.min() < 0 or m.max() > 5:
                raise DataError("ratings must be 0 (unobserved) to 5", file=path)
            self._matrices[split] = m
        return self._matrices[split]

    def ratings(self, split: str) -> np.ndarray:
        """``[R, 3]`` rows ``(user, item, rating)`` of the observed cells of ``train`` or ``test``."""
        m = self._matrix(split)
        u, i = np.nonzero(m)
        return np.stack([u, i, m[u, i]], 1)

    def _item_text(self, n_items: int) -> list[str]:
        feats = Path(self.root) / "user_item_features" / "item_features.ascii"
        names = Path(self.root) / "user_item_features" / "item_features_map.txt"
        if not feats.exists() or not names.exists():
            return [f"coat {i}" for i in range(n_items)]
        cols = [ln.strip() for ln in names.read_text().splitlines() if ln.strip()]
        rows = [ln.split() for ln in feats.read_text().splitlines() if ln.strip()]
        return [" ".join(cols[j].replace("_", " ") for j, v in enumerate(r) if v == "1" and j < len(cols))
                for r in rows]

    def read(self) -> tuple[Interactions, list[tuple[str, int | None, str | None]]]:
        train = self._matrix("train")
        n_users, n_items = train.shape
        catalog = Catalog(item_ids=[str(i) for i in range(n_items)], text={"title": self._item_text(n_items)})
        # Histories hold the liked coats of training events only: held-out ratings must not shape any input.
        rows, split = self.ratings("train"), self.event_split()
        kept = rows[split == 0]
        seqs = [kept[(kept[:, 0] == u) & (kept[:, 2] >= self.like_threshold), 1].tolist() for u in range(n_users)]
        # A user with no liked training coat still needs a history slot: their highest-rated training coat.
        for u, s in enumerate(seqs):
            if not s:
                mine = kept[kept[:, 0] == u]
                s.append(int(mine[np.argmax(mine[:, 2]), 1]) if len(mine) else int(np.argmax(train[u])))
        file = str(Path(self.root) / "train.ascii")
        data = Interactions.from_lists(self.name, catalog, [str(u) for u in range(n_users)], seqs, [file])
        return data, [(file, u + 1, str(u)) for u in range(n_users)]
