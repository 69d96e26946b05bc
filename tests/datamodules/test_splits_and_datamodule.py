"""Splits by hand, and the SeqRecDataModule's SFT / prompt batches on the tiny synthetic world."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from adagrpo.datamodules.catalog import Catalog, Interactions
from adagrpo.datamodules.errors import ConfigError
from adagrpo.datamodules.sequence import bucket_batches
from adagrpo.datamodules.splits import leave_one_out, ratio_split


def hand_data(sequences: list[list[int]], n_items: int = 12) -> Interactions:
    catalog = Catalog(item_ids=[f"i{i}" for i in range(n_items)])
    return Interactions.from_lists("hand", catalog, [f"u{u}" for u in range(len(sequences))], sequences, ["<hand>"])


# ------------------------------------------------------------------------------------------------ splits


def test_leave_one_out_by_hand():
    data = hand_data([[0, 1, 2], [3, 4, 5, 0, 1], [6, 7, 8, 9]])
    split = leave_one_out(data)
    assert split.train_end.tolist() == [1, 3, 2]
    assert split.val.tolist() == [[0, 1], [1, 3], [2, 2]]
    assert split.test.tolist() == [[0, 2], [1, 4], [2, 3]]


def test_leave_one_out_rejects_short_sequences():
    data = hand_data([[0, 1, 2], [3, 4]])
    with pytest.raises(ConfigError) as info:
        leave_one_out(data)
    assert "'u1'" in str(info.value) and "2" in str(info.value)


def test_ratio_split_by_hand():
    data = hand_data([list(range(10)), [0, 1, 2]])
    # Length 10, (0.6, 0.2, 0.2): 2 test, 2 validation, 6 train. Length 3: round(0.6)=1 each, 1 train.
    split = ratio_split(data, (0.6, 0.2, 0.2))
    assert split.train_end.tolist() == [6, 1]
    assert split.val.tolist() == [[0, 6], [0, 7], [1, 1]]
    assert split.test.tolist() == [[0, 8], [0, 9], [1, 2]]
    # (0.8, 0.1, 0.1): length 10 -> 1 test, 1 validation; length 3 -> at least one of each.
    split = ratio_split(data, (0.8, 0.1, 0.1))
    assert split.train_end.tolist() == [8, 1]
    assert split.val.tolist() == [[0, 8], [1, 1]]
    assert split.test.tolist() == [[0, 9], [1, 2]]


@pytest.mark.parametrize("ratios", [(0.5, 0.5, 0.5), (0.9, 0.2, -0.1), (0.5, 0.5)])
def test_ratio_split_rejects_bad_ratios(ratios):
    with pytest.raises(ConfigError):
        ratio_split(hand_data([[0, 1, 2]]), ratios)


# ------------------------------------------------------------------------------------------------ SFT batches


def items_of_tokens(dm, tokens: torch.Tensor) -> torch.Tensor:
    """Catalogue items of SID token rows ``[..., L]`` (-1 if none)."""
    return dm.trie.lookup(dm.vocab.decode(tokens).clamp_min(-1))


def test_sft_batch_layout(tiny_world_dm):
    dm = tiny_world_dm
    h, depth = dm.max_history, dm.sid_depth
    rows = list(range(0, len(dm.sft_windows), 7))[:24]
    batch = dm.sft_batch(rows)
    t = (h + 2) * depth  # window of h+1 items plus the <bos> slot
    for name in ("input_ids", "attention_mask", "position_ids", "labels"):
        assert getattr(batch, name).shape == (len(rows), t)
    for r, row in enumerate(rows):
        window = dm.sft_windows[row]
        items = window[window >= 0]
        mask = batch.attention_mask[r]
        n_real = 1 + depth * len(items)
        # Left padding: zeros then ones, exactly <bos> + the items' SID tokens are real.
        assert mask.tolist() == [0] * (t - n_real) + [1] * n_real
        real = batch.input_ids[r, t - n_real:]
        assert int(real[0]) == dm.vocab.bos_id  # <bos> right before the first real item
        assert torch.equal(real[1:], dm.item_tokens[torch.from_numpy(items)].flatten())
        assert (batch.input_ids[r, : t - n_real] == dm.vocab.pad_id).all()
        assert batch.position_ids[r, t - n_real:].tolist() == list(range(n_real))
        # Labels: the SID tokens of every item after the window's first; -100 elsewhere.
        labels = batch.labels[r]
        n_lab = depth * (len(items) - 1)
        assert (labels[: t - n_lab] == -100).all()
        assert torch.equal(labels[t - n_lab:], dm.item_tokens[torch.from_numpy(items[1:])].flatten())


def test_every_training_item_but_the_first_is_a_label_exactly_once(tiny_world_dm):
    dm = tiny_world_dm
    depth = dm.sid_depth
    batch = dm.sft_batch(list(range(len(dm.sft_windows))))
    labels = batch.labels.reshape(len(batch), -1, depth)  # [W, S, L]
    labelled = (labels != -100).all(-1)  # [W, S]
    assert ((labels != -100).any(-1) == labelled).all()  # a slot is labelled on all of its tokens or none
    got = Counter(items_of_tokens(dm, labels[labelled]).tolist())
    expected = Counter()
    for u in range(dm.data.num_users):
        train = dm.data.sequence(u)[: dm.split.train_end[u]]
        expected.update(train[1:].tolist())
    assert -1 not in got
    assert got == expected
    assert sum(got.values()) == int((dm.split.train_end - 1).sum())


def test_windows_are_contiguous_pieces_of_training_prefixes(tiny_world_dm):
    dm = tiny_world_dm
    prefixes = [dm.data.sequence(u)[: dm.split.train_end[u]].tolist() for u in range(dm.data.num_users)]
    joined = {tuple(p) for p in prefixes}
    for window in dm.sft_windows[:50]:
        items = window[window >= 0].tolist()
        assert 2 <= len(items) <= dm.max_history + 1
        assert any(
            tuple(p[i:i + len(items)]) == tuple(items) for p in joined for i in range(len(p) - len(items) + 1)
        )


def test_train_dataloader_covers_all_windows(tiny_world_dm):
    dm = tiny_world_dm
    seen = 0
    for batch in dm.train_dataloader():
        assert len(batch) <= dm.batch_size
        assert batch.input_ids.shape[1] == (dm.max_history + 2) * dm.sid_depth
        seen += len(batch)
    assert seen == len(dm.sft_windows)


# ------------------------------------------------------------------------------------------------ prompt batches


def test_validation_targets_are_second_to_last(tiny_world_dm):
    dm = tiny_world_dm
    lengths = dm.data.lengths()
    assert dm.val_targets.tolist() == [[u, int(lengths[u]) - 2] for u in range(dm.data.num_users)]
    assert dm.test_targets.tolist() == [[u, int(lengths[u]) - 1] for u in range(dm.data.num_users)]


@pytest.mark.parametrize("which", ["val", "test", "rl"])
def test_prompt_batch(tiny_world_dm, which):
    dm = tiny_world_dm
    h, depth = dm.max_history, dm.sid_depth
    targets = {"val": dm.val_targets, "test": dm.test_targets, "rl": dm.rl_targets}[which][::9][:20]
    batch = dm.prompt_batch(targets)
    b = len(targets)
    assert batch.prompt_ids.shape == (b, (h + 1) * depth)
    assert batch.history.shape == (b, h)
    assert batch.target_tokens.shape == (b, depth)
    for r, (u, p) in enumerate(targets.tolist()):
        seq = dm.data.sequence(u)
        assert int(batch.target[r]) == int(seq[p])
        assert (int(batch.user[r]), int(batch.position[r])) == (u, p)
        hist = seq[max(0, p - h): p].tolist()
        assert batch.history[r].tolist() == [-1] * (h - len(hist)) + hist
        assert torch.equal(batch.target_tokens[r], dm.item_tokens[int(seq[p])])
        n_real = 1 + depth * len(hist)
        assert int(batch.prompt_mask[r].sum()) == n_real
        real = batch.prompt_ids[r, -n_real:]
        assert int(real[0]) == dm.vocab.bos_id
        assert torch.equal(real[1:], dm.item_tokens[torch.tensor(hist, dtype=torch.long)].flatten())
        assert batch.position_ids[r, -n_real:].tolist() == list(range(n_real))
    # The target token decodes to the target item.
    assert torch.equal(items_of_tokens(dm, batch.target_tokens), batch.target)


def test_rl_targets_cover_training_positions(tiny_world_dm):
    dm = tiny_world_dm
    expected = [(u, p) for u in range(dm.data.num_users) for p in range(1, int(dm.split.train_end[u]))]
    assert [tuple(t) for t in dm.rl_targets.tolist()] == expected


def test_val_dataloader_batches(tiny_world_dm):
    dm = tiny_world_dm
    batches = list(dm.val_dataloader())
    assert [len(b) for b in batches] == [32] * 6 + [8]  # 200 users, eval_batch_size 32
    assert torch.equal(torch.cat([b.user for b in batches]), torch.arange(200))


# ------------------------------------------------------------------------------------------------ bucketing


@pytest.mark.parametrize("n,batch_size,chunk", [(1000, 7, 3), (50, 16, 50), (1, 4, 2), (64, 8, 1)])
def test_bucket_batches_cover_every_row_once(n, batch_size, chunk):
    lengths = np.random.default_rng(0).integers(1, 30, size=n)
    batches = bucket_batches(lengths, batch_size, seed=1, chunk=chunk)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(n))
    assert all(1 <= len(b) <= batch_size for b in batches)
    # Within each run of `chunk` batches, rows are ordered by length (that is what reduces padding).
    span = batch_size * chunk
    for start in range(0, n, span):
        part = lengths[flat[start:start + span]]
        assert (np.diff(part) >= 0).all()
    # Deterministic by seed.
    again = bucket_batches(lengths, batch_size, seed=1, chunk=chunk)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))


def test_prompt_batch_seen_is_the_whole_prefix(tiny_world_dm):
    """``seen`` holds every item before the target's position, also those older than the prompt's ``max_history``
    window (brute force from the raw sequences); the history is its last ``max_history`` items."""
    dm = tiny_world_dm
    targets = dm.test_targets[:32]
    batch = dm.prompt_batch(targets)
    h = dm.max_history
    prefixes = [dm.data.sequence(int(u))[: int(p)].tolist() for u, p in targets]
    assert max(len(x) for x in prefixes) > h  # the case this test is about
    assert batch.seen is not None
    for r, prefix in enumerate(prefixes):
        row = [i for i in batch.seen[r].tolist() if i >= 0]
        assert row == prefix
        assert [i for i in batch.history[r].tolist() if i >= 0] == prefix[-h:]
