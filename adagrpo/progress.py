"""Progress bars for the long steps that are otherwise silent (reading big data files, text embeddings, RQ-KMeans,
the reward model's bias report): tqdm on stderr, so stdout keeps only results.

Bars show only when stderr is a terminal; ``ADAGRPO_QUIET=1`` (what ``--quiet`` sets) turns them off and
``ADAGRPO_PROGRESS=1`` turns them on where stderr is not a terminal (a log file). Shared by every package, it
imports nothing from the project.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

QUIET_ENV = "ADAGRPO_QUIET"
FORCE_ENV = "ADAGRPO_PROGRESS"

T = TypeVar("T")


def set_quiet(quiet: bool = True) -> None:
    """Switch the bars off (or back on) for this process and the processes it starts."""
    if quiet:
        os.environ[QUIET_ENV] = "1"
    else:
        os.environ.pop(QUIET_ENV, None)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def enabled() -> bool:
    """Whether bars are shown now (see the module's docstring)."""
    if _flag(QUIET_ENV):
        return False
    if _flag(FORCE_ENV):
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return False


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """``iterable`` with a tqdm bar on stderr when :func:`enabled`, else ``iterable`` itself. The bar is removed
    when the loop ends (an early ``break`` included), so finished steps leave no clutter."""
    if not enabled():
        yield from iterable
        return
    from tqdm.auto import tqdm

    bar = tqdm(iterable, desc=desc, total=total, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)
    try:
        yield from bar
    finally:
        bar.close()
