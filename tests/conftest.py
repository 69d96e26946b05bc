"""Shared fixtures: the real-data root, a tiny synthetic DataModule, and a private cache directory.

Every test session writes derived artefacts (``$ADAGRPO_CACHE``) into a temporary directory, never into
the repository's ``.adagrpo_cache``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# Tiny tensors: one intra-op thread is fastest, and on a busy 2-core machine two spinning OpenMP threads make
# every small op ~1000x slower (10 ms instead of 10 us).
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the packages are importable without an install (plain `pytest` from anywhere)
    sys.path.insert(0, str(REPO))


def data_root_path() -> Path:
    """``$ADAGRPO_DATA_ROOT``, or ``<repo>/../shared/data``."""
    return Path(os.environ.get("ADAGRPO_DATA_ROOT", str(REPO.parent / "shared" / "data")))


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point ``$ADAGRPO_CACHE`` at a session temp dir so nothing writes ``.adagrpo_cache`` in the repo."""
    cache = tmp_path_factory.mktemp("adagrpo_cache")
    old = os.environ.get("ADAGRPO_CACHE")
    os.environ["ADAGRPO_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("ADAGRPO_CACHE", None)
    else:
        os.environ["ADAGRPO_CACHE"] = old


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared real-data folder; tests using it skip when it is absent."""
    root = data_root_path()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set ADAGRPO_DATA_ROOT)")
    return root


@pytest.fixture(scope="session")
def beauty_dir(data_root: Path) -> Path:
    root = data_root / "amazon_beauty_2014"
    if not (root / "user_sequences.txt").is_file():
        pytest.skip(f"Beauty data not found under {root}")
    return root


@pytest.fixture(scope="session")
def tiny_world_dm():
    """A prepared SeqRecDataModule on a 200-user × 120-item synthetic world with RQ-KMeans SIDs (no disk cache).

    Session-scoped for speed: tests must treat it as read-only.
    """
    from tiny_world import tiny_world_kwargs

    from adagrpo import datamodules

    dm = datamodules.SeqRecDataModule(**tiny_world_kwargs(), batch_size=16, eval_batch_size=32)
    dm.prepare()
    return dm
