"""The config-facing base of every dataset source (selected in YAML by ``class_path``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

from adagrpo.datamodules.catalog import Interactions, kcore
from adagrpo.errors import ConfigError, DataError


class DataSource(ABC):
    """Reads one dataset into a validated :class:`Interactions`.

    Args:
        min_length: sequences shorter than this (after k-core filtering) are an error, or are
            dropped when ``on_short="drop"``. Leave-one-out needs at least 3.
        on_short: ``"error"`` (default; the message names the file and line/key of the first
            short sequence) or ``"drop"``.
        kcore: if > 1, iteratively keep users and items with at least this many interactions.
        name: dataset name used in reports and cache keys (defaults to the class name).
    """

    def __init__(
        self,
        min_length: int = 3,
        on_short: Literal["error", "drop"] = "error",
        kcore: int = 0,
        name: str | None = None,
    ) -> None:
        if min_length < 1:
            raise ConfigError("min_length", f"must be >= 1, got {min_length}")
        if on_short not in ("error", "drop"):
            raise ConfigError("on_short", f"must be 'error' or 'drop', got {on_short!r}")
        self.min_length = min_length
        self.on_short = on_short
        self.kcore = kcore
        self.name = name or type(self).__name__

    @abstractmethod
    def read(self) -> tuple[Interactions, list[tuple[str, int | None, str | None]]]:
        """Read and validate the raw files.

        Returns the data and, for each user in order, where its sequence was read from
        ``(file, line or None, key or None)`` so later checks can point at it.
        """

    def cache_key(self) -> dict:
        """What identifies this source's output (used in cache keys); defaults to its settings."""
        return {k: (str(v) if not isinstance(v, (int, float, bool, type(None))) else v) for k, v in vars(self).items()}

    def load(self) -> Interactions:
        """Read, k-core filter and check minimum lengths."""
        data, where = self.read()
        if self.kcore > 1:
            before = {u: i for i, u in enumerate(data.user_ids)}
            data = kcore(data, self.kcore)
            where = [where[before[u]] for u in data.user_ids]
        lengths = data.lengths()
        short = [u for u in range(data.num_users) if lengths[u] < self.min_length]
        if short:
            if self.on_short == "error":
                u = short[0]
                file, line, key = where[u]
                raise DataError(
                    f"user {data.user_ids[u]!r} has {int(lengths[u])} interactions, fewer than min_length="
                    f"{self.min_length} ({len(short)} such users; set on_short: drop to drop them)",
                    file=file,
                    line=line,
                    key=key,
                )
            keep_users = [u for u in range(data.num_users) if lengths[u] >= self.min_length]
            data = type(data).from_lists(
                data.name,
                data.catalog,
                [data.user_ids[u] for u in keep_users],
                [data.sequence(u).tolist() for u in keep_users],
                data.files,
            )
        if data.num_users == 0:
            raise DataError("no user sequences left after filtering", file=data.files[0] if data.files else None)
        return data
