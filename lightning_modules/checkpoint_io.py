"""Loading files without running pickled code.

Every checkpoint and cache entry the project reads goes through :func:`load_checkpoint`, which calls
``torch.load(..., weights_only=True)``: tensors, plain containers and numbers load; any other pickled object is
refused *before* it is constructed, so a crafted file cannot run code. A refused, truncated or corrupt file fails
with :class:`IncompatibleCheckpoint` naming the file.

Allow-list (the only ``weights_only=False`` loads in the project):

* ``TorchReward(path=..., trust_pickle=True)`` — a reward module saved with ``torch.save(module)`` is a pickle by
  nature; it loads only when the user says they trust that file (TorchScript files need no such flag).
  :func:`load_trusted_pickle` is that one call.

``tests/reliability/test_safe_loading.py`` greps the sources and fails on any other ``weights_only=False``.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch


class IncompatibleCheckpoint(RuntimeError):
    """A checkpoint does not fit the data or the model it is loaded into, or cannot be read safely."""


def load_checkpoint(path: str | Path, *, what: str = "checkpoint", mmap: bool = False, expect_dict: bool = True) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors that name ``path``.

    Args:
        what: how the message names the file (``"checkpoint"``, ``"reward checkpoint (model.reward…)"``, …).
        mmap: memory-map the tensors (only the zip format supports it; other files are read normally).
        expect_dict: a checkpoint is a dict; anything else (a bare tensor, a list) is refused with a message.
    """
    obj = _load(path, what, mmap)
    if expect_dict and not isinstance(obj, dict):
        raise IncompatibleCheckpoint(f"{what} {path} is not a checkpoint: it holds a {type(obj).__name__}, not the "
                                     "dict a Lightning checkpoint is")
    return obj


def _load(path: str | Path, what: str, mmap: bool) -> Any:
    p = Path(path)
    if not p.exists():
        raise IncompatibleCheckpoint(f"{what} not found: {p}")
    if p.is_dir():
        raise IncompatibleCheckpoint(f"{what} {p} is a directory, not a checkpoint file")
    if p.stat().st_size == 0:
        raise IncompatibleCheckpoint(f"{what} {p} is empty (0 bytes): an interrupted write? Use another checkpoint")
    try:
        try:
            return torch.load(p, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(p))
        except RuntimeError as err:
            if mmap and "mmap" in str(err):
                return torch.load(p, map_location="cpu", weights_only=True)
            raise
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in str(err) or "Unsupported global" in str(err) or "GLOBAL" in str(err):
            raise IncompatibleCheckpoint(
                f"{what} {p} was refused: it holds pickled Python objects other than tensors and plain values, "
                f"which could run code when loaded ({_short(first)}). adagrpo checkpoints never do; "
                "only load files from a source you trust") from None
        raise IncompatibleCheckpoint(f"{what} {p} is not a readable checkpoint ({_short(first)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError, TypeError,
            AttributeError, UnicodeDecodeError) as err:  # what torch.load raises on bytes that are no checkpoint
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise IncompatibleCheckpoint(
            f"{what} {p} is not a readable checkpoint (truncated or corrupt? {_short(first)}); "
            "use another checkpoint, e.g. the run's best.ckpt or an earlier one") from None


def load_trusted_pickle(path: str | Path) -> Any:
    """Unpickle ``path`` with ``weights_only=False``: runs whatever code the file holds. Only for files the user
    explicitly trusts (``TorchReward(trust_pickle=True)``); see the module docstring's allow-list."""
    return torch.load(Path(path), map_location="cpu", weights_only=False)  # allow-listed: explicit user trust


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def load_module_file(path: str | Path, trust_pickle: bool = False, key: str = "reward.path") -> Any:
    """A user's scoring module from a file: TorchScript (``torch.jit.script(m).save(path)``; no Python code runs),
    or, only with ``trust_pickle``, a ``torch.save(module)`` pickle (which runs whatever code it holds)."""
    p = Path(path)
    if not p.exists():
        raise IncompatibleCheckpoint(f"reward module file not found: {p} ({key})")
    try:
        return torch.jit.load(str(p), map_location="cpu")
    except Exception as err:  # noqa: BLE001 — not TorchScript
        if not trust_pickle:
            raise IncompatibleCheckpoint(
                f"reward module file {p} ({key}) is not a TorchScript file "
                f"({_short(str(err).splitlines()[0] if str(err) else type(err).__name__, 120)}). "
                "A pickled module (torch.save(module)) runs code when loaded, so it is refused unless you trust the "
                "file and set trust_pickle: true; or save it with torch.jit.script(module).save(path)") from None
    return load_trusted_pickle(p)
