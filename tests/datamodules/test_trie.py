"""CatalogTrie against a plain Python set of code tuples (property-based), plus construction and size checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adagrpo.datamodules.trie import CatalogTrie


@st.composite
def code_tables(draw):
    """``(sizes, table)``: codebook sizes for 1-4 levels (1-12 codes each) and up to 300 distinct tuples."""
    depth = draw(st.integers(1, 4))
    sizes = draw(st.lists(st.integers(1, 12), min_size=depth, max_size=depth))
    space = 1
    for s in sizes:
        space *= s
    # A size fraction (hypothesis favours 0, 1 and simple values: tiny, full and half-full tables all occur).
    n = max(1, round(draw(st.floats(0, 1)) * min(300, space)))
    # Distinct tuples: a sample of distinct flat indices of the code space, decoded mixed-radix.
    seed = draw(st.integers(0, 2**31 - 1))
    flat = torch.randperm(space, generator=torch.Generator().manual_seed(seed))[:n].tolist()
    table = []
    for f in flat:
        row = []
        for s in reversed(sizes):
            row.append(f % s)
            f //= s
        table.append(tuple(reversed(row)))
    return sizes, table


def check_against_python_set(sizes: list[int], table: list[tuple[int, ...]], random_prefixes) -> None:
    """Compare every trie query with a plain set of tuples; ``random_prefixes(level)`` gives extra prefixes."""
    depth = len(sizes)
    trie = CatalogTrie(torch.tensor(table, dtype=torch.long), sizes)
    index = {t: i for i, t in enumerate(table)}
    prefix_set = {t[:lv] for t in table for lv in range(depth + 1)}
    assert trie.num_items == len(table) and trie.depth == depth

    for level in range(depth + 1):
        # Every catalogue prefix of this length, plus random (mostly dead, some out-of-range) ones.
        prefixes = sorted({t[:level] for t in table}) + random_prefixes(level)
        if level == 0:
            state = trie.root(len(prefixes))
            is_pre = torch.ones(len(prefixes), dtype=torch.bool)
        else:
            codes = torch.tensor(prefixes, dtype=torch.long).reshape(len(prefixes), level)
            state = trie.walk(codes)
            is_pre = trie.is_prefix(codes)
        for r, pre in enumerate(prefixes):
            expected_prefix = pre in prefix_set
            assert bool(is_pre[r]) == expected_prefix, (pre, sizes)
            assert (int(state[r]) >= 0) == expected_prefix, (pre, sizes)
        if level < depth:
            mask = trie.allowed(state, level)  # [M, C]
            assert mask.shape == (len(prefixes), sizes[level])
            for r, pre in enumerate(prefixes):
                nxt = {t[level] for t in table if t[:level] == pre}
                got = set(torch.nonzero(mask[r]).flatten().tolist())
                assert got == nxt, (pre, sizes)
            # Codes outside the level's range (or negative) leave the catalogue.
            for bad in (-1, sizes[level], sizes[level] + 7, max(sizes) + 1):
                assert (trie.step(state, torch.full_like(state, bad), level) == -1).all()
        else:
            codes = torch.tensor(prefixes, dtype=torch.long).reshape(len(prefixes), depth)
            items = trie.lookup(codes)
            valid = trie.is_valid(codes)
            for r, pre in enumerate(prefixes):
                assert int(items[r]) == index.get(pre, -1), (pre, sizes)
                assert bool(valid[r]) == (pre in index)

    # Every item's own SID looks up to itself.
    assert torch.equal(trie.lookup(torch.tensor(table, dtype=torch.long)), torch.arange(len(table)))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables=code_tables(), data=st.data())
def test_trie_matches_python_set(tables, data):
    sizes, table = tables

    def random_prefixes(level: int) -> list[tuple[int, ...]]:
        return data.draw(
            st.lists(st.tuples(*[st.integers(-1, s) for s in sizes[:level]]), max_size=20), label=f"level {level}"
        )

    check_against_python_set(sizes, table, random_prefixes)


@pytest.mark.parametrize("sizes,n", [([12, 12, 12, 12], 300), ([3, 12, 2], 72), ([1, 1, 5], 5), ([300], 300)])
def test_trie_matches_python_set_large(sizes, n):
    gen = torch.Generator().manual_seed(n)
    cols = torch.stack([torch.randint(s, (4 * n,), generator=gen) for s in sizes], 1)
    table = [tuple(t) for t in torch.unique(cols, dim=0).tolist()]
    table = [table[i] for i in torch.randperm(len(table), generator=gen)[:n].tolist()]

    def random_prefixes(level: int) -> list[tuple[int, ...]]:
        if level == 0:
            return []
        hi = torch.tensor([s + 1 for s in sizes[:level]])
        return [tuple(t) for t in (torch.rand(30, level, generator=gen) * (hi + 1)).long().sub(1).tolist()]

    check_against_python_set(sizes, table, random_prefixes)


def test_dead_state_allows_nothing():
    trie = CatalogTrie(torch.tensor([[0, 1], [1, 0], [1, 2]]), [2, 3])
    dead = torch.tensor([-1, -1])
    assert not trie.allowed(dead, 0).any()
    assert not trie.allowed(dead, 1).any()
    assert (trie.step(dead, torch.tensor([0, 1]), 1) == -1).all()
    # A live state next to a dead one in the same batch is unaffected.
    state = trie.step(trie.root(2), torch.tensor([1, 5]), 0)  # [node of <1>, dead]
    assert state[1] == -1 and state[0] >= 0
    assert trie.allowed(state, 1).tolist() == [[True, False, True], [False, False, False]]


def test_duplicate_tuples_raise():
    with pytest.raises(ValueError, match="not distinct"):
        CatalogTrie(torch.tensor([[0, 1, 2], [1, 1, 1], [0, 1, 2]]), [2, 2, 3])


def test_codes_out_of_range_raise():
    with pytest.raises(ValueError):
        CatalogTrie(torch.tensor([[0, 3]]), [2, 3])
    with pytest.raises(ValueError):
        CatalogTrie(torch.tensor([[0, 1]]), [2, 3, 4])


def test_lookup_needs_full_sids():
    trie = CatalogTrie(torch.tensor([[0, 1], [1, 0]]), [2, 2])
    with pytest.raises(ValueError):
        trie.lookup(torch.tensor([[0]]))


def test_nbytes_scales_with_items_not_code_space():
    n, depth = 2000, 3
    gen = torch.Generator().manual_seed(0)

    def distinct_codes(size: int) -> torch.Tensor:
        codes = torch.unique(torch.randint(size, (3 * n, depth), generator=gen), dim=0)
        return codes[torch.randperm(len(codes), generator=gen)[:n]]

    small = CatalogTrie(distinct_codes(16), [16] * depth)  # code space 4,096
    large = CatalogTrie(distinct_codes(4096), [4096] * depth)  # code space 6.9e10
    assert small.num_items == large.num_items == n
    # At most N nodes per depth, 4 int64 values per node, plus two int64 maps over items: a per-item bound,
    # whatever the code space (a dense table over 4096**3 codes would be 5e11 bytes).
    for trie in (small, large):
        assert trie.nbytes() <= (4 * 8 * depth + 2 * 8) * n
    # The large code space only has more (≤ N) nodes at the shallow depths: same order of magnitude.
    assert large.nbytes() < 3 * small.nbytes()
    # Doubling the catalogue roughly doubles the size.
    double = CatalogTrie(torch.unique(torch.randint(4096, (2 * n, depth), generator=gen), dim=0), [4096] * depth)
    assert 1.5 * large.nbytes() < double.nbytes() < 2.5 * large.nbytes()
