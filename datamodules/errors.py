"""Located errors for bad input: every message names the file and the line or key at fault."""

from __future__ import annotations

import os
from pathlib import Path


class DataError(ValueError):
    """Bad input data. ``str(err)`` reads ``<file>:<line>: <message>`` or ``<file> [key <k>]: <message>``.

    The structured fields stay available for callers and tests: ``file``, ``line`` (1-based), ``key``.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.line = line
        self.key = key
        self.reason = message
        where = ""
        if self.file is not None:
            where = self.file
            if line is not None:
                where += f":{line}"
        if key is not None:
            where += f" [key {key!r}]" if where else f"[key {key!r}]"
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(ValueError):
    """A bad configuration value; the message names the key."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"config key {key!r}: {message}")


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
