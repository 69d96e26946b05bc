"""The validated in-memory form of a dataset: a :class:`Catalog` of items and user :class:`Interactions`.

Every reader in :mod:`adagrpo.datamodules.readers` produces an :class:`Interactions`; everything downstream
(semantic IDs, splits, exposure simulation, DataModules) starts from it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

#: Item text fields kept when a source has them, in the order they are joined for text embeddings.
TEXT_FIELDS = ("title", "brand", "categories", "description")


@dataclass
class Catalog:
    """Items, indexed 0..N-1 internally.

    ``item_ids[i]`` is the item's raw id (always a string); ``text[field][i]`` its text for each
    field present in the source ("" where an item lacks it); ``attrs[name][i]`` any other per-item
    value a source carries (e.g. an alternative id used by a shipped SID index).
    """

    item_ids: list[str]
    text: dict[str, list[str]] = field(default_factory=dict)
    attrs: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._index = {raw: i for i, raw in enumerate(self.item_ids)}
        if len(self._index) != len(self.item_ids):
            raise ValueError("Catalog.item_ids contains duplicates")
        for name, values in {**self.text, **self.attrs}.items():
            if len(values) != len(self.item_ids):
                raise ValueError(f"Catalog field {name!r} has {len(values)} values for {len(self.item_ids)} items")

    def __len__(self) -> int:
        return len(self.item_ids)

    def index(self, raw_id: str) -> int | None:
        """Internal index of a raw item id, or ``None`` if the item is not in the catalogue."""
        return self._index.get(raw_id)

    def item_text(self, i: int) -> str:
        """All text fields of item ``i`` joined into one string (for text embeddings)."""
        parts = [self.text[f][i] for f in TEXT_FIELDS if f in self.text and self.text[f][i]]
        parts += [self.text[f][i] for f in self.text if f not in TEXT_FIELDS and self.text[f][i]]
        return " . ".join(parts)

    def texts(self) -> list[str]:
        return [self.item_text(i) for i in range(len(self))]

    def has_text(self) -> bool:
        return any(any(v for v in values) for values in self.text.values())

    def subset(self, keep: np.ndarray) -> Catalog:
        """A catalogue of the items ``keep`` (internal indices, in that order)."""
        keep = [int(i) for i in keep]
        return Catalog(
            item_ids=[self.item_ids[i] for i in keep],
            text={f: [v[i] for i in keep] for f, v in self.text.items()},
            attrs={f: [v[i] for i in keep] for f, v in self.attrs.items()},
        )


@dataclass
class Interactions:
    """User sequences over a :class:`Catalog`, each in time order (oldest first).

    Stored as CSR: ``items[offsets[u]:offsets[u + 1]]`` are user ``u``'s internal item indices.
    """

    name: str
    catalog: Catalog
    user_ids: list[str]
    offsets: np.ndarray  # [U + 1] int64
    items: np.ndarray  # [nnz] int64
    files: list[str] = field(default_factory=list)

    @classmethod
    def from_lists(
        cls, name: str, catalog: Catalog, user_ids: list[str], sequences: list[list[int]], files: list[str]
    ) -> Interactions:
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter((i for s in sequences for i in s), dtype=np.int64, count=int(offsets[-1]))
        return cls(name, catalog, list(user_ids), offsets, flat, list(files))

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.catalog)

    @property
    def num_interactions(self) -> int:
        return int(self.offsets[-1])

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, u: int) -> np.ndarray:
        return self.items[self.offsets[u] : self.offsets[u + 1]]

    def sequences(self) -> list[np.ndarray]:
        return [self.sequence(u) for u in range(self.num_users)]

    def truncated(self, ends: np.ndarray) -> Interactions:
        """The same users and catalogue with each sequence cut to its first ``ends[u]`` items (e.g. the training
        prefixes of a split, so that nothing derived from it sees held-out interactions)."""
        lengths = self.lengths()
        user = np.repeat(np.arange(self.num_users), lengths)  # [nnz]
        position = np.arange(len(self.items)) - self.offsets[user]  # [nnz]
        keep = position < np.minimum(np.asarray(ends), lengths)[user]
        new_lengths = np.bincount(user[keep], minlength=self.num_users)
        offsets = np.zeros(self.num_users + 1, dtype=np.int64)
        np.cumsum(new_lengths, out=offsets[1:])
        return Interactions(self.name, self.catalog, list(self.user_ids), offsets, self.items[keep], list(self.files))

    def popularity(self) -> np.ndarray:
        """Interaction count per item, ``[N]`` int64."""
        return np.bincount(self.items, minlength=self.num_items).astype(np.int64)

    def fingerprint(self) -> str:
        """Content hash of the sequences and the catalogue ids (keys caches of derived artefacts)."""
        h = hashlib.sha1()
        h.update(np.ascontiguousarray(self.offsets).tobytes())
        h.update(np.ascontiguousarray(self.items).tobytes())
        h.update("\x1f".join(self.catalog.item_ids).encode())
        fields = {**{f"text:{k}": v for k, v in self.catalog.text.items()},
                  **{f"attr:{k}": v for k, v in self.catalog.attrs.items()}}
        for name in sorted(fields):  # text SIDs change with the text; index SIDs with the id column they use
            h.update(name.encode())
            h.update("\x1f".join(fields[name]).encode())
        return h.hexdigest()[:16]

    def stats(self) -> dict[str, float]:
        lengths = self.lengths()
        return {
            "users": self.num_users,
            "items": self.num_items,
            "interactions": self.num_interactions,
            "mean_length": float(lengths.mean()) if len(lengths) else 0.0,
            "min_length": int(lengths.min()) if len(lengths) else 0,
            "max_length": int(lengths.max()) if len(lengths) else 0,
            "density": self.num_interactions / max(1, self.num_users * self.num_items),
            "popularity_gini": gini(self.popularity()),
        }


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0 = all equal, →1 = all mass on one item)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n = len(x)
    if n == 0 or x.sum() == 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float((2.0 * (ranks * x).sum()) / (n * x.sum()) - (n + 1) / n)


def kcore(data: Interactions, k: int) -> Interactions:
    """Iteratively drop users and items with fewer than ``k`` interactions until both hold.

    Items never interacted with are dropped too. Returns a new :class:`Interactions`
    (catalogue re-indexed, user order and item order preserved).
    """
    if k <= 1:
        return data
    user_of = np.repeat(np.arange(data.num_users), data.lengths())
    items = data.items
    keep = np.ones(len(items), dtype=bool)
    while True:
        item_counts = np.bincount(items[keep], minlength=data.num_items)
        user_counts = np.bincount(user_of[keep], minlength=data.num_users)
        new_keep = keep & (item_counts[items] >= k) & (user_counts[user_of] >= k)
        if new_keep.sum() == keep.sum():
            break
        keep = new_keep
    kept_items = np.flatnonzero(np.bincount(items[keep], minlength=data.num_items) > 0)
    remap = np.full(data.num_items, -1, dtype=np.int64)
    remap[kept_items] = np.arange(len(kept_items))
    kept_users = np.flatnonzero(np.bincount(user_of[keep], minlength=data.num_users) > 0)
    sequences = []
    for u in kept_users:
        s, e = data.offsets[u], data.offsets[u + 1]
        seq = items[s:e][keep[s:e]]
        sequences.append(remap[seq].tolist())
    return Interactions.from_lists(
        data.name,
        data.catalog.subset(kept_items),
        [data.user_ids[u] for u in kept_users],
        sequences,
        data.files,
    )
