"""Coat: the real rating matrices (self-selected and random), the exposure logs built from them, and located
errors for malformed matrix files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adagrpo import datamodules
from adagrpo.datamodules.errors import ConfigError, DataError
from adagrpo.datamodules.exposure import CoatExposure, CoatSource
from adagrpo.datamodules.reward_data import RewardDataModule


# ============================================================================================ real data
@pytest.fixture(scope="module")
def coat_dir(data_root: Path) -> Path:
    root = data_root / "coat"
    if not (root / "train.ascii").is_file() or not (root / "test.ascii").is_file():
        pytest.skip(f"Coat data not found under {root}")
    return root


@pytest.fixture(scope="module")
def coat_dm(coat_dir: Path) -> RewardDataModule:
    dm = RewardDataModule(
        source=CoatSource(str(coat_dir)),
        sids=datamodules.RQKMeansSids(embeddings=datamodules.TextEmbeddings(dim=16), levels=3, codebook_size=8,
                                      iters=20),
        exposure=CoatExposure(),
        split="ratio",
        max_history=24,
        use_cache=False,
    )
    dm.prepare()
    return dm


@pytest.mark.realdata
def test_coat_source_sizes_and_ratings(coat_dir):
    src = CoatSource(str(coat_dir))
    data = src.load()
    assert data.num_users == 290 and data.num_items == 300
    train, test = src.ratings("train"), src.ratings("test")
    assert train.shape == (6960, 3) and test.shape == (4640, 3)
    for r in (train, test):
        assert r[:, 2].min() >= 1 and r[:, 2].max() <= 5
        assert r[:, 0].max() == 289 and r[:, 1].max() <= 299
    assert (np.bincount(train[:, 0]) == 24).all()  # 24 self-selected ratings per user
    assert (np.bincount(test[:, 0]) == 16).all()  # 16 randomly assigned ratings per user
    assert np.bincount(train[:, 2], minlength=6)[1:].tolist() == [1901, 1437, 1717, 1275, 630]
    assert np.bincount(test[:, 2], minlength=6)[1:].tolist() == [1879, 899, 1002, 641, 219]
    # A user's sequence is the liked (>= 4) coats of their *training* events (held-out ratings never enter a
    # history), or their best-rated training coat if none.
    split = src.event_split()
    assert set(np.unique(split)) == {0, 1, 2} and 0.15 < (split == 2).mean() < 0.25
    kept = train[split == 0]
    liked = {u: sorted(kept[(kept[:, 0] == u) & (kept[:, 2] >= 4), 1].tolist()) for u in range(290)}
    held_out_liked = train[(split != 0) & (train[:, 2] >= 4)]
    for u in range(290):
        seq = data.sequence(u).tolist()
        assert not set(seq) & set(held_out_liked[held_out_liked[:, 0] == u, 1].tolist())
        if liked[u]:
            assert seq == liked[u]
        else:
            assert len(seq) == 1
            rated = kept[kept[:, 0] == u]
            assert seq[0] in rated[rated[:, 2] == rated[:, 2].max(), 1].tolist()
    # Item text comes from the one-hot item features.
    assert all(data.catalog.text["title"])
    assert "gender" in data.catalog.text["title"][0]


@pytest.mark.realdata
def test_coat_exposure_logs(coat_dm):
    logs = coat_dm.logs
    src = coat_dm.source
    biased, random = src.ratings("train"), src.ratings("test")
    assert len(logs.train) + len(logs.val) + len(logs.test) == 6960
    assert len(logs.test) == pytest.approx(0.2 * 6960, rel=0.1)
    assert len(logs.val) == pytest.approx(0.1 * 0.8 * 6960, rel=0.2)
    assert logs.unbiased is not None and len(logs.unbiased) == 4640
    # Every self-selected rating is in exactly one biased log, with liked = rating >= 4.
    rating = {(u, i): r for u, i, r in biased.tolist()}
    seen = []
    for log in (logs.train, logs.val, logs.test):
        assert log.items.shape == (len(log), 1)
        for u, i, y in zip(log.user.tolist(), log.items[:, 0].tolist(), log.labels[:, 0].tolist()):
            assert y == float(rating[(u, i)] >= 4)
            seen.append((u, i))
    assert sorted(seen) == sorted(rating)
    positives = sum(int((log.labels == 1).sum()) for log in (logs.train, logs.val, logs.test))
    assert positives == 1275 + 630
    # The unbiased log is the random-exposure ratings.
    un = logs.unbiased
    assert sorted(zip(un.user.tolist(), un.items[:, 0].tolist())) == sorted(map(tuple, random[:, :2].tolist()))
    assert int((un.labels == 1).sum()) == 641 + 219
    assert set(np.unique(un.labels).tolist()) == {0.0, 1.0}


@pytest.mark.realdata
def test_coat_batches_never_show_the_scored_coat_in_history(coat_dm):
    for log in (coat_dm.logs.train, coat_dm.logs.test, coat_dm.logs.unbiased):
        rows = np.arange(0, len(log), 7)
        batch = coat_dm.exposure_batch(log, rows)
        assert batch.history.shape == (len(rows), 24)
        for r in range(len(rows)):
            hist = batch.history[r][batch.history[r] >= 0].tolist()
            item = int(batch.items[r, 0])
            assert item not in hist
            # Otherwise the history is the user's whole liked sequence.
            seq = [i for i in coat_dm.data.sequence(int(batch.user[r])).tolist() if i != item]
            assert hist == seq[-24:]


@pytest.mark.realdata
def test_coat_exposure_needs_coat_source(coat_dm):
    with pytest.raises(ConfigError, match="CoatSource"):
        CoatExposure().build(coat_dm.data, coat_dm.split.train_end, object())


# ============================================================================================ bad files
def write_coat(tmp_path: Path, train: str, test: str = "1 0 0\n0 2 0\n") -> Path:
    (tmp_path / "train.ascii").write_text(train)
    (tmp_path / "test.ascii").write_text(test)
    return tmp_path


def test_coat_good_tiny_matrix(tmp_path):
    src = CoatSource(str(write_coat(tmp_path, "5 0 0\n0 4 1\n")))
    data = src.load()
    assert data.num_users == 2 and data.num_items == 3
    assert data.sequence(0).tolist() == [0] and data.sequence(1).tolist() == [1]
    assert src.ratings("train").tolist() == [[0, 0, 5], [1, 1, 4], [1, 2, 1]]
    assert data.catalog.text["title"] == ["coat 0", "coat 1", "coat 2"]  # no feature files: placeholder text


@pytest.mark.parametrize("cell", ["2.5", "x", "3,"])
def test_coat_non_integer_cell_names_file_and_line(tmp_path, cell):
    root = write_coat(tmp_path, f"1 0 0\n0 2 0\n0 {cell} 1\n")
    with pytest.raises(DataError) as info:
        CoatSource(str(root)).load()
    err = info.value
    assert err.file == str(root / "train.ascii") and err.line == 3
    assert f"{root / 'train.ascii'}:3" in str(err)


def test_coat_non_integer_cell_in_test_matrix(tmp_path):
    root = write_coat(tmp_path, "1 0 0\n0 2 0\n", test="1 0 0\n0 two 0\n")
    with pytest.raises(DataError) as info:
        CoatSource(str(root)).ratings("test")
    assert info.value.file == str(root / "test.ascii") and info.value.line == 2


def test_coat_ragged_rows_name_the_file(tmp_path):
    root = write_coat(tmp_path, "1 0 0\n0 2 0\n0 0\n0 1 0\n")
    with pytest.raises(DataError) as info:
        CoatSource(str(root)).load()
    assert info.value.file == str(root / "train.ascii")
    assert str(root / "train.ascii") in str(info.value)


def test_coat_ragged_rows_name_the_line(tmp_path):
    root = write_coat(tmp_path, "1 0 0\n0 2 0\n0 0\n0 1 0\n")
    with pytest.raises(DataError) as info:
        CoatSource(str(root)).load()
    assert info.value.line == 3


def test_coat_out_of_range_rating_and_missing_file(tmp_path):
    root = write_coat(tmp_path, "1 0 0\n0 7 0\n")
    with pytest.raises(DataError, match="0 \\(unobserved\\) to 5") as info:
        CoatSource(str(root)).load()
    assert info.value.file == str(root / "train.ascii")
    with pytest.raises(DataError, match="not found") as info:
        CoatSource(str(tmp_path / "nowhere")).load()
    assert info.value.file == str(tmp_path / "nowhere" / "train.ascii")
