"""Located errors for bad input: every message names the file and the line or key at fault.

:class:`DataError` and :class:`ConfigError` live in :mod:`adagrpo.errors` (shared by every package); they are
re-exported here so ``from adagrpo.datamodules.errors import ConfigError`` keeps working."""

from __future__ import annotations

import os
from pathlib import Path

from adagrpo.errors import ConfigError, DataError

__all__ = ["ConfigError", "DataError", "missing_file"]


def missing_file(path: str | Path, what: str = "file not found") -> DataError:
    """A :class:`DataError` for a missing input file; a relative path gets a hint about ``$ADAGRPO_DATA_ROOT``
    (data configs resolve their paths under it, default ``data/``)."""
    p = Path(path)
    hint = ""
    if not p.is_absolute():
        root = os.environ.get("ADAGRPO_DATA_ROOT")
        hint = (f" (relative to the working directory {Path.cwd()}; ADAGRPO_DATA_ROOT is not set, so data configs "
                "read from data/ — set it to the folder holding your datasets)" if root is None else
                f" (relative to the working directory {Path.cwd()}; ADAGRPO_DATA_ROOT is {root!r})")
    elif os.environ.get("ADAGRPO_DATA_ROOT") and not Path(os.environ["ADAGRPO_DATA_ROOT"]).is_dir():
        hint = f" (ADAGRPO_DATA_ROOT={os.environ['ADAGRPO_DATA_ROOT']!r} is not a folder)"
    return DataError(what + hint, file=p)
