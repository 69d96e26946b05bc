"""The project's shared error types, importable by every package (data, models, callbacks, the CLI) without one
package importing another: a bad configuration value (:class:`ConfigError`) and bad input data
(:class:`DataError`). Both are ``ValueError``s whose message names the key, or the file and line, at fault.

``adagrpo.datamodules.errors`` re-exports them (the same classes), so older imports keep working.
"""

from __future__ import annotations

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
