"""Semantic IDs: the item ⇄ code-tuple map, its token vocabulary, and the builders that make it.

An item's SID is a tuple of ``L`` codes, one per level (``<a_12><b_3><c_40>``); where two items
would share a tuple, an extra *dedup level* numbers them (``…<d_0>``, ``…<d_1>``) so the map is a
bijection. Builders (selected in YAML by ``class_path``):

* :class:`RQKMeansSids` — residual k-means over item embeddings (text, collaborative or ``.npy``);
* :class:`IndexFileSids` — an existing LC-Rec style ``*.index.json`` (``{item: ["<a_1>", …]}``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from adagrpo.datamodules.cache import atomic_write_text, cached
from adagrpo.datamodules.catalog import Interactions
from adagrpo.datamodules.trie import CatalogTrie
from adagrpo.errors import ConfigError, DataError

LEVEL_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_TOKEN_RE = re.compile(r"^<([a-z])_(\d+)>$")
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
#: Bumped whenever the way SIDs are derived changes, so old cache entries are not reused.
SID_CACHE_VERSION = 3


def code_token(level: int, code: int) -> str:
    """The printable token of ``code`` at ``level`` (``<a_12>``)."""
    return f"<{LEVEL_LETTERS[level]}_{code}>"


class SidVocab:
    """Token ids for SID codes.

    By default the layout is compact: ids 0..2 are ``<pad>``, ``<bos>``, ``<eos>``, then every
    level's codes in order. ``token_of[l][c]`` is the id of code ``c`` at level ``l``;
    ``level_of[t]`` / ``code_of[t]`` invert it (-1 for non-SID tokens). A pretrained tokenizer can
    place the SID tokens anywhere (:meth:`from_token_ids`).
    """

    def __init__(
        self,
        codebook_sizes: list[int],
        token_of: list[torch.Tensor] | None = None,
        vocab_size: int | None = None,
        pad_id: int = 0,
        bos_id: int = 1,
        eos_id: int = 2,
    ) -> None:
        self.codebook_sizes = [int(c) for c in codebook_sizes]
        if token_of is None:
            start = len(SPECIAL_TOKENS)
            token_of = []
            for size in self.codebook_sizes:
                token_of.append(torch.arange(start, start + size))
                start += size
            vocab_size = start
        assert vocab_size is not None
        self.token_of = [t.long() for t in token_of]
        self.vocab_size = int(vocab_size)
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.level_of = torch.full((self.vocab_size,), -1, dtype=torch.long)
        self.code_of = torch.full((self.vocab_size,), -1, dtype=torch.long)
        for level, ids in enumerate(self.token_of):
            self.level_of[ids] = level
            self.code_of[ids] = torch.arange(len(ids))

    @classmethod
    def from_token_ids(cls, codebook_sizes: list[int], token_of: list[torch.Tensor], vocab_size: int,
                       pad_id: int, bos_id: int, eos_id: int) -> SidVocab:
        return cls(codebook_sizes, token_of, vocab_size, pad_id, bos_id, eos_id)

    @property
    def depth(self) -> int:
        return len(self.codebook_sizes)

    def token_strings(self) -> list[str]:
        """All SID token strings, level by level (for adding to a pretrained tokenizer)."""
        return [code_token(level, c) for level, size in enumerate(self.codebook_sizes) for c in range(size)]

    def encode(self, codes: torch.Tensor) -> torch.Tensor:
        """Token ids of ``codes [..., L]`` (same shape)."""
        out = torch.empty_like(codes)
        for level in range(codes.shape[-1]):
            out[..., level] = self.token_of[level].to(codes.device)[codes[..., level]]
        return out

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Codes of SID tokens ``[..., L]``; -1 where the token is not a code of that position's level."""
        level_of = self.level_of.to(tokens.device)
        code_of = self.code_of.to(tokens.device)
        t = tokens.clamp(0, self.vocab_size - 1)
        expected = torch.arange(tokens.shape[-1], device=tokens.device)
        ok = (tokens >= 0) & (tokens < self.vocab_size) & (level_of[t] == expected)
        return torch.where(ok, code_of[t], torch.full_like(t, -1))

    def fingerprint(self) -> str:
        h = hashlib.sha1(json.dumps([self.codebook_sizes, self.vocab_size]).encode())
        for ids in self.token_of:
            h.update(ids.numpy().tobytes())
        return h.hexdigest()[:16]


@dataclass
class SemanticIds:
    """A bijective item ⇄ SID map.

    ``codes[i]`` (``[N, L]`` long) is item ``i``'s code tuple; ``codebook_sizes[l]`` the code count of
    level ``l`` (the dedup level, when present, is the last one). ``report`` holds the quality numbers.
    """

    codes: torch.Tensor
    codebook_sizes: list[int]
    item_ids: list[str]
    report: dict = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return int(self.codes.shape[1])

    @property
    def num_items(self) -> int:
        return int(self.codes.shape[0])

    def vocab(self) -> SidVocab:
        return SidVocab(self.codebook_sizes)

    def trie(self) -> CatalogTrie:
        return CatalogTrie(self.codes, self.codebook_sizes)

    def fingerprint(self) -> str:
        """Hash of the code table and sizes: a model trained on one SID map must not run on another."""
        h = hashlib.sha1(json.dumps(self.codebook_sizes).encode())
        h.update(self.codes.contiguous().numpy().astype("int64").tobytes())
        return h.hexdigest()[:16]

    def sid_string(self, i: int) -> str:
        return "".join(code_token(level, int(c)) for level, c in enumerate(self.codes[i]))

    def to_index(self) -> dict[str, list[str]]:
        """LC-Rec style index: ``{raw_item_id: ["<a_1>", "<b_2>", …]}``."""
        return {
            raw: [code_token(level, int(c)) for level, c in enumerate(row)]
            for raw, row in zip(self.item_ids, self.codes.tolist())
        }

    def save_index(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_index()))
        return path

    def save_table(self, path: str | Path, data: Interactions | None = None) -> Path:
        """A TSV a user can open: item index, raw id, SID, popularity and title when known."""
        path = Path(path)
        pop = data.popularity().tolist() if data is not None else None
        titles = data.catalog.text.get("title") if data is not None else None
        lines = ["item_index\titem_id\tsid\tpopularity\ttitle"]
        for i, raw in enumerate(self.item_ids):
            title = titles[i].replace("\t", " ").replace("\n", " ") if titles else ""
            lines.append(f"{i}\t{raw}\t{self.sid_string(i)}\t{pop[i] if pop else ''}\t{title}")
        atomic_write_text(path, "\n".join(lines) + "\n")
        return path


# ---------------------------------------------------------------------------------------- reports
def code_statistics(codes: torch.Tensor, codebook_sizes: list[int]) -> dict:
    """Collision rate (1 - distinct tuples / N), largest collision group, per-level utilisation and
    perplexity, laid out for the prepare report (numbers from :func:`~adagrpo.datamodules.rqkmeans.code_report`)."""
    from adagrpo.datamodules.rqkmeans import code_report

    rep = code_report(codes, codebook_sizes)
    levels = [
        {"codebook_size": int(size), "used": round(util * size), "utilisation": util, "perplexity": ppl}
        for size, util, ppl in zip(codebook_sizes, rep["utilisation"], rep["perplexity"])
    ]
    return {
        "items": int(codes.shape[0]),
        "distinct_sids": rep["unique_tuples"],
        "collision_rate": rep["collision_rate"],
        "max_collision": rep["max_items_per_tuple"],
        "levels": levels,
    }


def deduplicate(
    codes: torch.Tensor,
    codebook_sizes: list[int],
    mode: Literal["auto", "always", "off"] = "auto",
    item_ids: list[str] | None = None,
    source: str | None = None,
) -> tuple[torch.Tensor, list[int], dict]:
    """Make the code table bijective by appending a dedup level.

    Items sharing a tuple get dedup codes 0, 1, … in catalogue order; unique items get 0. ``auto``
    appends the level only when there is a collision; ``always`` appends it regardless; ``off``
    refuses collisions with a :class:`DataError` naming ``source`` and the colliding items.
    Returns ``(codes [N, L or L+1], codebook_sizes, report)`` where ``report`` describes the
    collisions *before* dedup.
    """
    report = code_statistics(codes, codebook_sizes)
    n = codes.shape[0]
    _, inverse, counts = torch.unique(codes, dim=0, return_inverse=True, return_counts=True)
    collided = bool((counts > 1).any())
    report["dedup_level_added"] = False
    if mode == "off":
        if collided:
            group = int(torch.nonzero(counts > 1)[0])
            members = torch.nonzero(inverse == group).flatten().tolist()
            names = [item_ids[m] if item_ids else str(m) for m in members[:5]]
            sid = "".join(code_token(level, int(c)) for level, c in enumerate(codes[members[0]]))
            raise DataError(
                f"{int((counts > 1).sum())} SIDs are shared by several items (collision rate "
                f"{report['collision_rate']:.4f}); e.g. items {names} all have {sid}. "
                "Set dedup: auto to resolve collisions with an extra level",
                file=source,
                key=names[0],
            )
        return codes, list(codebook_sizes), report
    if mode not in ("auto", "always"):
        raise ConfigError("dedup", f"must be one of auto/always/off, got {mode!r}")
    if not collided and mode == "auto":
        return codes, list(codebook_sizes), report
    # Rank of each item within its group, in catalogue order: stable sort by group id.
    order = torch.sort(inverse, stable=True).indices  # [N]
    sorted_groups = inverse[order]
    group_start = torch.cumsum(counts, 0) - counts  # [G]
    rank_sorted = torch.arange(n) - group_start[sorted_groups]
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = rank_sorted
    report["dedup_level_added"] = True
    return torch.cat([codes, rank[:, None]], dim=1), [*codebook_sizes, int(counts.max())], report


# ---------------------------------------------------------------------------------------- builders
class SidBuilder(ABC):
    """Builds the raw (possibly colliding) code table for a dataset; :meth:`build` dedups and caches.

    Args:
        dedup: ``auto`` (extra level only when needed), ``always``, or ``off`` (collisions are an error).
    """

    def __init__(self, dedup: Literal["auto", "always", "off"] | bool = "auto") -> None:
        if dedup is False:  # YAML reads an unquoted `dedup: off` as false
            dedup = "off"
        if dedup not in ("auto", "always", "off"):
            hint = " (YAML reads unquoted on/yes/true as a boolean)" if dedup is True else ""
            raise ConfigError("dedup", f"must be one of auto/always/off, got {dedup!r}{hint}")
        self.dedup = dedup

    @abstractmethod
    def raw_codes(self, data: Interactions) -> tuple[torch.Tensor, list[int], dict]:
        """``(codes [N, L], codebook_sizes, extra report entries)`` before dedup."""

    @abstractmethod
    def cache_key(self, data: Interactions) -> dict:
        """Settings that identify the output for ``data`` (its fingerprint is added by :meth:`build`)."""

    def source_name(self) -> str | None:
        return None

    def build(self, data: Interactions, use_cache: bool = True, train_end: np.ndarray | None = None) -> SemanticIds:
        """SIDs for ``data``'s catalogue. With ``train_end``, interaction-based embeddings see only each user's
        first ``train_end[u]`` items, so held-out (validation/test) interactions never shape the SIDs."""
        view = data if train_end is None else data.truncated(train_end)
        key = {"builder": type(self).__name__, "version": SID_CACHE_VERSION, **self.cache_key(data),
               "data": view.fingerprint(), "dedup": self.dedup}

        def make() -> dict:
            codes, sizes, extra = self.raw_codes(view)
            codes, sizes, report = deduplicate(codes, sizes, self.dedup, data.catalog.item_ids, self.source_name())
            report.update(extra)
            return {"codes": codes, "sizes": sizes, "report": report}

        if use_cache:
            value, path, hit = cached("sids", key, make, check=_is_sid_entry)
            value["report"] = {**value["report"], "cache": str(path), "cache_hit": hit}
        else:
            value = make()
        return SemanticIds(value["codes"], value["sizes"], list(data.catalog.item_ids), value["report"])


def _is_sid_entry(value: object) -> bool:
    """A SID cache entry as :meth:`SidBuilder.build` stores it (anything else is rebuilt)."""
    return (isinstance(value, dict) and isinstance(value.get("codes"), torch.Tensor)
            and isinstance(value.get("sizes"), list) and isinstance(value.get("report"), dict))


class RQKMeansSids(SidBuilder):
    """Residual k-means over item embeddings.

    Args:
        embeddings: where item vectors come from (text TF-IDF+SVD by default; collaborative; ``.npy``;
            a packaged sentence model with the ``[text]`` extra).
        levels: number of code levels before dedup.
        codebook_size: codes per level; capped for small catalogues when ``cap_small_catalogue``.
        cap_small_catalogue: cap codes per level at ``max(4, ceil(4 · num_items^(1/levels)))`` (no dead codes).
        balanced: size-balanced cluster assignment (spreads items more evenly over codes).
        iters: k-means iterations per level.
        seed: seeds k-means++ initialisation.
        dedup: ``auto`` adds a dedup level only when items collide, ``always`` always adds one, ``off`` refuses
            collisions.
    """

    def __init__(
        self,
        embeddings: ItemEmbeddings | None = None,
        levels: int = 3,
        codebook_size: int = 256,
        cap_small_catalogue: bool = True,
        balanced: bool = False,
        iters: int = 50,
        seed: int = 0,
        dedup: Literal["auto", "always", "off"] | bool = "auto",
    ) -> None:
        super().__init__(dedup)
        if levels < 1 or levels > 8:
            raise ConfigError("levels", f"must be in 1..8, got {levels}")
        if codebook_size < 2:
            raise ConfigError("codebook_size", f"must be >= 2, got {codebook_size}")
        if embeddings is None:
            from adagrpo.datamodules.embeddings import TextEmbeddings

            embeddings = TextEmbeddings()
        self.embeddings = embeddings
        self.levels = levels
        self.codebook_size = codebook_size
        self.cap_small_catalogue = cap_small_catalogue
        self.balanced = balanced
        self.iters = iters
        self.seed = seed

    def cache_key(self, data: Interactions) -> dict:
        from adagrpo.datamodules.rqkmeans import effective_codebook_sizes

        return {
            "embeddings": {"class": type(self.embeddings).__name__, **self.embeddings.cache_key()},
            "levels": self.levels,
            "codebook_size": self.codebook_size,
            "sizes": effective_codebook_sizes(data.num_items, self.levels, self.codebook_size,
                                              self.cap_small_catalogue),
            "cap": self.cap_small_catalogue,
            "balanced": self.balanced,
            "iters": self.iters,
            "seed": self.seed,
        }

    def raw_codes(self, data: Interactions) -> tuple[torch.Tensor, list[int], dict]:
        from adagrpo.datamodules.rqkmeans import effective_codebook_sizes, rq_kmeans

        x = self.embeddings.embed(data)  # [N, D]
        sizes = effective_codebook_sizes(data.num_items, self.levels, self.codebook_size, self.cap_small_catalogue)
        result = rq_kmeans(x, sizes, iters=self.iters, seed=self.seed, balanced=self.balanced)
        extra = {
            "method": "rq-kmeans",
            "embeddings": type(self.embeddings).__name__,
            "embedding_dim": int(x.shape[1]),
            "residual_norms": [float(r) for r in result.residual_norms],
        }
        return result.codes, sizes, extra


class IndexFileSids(SidBuilder):
    """Load an existing SID index (``{key: ["<a_1>", "<b_2>", …]}``, LC-Rec/LETTER format).

    Args:
        path: the ``*.index.json`` file.
        key_field: which catalogue field the index keys name: ``None`` for the raw item id, or the
            name of a kept item attribute (e.g. Beauty's indexes are keyed by ``item_id`` while its
            sequences use ASINs).
    """

    def __init__(self, path: str, key_field: str | None = None,
                 dedup: Literal["auto", "always", "off"] | bool = "auto"):
        super().__init__(dedup)
        self.path = str(path)
        self.key_field = key_field

    def source_name(self) -> str | None:
        return self.path

    def cache_key(self, data: Interactions) -> dict:
        p = Path(self.path)
        stat = p.stat() if p.exists() else None
        return {"path": str(p.resolve()), "key_field": self.key_field,
                "mtime": stat.st_mtime_ns if stat else None, "size": stat.st_size if stat else None}

    def raw_codes(self, data: Interactions) -> tuple[torch.Tensor, list[int], dict]:
        index, lines = _read_index(self.path)
        catalog = data.catalog
        if self.key_field is None:
            keys = catalog.item_ids
        elif self.key_field in catalog.attrs:
            keys = catalog.attrs[self.key_field]
        else:
            raise ConfigError(
                "key_field",
                f"{self.key_field!r} is not a kept item field of the catalogue (have: {sorted(catalog.attrs)}); "
                "add it to the item file's keep_fields",
            )
        depth = None
        rows: list[list[int]] = []
        for i, key in enumerate(keys):
            tokens = index.get(key)
            if tokens is None:
                missing = sum(1 for k in keys if k not in index)
                raise DataError(
                    f"the index does not cover the catalogue: item {catalog.item_ids[i]!r} (index key {key!r}) "
                    f"has no SID; {missing} of {len(keys)} catalogue items are missing",
                    file=self.path,
                    key=key,
                )
            codes = []
            for level, tok in enumerate(tokens):
                m = _TOKEN_RE.match(tok) if isinstance(tok, str) else None
                if m is None or LEVEL_LETTERS.index(m.group(1)) != level:
                    raise DataError(
                        f"token {tok!r} at position {level} is not a level-{LEVEL_LETTERS[level]} SID token "
                        f"like {code_token(level, 0)!r}",
                        file=self.path, line=lines.get(key), key=key,
                    )
                codes.append(int(m.group(2)))
            if depth is None:
                depth = len(codes)
            elif len(codes) != depth:
                raise DataError(f"SID has {len(codes)} tokens, others have {depth}",
                                file=self.path, line=lines.get(key), key=key)
            rows.append(codes)
        codes_t = torch.tensor(rows, dtype=torch.long)  # [N, L]
        sizes = [int(codes_t[:, level].max()) + 1 for level in range(codes_t.shape[1])]
        # Codebooks are usually powers of two (256); report the declared size when it fits.
        sizes = [max(s, 2 ** math.ceil(math.log2(s))) if s > 1 else s for s in sizes]
        extra = {"method": "index-file", "index": self.path, "index_entries": len(index)}
        return codes_t, sizes, extra


def _read_index(path: str) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Read an index json; returns the map and the 1-based line of each key (for error messages)."""
    p = Path(path)
    if not p.exists():
        raise DataError("SID index file not found", file=path)
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"not valid UTF-8 ({err.reason})", file=path, line=line) from None

    def no_duplicates(pairs: list[tuple[str, object]]) -> dict:
        out: dict = {}
        for k, v in pairs:
            if k in out:
                raise DataError(f"duplicate key {k!r}", file=path, key=k)
            out[k] = v
        return out

    try:
        index = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as err:
        raise DataError(f"invalid JSON: {err.msg}", file=path, line=err.lineno) from None
    if not isinstance(index, dict):
        raise DataError("an index must be a JSON object {item: [tokens]}", file=path, line=1)
    lines: dict[str, int] = {}
    if "\n" in text.strip():  # one key per line (pretty-printed): remember where each key is
        for n, line in enumerate(text.splitlines(), start=1):
            m = re.match(r'\s*"([^"]+)"\s*:', line)
            if m:
                lines.setdefault(m.group(1), n)
    for k, v in index.items():
        if not isinstance(v, list) or not v:
            raise DataError("value must be a non-empty list of SID tokens", file=path, line=lines.get(k), key=k)
    return index, lines


# Imported last: embeddings imports this module's neighbours only, never this module.
from adagrpo.datamodules.embeddings import ItemEmbeddings  # noqa: E402
