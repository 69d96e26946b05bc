"""The sequential-recommendation DataModule: dataset → semantic IDs → splits → token batches.

One DataModule serves every stage: SFT batches (a history window with every next item a target),
evaluation prompts (history → held-out item) and RL prompts (history → next training item).
Batches are built by tensor indexing from precomputed item matrices; nothing is tokenised per
sample in Python.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from adagrpo.datamodules.catalog import Interactions
from adagrpo.datamodules.errors import ConfigError
from adagrpo.datamodules.semantic_ids import SemanticIds, SidBuilder, SidVocab
from adagrpo.datamodules.sources import DataSource
from adagrpo.datamodules.splits import Split, leave_one_out, ratio_split, with_heldout_users
from adagrpo.datamodules.trie import CatalogTrie

log = logging.getLogger(__name__)

PAD_ITEM = -1  # an empty history slot
BOS_ITEM = -2  # the slot holding <bos>, right before the first real item


@dataclass
class TokenBatch:
    """SFT batch. ``input_ids``/``attention_mask``/``position_ids``/``labels``: ``[B, T]``, left-padded;
    ``labels`` is -100 except on the SID tokens of predicted items."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class PromptBatch:
    """History → target batch (evaluation and RL).

    ``prompt_ids``/``prompt_mask``/``position_ids``: ``[B, P]`` left-padded prompt tokens;
    ``history``: ``[B, H]`` item indices, left-padded with -1; ``target``: ``[B]`` item index;
    ``target_tokens``: ``[B, L]``; ``user``: ``[B]`` user index; ``position``: ``[B]`` the target's
    position in the user's sequence; ``seen``: ``[B, S]`` every item the user had before that position (the whole
    prefix, not only the last ``max_history`` the prompt shows), left-padded with -1 — what the seen-item filter,
    the repeat rate and the repeat penalty read (``None``: the ``history`` is the whole prefix).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    position_ids: torch.Tensor
    history: torch.Tensor
    target: torch.Tensor
    target_tokens: torch.Tensor
    user: torch.Tensor
    position: torch.Tensor
    seen: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    @property
    def seen_items(self) -> torch.Tensor:
        """Every item the user had before the target ``[B, S]`` (-1 padded): ``seen``, else ``history``."""
        return self.history if self.seen is None else self.seen


class SlotTokenizer:
    """Turns item-slot matrices (item index, -1 pad, -2 bos) into token tensors by lookup."""

    def __init__(self, item_tokens: torch.Tensor, vocab: SidVocab) -> None:
        self.depth = item_tokens.shape[1]
        pad_row = torch.full((1, self.depth), vocab.pad_id, dtype=torch.long)
        bos_row = pad_row.clone()
        bos_row[0, -1] = vocab.bos_id
        # Row 0 = pad slot, row 1 = bos slot, rows 2.. = items.
        self.table = torch.cat([pad_row, bos_row, item_tokens.long()], 0)  # [N + 2, L]
        self.real = torch.ones(self.table.shape[0], self.depth, dtype=torch.bool)
        self.real[0] = False
        self.real[1, :-1] = False

    def __call__(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``slots [B, S]`` → ``(tokens [B, S*L], mask [B, S*L], position_ids [B, S*L])``."""
        rows = torch.where(slots >= 0, slots + 2, torch.where(slots == BOS_ITEM, 1, 0))  # [B, S]
        tokens = self.table[rows].flatten(1)  # [B, S*L]
        mask = self.real[rows].flatten(1)  # [B, S*L]
        positions = (mask.long().cumsum(1) - 1).clamp_min(0)  # [B, S*L]
        return tokens, mask, positions


class _Rows(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class _Batches(Dataset):
    """A dataset whose items are whole batches (lists of row ids), so a distributed sampler splits
    batches, not rows, across processes."""

    def __init__(self, batches: list[np.ndarray], collate) -> None:  # noqa: ANN001
        self.batches = batches
        self.collate = collate

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):  # noqa: ANN204
        return self.collate(self.batches[i].tolist())


def bucket_batches(lengths: np.ndarray, batch_size: int, seed: int, chunk: int = 50) -> list[np.ndarray]:
    """Group rows of similar length into batches (less padding): shuffle, sort each run of
    ``chunk`` batches' worth of rows by length, cut into batches. Batch order is shuffled by the loader."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    batches = []
    span = batch_size * chunk
    for start in range(0, len(order), span):
        part = order[start:start + span]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    return batches


def _left_pad(rows: list[np.ndarray], width: int) -> np.ndarray:
    out = np.full((len(rows), width), PAD_ITEM, dtype=np.int64)
    for r, seq in enumerate(rows):
        seq = seq[-width:]
        if len(seq):
            out[r, width - len(seq):] = seq
    return out


class SeqRecDataModule(L.LightningDataModule):
    """Sequences of semantic IDs for SFT, evaluation and RL.

    Args:
        source: the dataset (``class_path`` of a :class:`~adagrpo.datamodules.sources.DataSource`); default
            the synthetic world.
        sids: how semantic IDs are made (``class_path`` of a :class:`~adagrpo.datamodules.semantic_ids.SidBuilder`);
            default RQ-KMeans over text embeddings.
        split: ``leave_one_out`` (last item test, second-to-last validation) or ``ratio``.
        ratios: train/val/test shares of positions for ``split: ratio``.
        max_history: most recent items kept in a history.
        train_mode: ``sft`` (windows, every item a target) or ``prompts`` (history → next item, for RL).
        rl_prompts: ``all`` training positions as RL prompts, or only each user's ``last`` one.
        rl_users: whose training positions are RL prompts. ``all``: every user's (the positions SFT and the reward
            model were fit on, so rollout diagnostics are in-sample). ``heldout``: a seeded slice of users
            (``heldout_fraction``, ``heldout_seed``) is held out of model fitting — their events make no SFT
            window, no reward-model training event and no interaction-based SID — and RL prompts come only from
            them. Validation and test targets stay every user's. Every data config of one pipeline (SFT, reward,
            RL) must use the same three settings.
        heldout_fraction: share of users held out with ``rl_users: heldout``.
        heldout_seed: seeds which users are held out (independent of ``seed``, so RL runs with other training
            seeds keep the slice their SFT and reward model were fit without).
        batch_size: per-process batch size of training.
        eval_batch_size: per-process batch size of validation, test and predict.
        max_eval_samples: cap on validation prompts (a seeded random subset; None = all).
        max_test_samples: cap on test prompts (None = all).
        num_workers: DataLoader workers.
        seed: shuffling seed (training order).
        eval_seed: seeds the validation/test subsets (``max_eval_samples``/``max_test_samples``).
        use_cache: cache semantic IDs on disk (``$ADAGRPO_CACHE``, default ``.adagrpo_cache``).
        shuffle: shuffle the training batches (SFT) / prompts (RL) every epoch. ``False`` keeps the data
            order, so one process with batch size ``k·B`` sees at each step exactly the union of what ``k``
            data-parallel processes with batch size ``B`` see (batch ``i`` goes to rank ``i mod k``).
        bucket: group SFT windows of similar length into batches (less padding). ``False`` cuts the windows,
            in order, into consecutive batches.
    """

    def __init__(
        self,
        source: DataSource | None = None,
        sids: SidBuilder | None = None,
        split: Literal["leave_one_out", "ratio"] = "leave_one_out",
        ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
        max_history: int = 20,
        train_mode: Literal["sft", "prompts"] = "sft",
        rl_prompts: Literal["all", "last"] = "all",
        rl_users: Literal["all", "heldout"] = "all",
        heldout_fraction: float = 0.2,
        heldout_seed: int = 0,
        batch_size: int = 128,
        eval_batch_size: int = 256,
        max_eval_samples: int | None = None,
        max_test_samples: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        eval_seed: int = 0,
        use_cache: bool = True,
        shuffle: bool = True,
        bucket: bool = True,
    ) -> None:
        super().__init__()
        if max_history < 1:
            raise ConfigError("data.max_history", f"must be >= 1, got {max_history}")
        if split not in ("leave_one_out", "ratio"):
            raise ConfigError("data.split", f"must be leave_one_out or ratio, got {split!r}")
        if train_mode not in ("sft", "prompts"):
            raise ConfigError("data.train_mode", f"must be sft or prompts, got {train_mode!r}")
        if batch_size < 1 or eval_batch_size < 1:
            raise ConfigError("data.batch_size", "batch sizes must be >= 1")
        if rl_prompts not in ("all", "last"):
            raise ConfigError("data.rl_prompts", f"must be all or last, got {rl_prompts!r}")
        if rl_users not in ("all", "heldout"):
            raise ConfigError("data.rl_users", f"must be all or heldout, got {rl_users!r}")
        if rl_users == "heldout" and not 0 < heldout_fraction < 1:
            raise ConfigError("data.heldout_fraction",
                              f"must be in (0, 1) with rl_users: heldout, got {heldout_fraction}")
        if source is None:
            from adagrpo.datamodules.synthetic import SyntheticSource

            source = SyntheticSource()
        if sids is None:
            from adagrpo.datamodules.semantic_ids import RQKMeansSids

            sids = RQKMeansSids()
        self.source = source
        self.sid_builder = sids
        self.split_name = split
        self.ratios = tuple(ratios)
        self.max_history = max_history
        self.train_mode = train_mode
        self.rl_prompts = rl_prompts
        self.rl_users = rl_users
        self.heldout_fraction = heldout_fraction
        self.heldout_seed = heldout_seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.max_eval_samples = max_eval_samples
        self.max_test_samples = max_test_samples
        self.num_workers = num_workers
        self.seed = seed
        self.eval_seed = eval_seed
        self.use_cache = use_cache
        self.shuffle = shuffle
        self.bucket = bucket
        self.data: Interactions | None = None
        self.sids: SemanticIds | None = None
        self._prepared = False

    # ------------------------------------------------------------------------------ preparation
    def prepare(self) -> None:
        """Read the data and build semantic IDs, splits and batch matrices (idempotent)."""
        if self._prepared:
            return
        self.data = self.source.load()
        # The split first: SIDs from interactions (collaborative embeddings) may only see training prefixes.
        self.split = leave_one_out(self.data) if self.split_name == "leave_one_out" else ratio_split(
            self.data, self.ratios)  # type: ignore[arg-type]
        if self.rl_users == "heldout":
            self.split = with_heldout_users(self.split, self.heldout_fraction, self.heldout_seed)
        # Held-out users' events shape no SIDs either (fit_end = 0 for them).
        self.sids = self.sid_builder.build(self.data, use_cache=self.use_cache, train_end=self.split.fit_end())
        self.vocab = self.sids.vocab()
        self.trie = CatalogTrie(self.sids.codes, self.sids.codebook_sizes)
        self.item_tokens = self.vocab.encode(self.sids.codes)  # [N, L]
        self.tokenizer = SlotTokenizer(self.item_tokens, self.vocab)
        self._build_matrices()
        self._prepared = True

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    @property
    def sid_depth(self) -> int:
        return self.sids.depth

    @property
    def num_items(self) -> int:
        return self.data.num_items

    def train_popularity(self) -> torch.Tensor:
        """Interaction counts per item over the training prefixes only ``[N]`` (for popularity baselines)."""
        split: Split = self.split
        items = [self.data.sequence(u)[: split.train_end[u]] for u in range(self.data.num_users)]
        flat = np.concatenate(items) if items else np.zeros(0, dtype=np.int64)
        return torch.from_numpy(np.bincount(flat, minlength=self.data.num_items)).long()

    def _build_matrices(self) -> None:
        data, split, h = self.data, self.split, self.max_history
        seqs = data.sequences()
        heldout = split.heldout_mask()  # [U]
        fit_end = split.fit_end()  # [U] 0 for held-out users: they make no SFT window
        # SFT windows over each training prefix: size h+1, stride h, so every item but a user's first is
        # a target exactly once and sees up to h items of context.
        windows, window_users = [], []
        for u, seq in enumerate(seqs):
            train = seq[: fit_end[u]]
            if len(train) < 2:
                continue
            end = len(train)
            while end > 1:
                start = max(0, end - (h + 1))
                windows.append(train[start:end])
                window_users.append(u)
                end = start + 1
        self.sft_windows = _left_pad(windows, h + 1)  # [W, h+1]
        self.sft_window_users = np.asarray(window_users, dtype=np.int64)  # [W] whose prefix each window is from
        # RL prompts: (user, position) over training prefixes (only the held-out users' with rl_users: heldout).
        rl = []
        for u in range(data.num_users):
            if self.rl_users == "heldout" and not heldout[u]:
                continue
            end = int(split.train_end[u])
            positions = range(1, end) if self.rl_prompts == "all" else ([end - 1] if end >= 2 else [])
            rl.extend((u, p) for p in positions)
        self.rl_targets = np.asarray(rl, dtype=np.int64).reshape(-1, 2)
        # Evaluation subsets depend on the eval seed only, so runs with different training seeds see the same users.
        rng = np.random.default_rng(self.eval_seed)
        self.val_targets = _subsample(split.val, self.max_eval_samples, rng)
        self.test_targets = _subsample(split.test, self.max_test_samples, rng)

    # ------------------------------------------------------------------------------ batches
    def sft_batch(self, rows: list[int]) -> TokenBatch:
        items = torch.from_numpy(self.sft_windows[rows])  # [B, h+1]
        slots = _with_bos(items)  # [B, h+2]
        tokens, mask, positions = self.tokenizer(slots)  # [B, T]
        # Targets: every real item after the window's first (its first item is context only).
        is_item = slots >= 0  # [B, S]
        first = is_item & (torch.cumsum(is_item.long(), 1) == 1)
        target_slot = is_item & ~first  # [B, S]
        labels = torch.where(target_slot.repeat_interleave(self.sid_depth, 1), tokens, -100)  # [B, T]
        return TokenBatch(tokens, mask.long(), positions, labels)

    def prompt_batch(self, targets: np.ndarray) -> PromptBatch:
        """Batch for ``(user, position)`` pairs ``[B, 2]``."""
        h = self.max_history
        prefixes = [self.data.sequence(int(u))[: int(p)] for u, p in targets]
        histories = [prefix[-h:] if h else prefix[:0] for prefix in prefixes]
        history = torch.from_numpy(_left_pad(histories, h))  # [B, h]
        longest = max((len(prefix) for prefix in prefixes), default=0)
        # The whole prefix only when some row's is longer than the prompt's window (else the history is all of it).
        seen = torch.from_numpy(_left_pad(prefixes, longest)) if longest > h else None  # [B, S]
        target = torch.tensor([int(self.data.sequence(int(u))[int(p)]) for u, p in targets], dtype=torch.long)
        tokens, mask, positions = self.tokenizer(_with_bos(history))  # [B, P]
        return PromptBatch(
            prompt_ids=tokens,
            prompt_mask=mask.long(),
            position_ids=positions,
            history=history,
            target=target,
            target_tokens=self.item_tokens[target],
            user=torch.from_numpy(np.ascontiguousarray(targets[:, 0])),
            position=torch.from_numpy(np.ascontiguousarray(targets[:, 1])),
            seen=seen,
        )

    def _resumable(self) -> bool:
        """Single-process training without workers: the training loader can resume mid-epoch (a data-parallel
        strategy gives Lightning's distributed sampler; workers prefetch ahead of the loop)."""
        kwargs = None
        trainer = getattr(self, "trainer", None)
        try:
            kwargs = getattr(getattr(trainer, "strategy", None), "distributed_sampler_kwargs", None)
        except (AssertionError, RuntimeError):
            kwargs = None
        return self.num_workers == 0 and (not kwargs or kwargs.get("num_replicas", 1) <= 1)

    def _resumable_loader(self, dataset: Dataset, batch_size: int | None, collate=None) -> DataLoader:  # noqa: ANN001
        """A training loader whose position Lightning saves in checkpoints (``datamodules/resumable.py``), with the
        order ``DataLoader(shuffle=..., generator=Generator().manual_seed(seed))`` gives."""
        from adagrpo.datamodules.resumable import ResumableLoader, ResumableSampler

        n = len(dataset)
        batches_per_epoch = n if batch_size is None else -(-n // batch_size)

        def trainer_value(get, default):  # noqa: ANN001, ANN202
            trainer = getattr(self, "trainer", None)
            try:
                return get(trainer) if trainer is not None else default
            except (AttributeError, RuntimeError):
                return default

        def epoch_batches() -> int:  # from the setting: num_training_batches is not set yet when Lightning resumes
            def taken(t) -> int:  # noqa: ANN001
                limit = t.limit_train_batches
                if isinstance(limit, int) and not isinstance(limit, bool):
                    return min(limit, batches_per_epoch)
                return int(batches_per_epoch * float(limit))

            return trainer_value(taken, batches_per_epoch)

        def full_epochs() -> bool:  # a limit_train_batches below the epoch leaves the sampler unfinished
            return epoch_batches() >= batches_per_epoch

        def trained() -> int:
            return trainer_value(lambda t: t.fit_loop.epoch_loop.batch_progress.current.processed, 0)

        sampler = ResumableSampler(n, self.seed, self.shuffle, full_epochs)
        return ResumableLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                               num_workers=0, generator=torch.Generator(), trained=trained,
                               epoch_batches=epoch_batches)

    def _loader(self, n: int, batch_size: int, collate, shuffle: bool, train: bool = False) -> DataLoader:
        if train and self._resumable():
            return self._resumable_loader(_Rows(n), batch_size, collate)
        gen = torch.Generator().manual_seed(self.seed)
        sampler = self._ordered_train_sampler(_Rows(n)) if train and not shuffle else None
        return DataLoader(_Rows(n), batch_size=batch_size, shuffle=shuffle if sampler is None else None,
                          sampler=sampler, collate_fn=collate, num_workers=self.num_workers,
                          generator=gen if shuffle else None)

    def _ordered_train_sampler(self, dataset: Dataset):  # noqa: ANN202
        """Under a data-parallel strategy with ``shuffle: false``: a ``DistributedSampler`` that keeps the data order
        (item i goes to data-parallel rank i mod world size). Lightning's own training sampler always shuffles,
        whatever the DataLoader's ``shuffle``; one that is already a ``DistributedSampler`` it leaves alone.
        ``None`` (Lightning decides) when not distributed or when the trainer does not inject samplers."""
        from torch.utils.data.distributed import DistributedSampler

        trainer = getattr(self, "trainer", None)
        try:
            kwargs = getattr(getattr(trainer, "strategy", None), "distributed_sampler_kwargs", None)
        except (AssertionError, RuntimeError):  # a strategy not set up yet (no device mesh)
            kwargs = None
        connector = getattr(trainer, "_accelerator_connector", None)
        if not kwargs or kwargs.get("num_replicas", 1) <= 1 or not getattr(connector, "use_distributed_sampler", True):
            return None
        return DistributedSampler(dataset, num_replicas=kwargs["num_replicas"], rank=kwargs["rank"], shuffle=False)

    def train_dataloader(self) -> DataLoader:
        self.prepare()
        if self.train_mode == "sft":
            if self.bucket:
                lengths = (self.sft_windows >= 0).sum(1)
                batches = bucket_batches(lengths, self.batch_size, self.seed)
            else:
                rows = np.arange(len(self.sft_windows))
                batches = [rows[i:i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
            gen = torch.Generator().manual_seed(self.seed)
            dataset = _Batches(batches, self.sft_batch)
            if self._resumable():
                return self._resumable_loader(dataset, batch_size=None)
            sampler = None if self.shuffle else self._ordered_train_sampler(dataset)
            return DataLoader(dataset, batch_size=None, shuffle=self.shuffle if sampler is None else None,
                              sampler=sampler, generator=gen if self.shuffle else None, num_workers=self.num_workers)
        targets = self.rl_targets
        return self._loader(len(targets), self.batch_size, lambda rows: self.prompt_batch(targets[rows]),
                            self.shuffle, train=True)

    def val_dataloader(self) -> DataLoader:
        self.prepare()
        t = self.val_targets
        return self._loader(len(t), self.eval_batch_size, lambda rows: self.prompt_batch(t[rows]), False)

    def test_dataloader(self) -> DataLoader:
        self.prepare()
        t = self.test_targets
        return self._loader(len(t), self.eval_batch_size, lambda rows: self.prompt_batch(t[rows]), False)

    def set_vocab(self, vocab: SidVocab) -> None:
        """Use a model's own token ids for the SID codes (a pretrained tokenizer places them elsewhere)."""
        self.prepare()
        self.vocab = vocab
        self.item_tokens = vocab.encode(self.sids.codes)
        self.tokenizer = SlotTokenizer(self.item_tokens, vocab)

    def oracle_utility(self, batch: PromptBatch) -> torch.Tensor | None:
        """True utility ``[B, N]`` of every item for each prompt (-inf on items the user already has),
        when the data comes with a ground truth (the synthetic world); else ``None``."""
        world = getattr(self.source, "world", None)
        if world is None:
            return None
        last = batch.history[:, -1].cpu()
        util = world.utility(batch.user.cpu(), last)  # [B, N]
        seen = torch.zeros_like(util, dtype=torch.bool)
        for r, (u, p) in enumerate(zip(batch.user.tolist(), batch.position.tolist())):
            seen[r, torch.from_numpy(self.data.sequence(u)[:p])] = True
        return util.masked_fill(seen, float("-inf")).to(batch.history.device)

    # ------------------------------------------------------------------------------ reporting
    def report(self) -> dict:
        """Dataset statistics and the SID report (for ``adagrpo prepare``)."""
        self.prepare()
        return {
            "dataset": self.data.name,
            "stats": self.data.stats(),
            "sids": self.sids.report,
            "sid_depth": self.sids.depth,
            "codebook_sizes": self.sids.codebook_sizes,
            "vocab_size": self.vocab.vocab_size,
            "trie_bytes": self.trie.nbytes(),
            "sft_windows": int(len(self.sft_windows)),
            "rl_prompts": int(len(self.rl_targets)),
            "heldout_users": int(self.split.heldout_mask().sum()),
            "val_targets": int(len(self.val_targets)),
            "test_targets": int(len(self.test_targets)),
        }

    def write_outputs(self, out_dir: str | Path) -> dict[str, Path]:
        """Write the SID table (TSV) and index (LC-Rec json) a user can open."""
        self.prepare()
        out = Path(out_dir)
        return {
            "sid_table": self.sids.save_table(out / "sid_table.tsv", self.data),
            "sid_index": self.sids.save_index(out / f"{self.data.name}.index.json"),
        }


def _subsample(targets: np.ndarray, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    """A seeded random subset of at most ``cap`` rows, in their original order."""
    if cap is None or len(targets) <= cap:
        return targets
    return targets[np.sort(rng.choice(len(targets), cap, replace=False))]


def _with_bos(items: torch.Tensor) -> torch.Tensor:
    """Prepend a slot and put ``BOS_ITEM`` right before each row's first real item. ``[B, S] → [B, S+1]``."""
    slots = torch.cat([torch.full((items.shape[0], 1), PAD_ITEM, dtype=torch.long), items], 1)  # [B, S+1]
    n_pad = (items < 0).sum(1)  # left padding per row; the bos goes in the last pad slot
    slots[torch.arange(items.shape[0]), n_pad] = BOS_ITEM
    return slots
