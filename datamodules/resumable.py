"""A training DataLoader that a resumed fit continues mid-epoch, batch for batch.

:class:`ResumableSampler` draws epoch ``e``'s order as the ``e``-th permutation of a generator seeded once, which is
exactly what ``DataLoader(shuffle=True, generator=torch.Generator().manual_seed(seed))`` gives within one process,
but computed from ``(seed, epoch)`` alone, so a new process reproduces it. :class:`ResumableLoader` counts the
batches the training loop has taken in the current epoch; Lightning saves its ``state_dict`` in every checkpoint
(the fit loop stores the state of every loader that has one) and hands it back on resume, and the sampler then
skips what was already trained on.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler


class ResumableSampler(Sampler[int]):
    """Indices ``0..n-1``: in order, or shuffled per epoch from ``seed`` (Lightning calls :meth:`set_epoch`).

    The shuffled order of epoch ``e`` is the one ``DataLoader(shuffle=True, generator=Generator().manual_seed(seed))``
    gives in its ``e``-th epoch: each epoch its iterator draws a base seed, the sampler a permutation, and, when the
    epoch was read to the end (``full_epochs()``), one more permutation that it discards.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, full_epochs=None) -> None:  # noqa: ANN001
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self.full_epochs = full_epochs or (lambda: True)
        self.epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, indices to skip) after a resume

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        gen = torch.Generator().manual_seed(self.seed)
        full = self.full_epochs()
        for e in range(epoch + 1):
            torch.empty((), dtype=torch.int64).random_(generator=gen)  # the DataLoader iterator's base seed
            perm = torch.randperm(self.n, generator=gen)
            if e < epoch and full:
                torch.randperm(self.n, generator=gen)  # RandomSampler's trailing draw at the end of an epoch
        return perm.tolist()

    def __iter__(self) -> Iterator[int]:
        order = self.order(self.epoch)
        if self._skip is not None:
            epoch, skip = self._skip
            self._skip = None
            if epoch == self.epoch:
                order = order[skip:]
        return iter(order)

    def __len__(self) -> int:
        return self.n

    def skip(self, epoch: int, indices: int) -> None:
        """The next iteration is of ``epoch`` and starts after its first ``indices`` indices."""
        self.epoch = epoch
        self._skip = (epoch, indices)


class ResumableLoader(DataLoader):
    """A DataLoader over a :class:`ResumableSampler` whose ``state_dict`` is the training loop's position (epoch and
    batches trained in it). Lightning prefetches a batch ahead, so the loader does not count what it yielded: it
    asks ``trained()`` (the fit loop's count of processed batches of the epoch); ``epoch_batches()`` is how many
    batches an epoch has under ``limit_train_batches``. Only for single-process training:
    under a data-parallel strategy Lightning rebuilds the loader with a distributed sampler."""

    def __init__(self, *args, trained=None, epoch_batches=None, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.trained = trained
        self.epoch_batches = epoch_batches

    @property
    def resumable_sampler(self) -> ResumableSampler:
        return self.batch_sampler.sampler if self.batch_sampler is not None else self.sampler

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.resumable_sampler.epoch, "batches": int(self.trained() if self.trained else 0)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        per_batch = self.batch_size or 1  # batch_size=None: each index is a whole batch
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if self.epoch_batches is not None and batches >= self.epoch_batches():
            # Saved after the epoch's last batch: Lightning's resumed fit reads this iterator as the next epoch.
            epoch, batches = epoch + 1, 0
        self.resumable_sampler.skip(epoch, batches * per_batch)


def restore_loader_position(trainer) -> bool:  # noqa: ANN001 — a lightning.Trainer
    """Hand a resumed fit's saved loader positions to its training loaders, if Lightning has not.

    Lightning loads them when it first builds the training loader of a restored fit; but when something asked for
    ``trainer.estimated_stepping_batches`` before the checkpoint was restored (a scheduler sized by it, in
    ``configure_optimizers``), the loader was built, and its iterator started, too early, and the saved positions are
    never applied. Called from ``on_train_start`` (after the restore, before the first batch): loads them and restarts
    the iterator from there. Returns whether it did."""
    fit_loop = trainer.fit_loop
    states = getattr(fit_loop, "_combined_loader_states_to_load", None)
    loader = getattr(fit_loop, "_combined_loader", None)
    fetcher = getattr(fit_loop, "_data_fetcher", None)
    if not states or loader is None or fetcher is None:
        return False
    loader._load_state_dicts(states)
    fit_loop._combined_loader_states_to_load = []
    iter(fetcher)  # a new iterator (and its prefetched batch) from the restored position
    return True


def validation_due(trainer) -> bool:  # noqa: ANN001 — a lightning.Trainer
    """Whether Lightning validates after the training batch that has just ended (asked from ``on_train_batch_end``).

    A fit resumed from a checkpoint written at such a step does not run that validation (Lightning counts it as
    done), so a periodic checkpoint is better written after it (:class:`~adagrpo.callbacks.RunRecorder`)."""
    if not trainer.enable_validation:
        return False
    return bool(trainer.fit_loop.epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher))
