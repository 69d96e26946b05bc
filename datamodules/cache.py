"""An on-disk cache for derived artefacts (embeddings, semantic IDs), keyed by a hash of their inputs.

Entries are written to a temporary file and renamed into place, so an interrupted run never leaves
a half-written entry; an unreadable entry is rebuilt rather than trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """``$ADAGRPO_CACHE`` or ``.adagrpo_cache`` in the working directory."""
    return Path(os.environ.get("ADAGRPO_CACHE", ".adagrpo_cache"))


def key_hash(key: Any) -> str:
    """Stable short hash of a JSON-serialisable key."""
    blob = json.dumps(key, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:16]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached(kind: str, key: Any, build: Callable[[], Any], root: Path | None = None,
           check: Callable[[Any], bool] | None = None) -> tuple[Any, Path, bool]:
    """Return ``(value, path, hit)`` for ``key``; build and store the value on a miss.

    ``value`` must be ``torch.save``-able from tensors, dicts, lists and plain numbers/strings: entries are read
    with ``weights_only=True``, so a file holding any other pickled object (a crafted one included) is refused
    without running it, and rebuilt. ``check(value)`` tells a well-formed entry; one that fails it is rebuilt too.
    """
    path = (root or cache_root()) / f"{kind}-{key_hash(key)}.pt"
    if path.exists():
        try:
            value = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 — corrupt, refused or from an incompatible version: rebuild it
            log.warning("cache entry %s unreadable (%s); rebuilding", path, str(err).strip().splitlines()[0][:200])
        else:
            if check is None or check(value):
                return value, path, True
            log.warning("cache entry %s holds unexpected contents (%s); rebuilding", path, type(value).__name__)
    value = build()
    atomic_torch_save(value, path)
    return value, path, False
