"""Semantic IDs: dedup by hand, the token vocabulary, index files (happy path and located errors), caching, outputs,
and the shipped Beauty indexes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adagrpo.datamodules.catalog import Catalog, Interactions
from adagrpo.datamodules.errors import ConfigError, DataError
from adagrpo.datamodules.semantic_ids import IndexFileSids, SemanticIds, SidVocab, code_token, deduplicate
from adagrpo.datamodules.trie import CatalogTrie

# ----------------------------------------------------------------------------------------------- deduplicate


def test_dedup_auto_numbers_collision_groups_in_catalogue_order():
    codes = torch.tensor([[2, 2], [1, 0], [0, 1], [1, 0], [0, 1], [0, 1], [2, 0]])
    out, sizes, report = deduplicate(codes, [3, 3], "auto")
    # Groups: (2,2)->[0], (1,0)->[1,3], (0,1)->[2,4,5], (2,0)->[6]; ranks within group in catalogue order.
    assert out[:, :2].tolist() == codes.tolist()
    assert out[:, 2].tolist() == [0, 0, 0, 1, 1, 2, 0]
    assert sizes == [3, 3, 3]  # largest group has 3 items
    assert report["dedup_level_added"] is True
    assert report["distinct_sids"] == 4
    assert report["collision_rate"] == pytest.approx(1 - 4 / 7)
    assert report["max_collision"] == 3
    assert len(torch.unique(out, dim=0)) == 7
    CatalogTrie(out, sizes)  # bijective now: builds without error


def test_dedup_auto_adds_no_level_without_collision():
    codes = torch.tensor([[0, 1], [1, 0], [2, 2]])
    out, sizes, report = deduplicate(codes, [3, 3], "auto")
    assert torch.equal(out, codes) and sizes == [3, 3]
    assert report["dedup_level_added"] is False and report["collision_rate"] == 0.0


def test_dedup_always_adds_a_level():
    codes = torch.tensor([[0, 1], [1, 0], [2, 2]])
    out, sizes, report = deduplicate(codes, [3, 3], "always")
    assert out.tolist() == [[0, 1, 0], [1, 0, 0], [2, 2, 0]]
    assert sizes == [3, 3, 1]
    assert report["dedup_level_added"] is True


def test_dedup_off_raises_naming_file_and_item():
    codes = torch.tensor([[2, 2], [1, 0], [0, 1], [1, 0]])
    ids = ["w", "x", "y", "z"]
    with pytest.raises(DataError) as info:
        deduplicate(codes, [3, 3], "off", item_ids=ids, source="some/index.json")
    err = info.value
    assert err.file == "some/index.json"
    assert err.key == "x"  # the only colliding group is items x and z
    assert "some/index.json" in str(err) and "'x'" in str(err) and "'z'" in str(err)
    # Without a collision, off passes the table through.
    out, sizes, _ = deduplicate(codes[:3], [3, 3], "off", item_ids=ids[:3])
    assert torch.equal(out, codes[:3]) and sizes == [3, 3]


def test_dedup_bad_mode():
    with pytest.raises(ConfigError):
        deduplicate(torch.tensor([[0], [0]]), [1], "sometimes")


# ----------------------------------------------------------------------------------------------- SidVocab


def test_vocab_layout_and_round_trip():
    vocab = SidVocab([3, 4, 2])
    assert (vocab.pad_id, vocab.bos_id, vocab.eos_id) == (0, 1, 2)
    assert vocab.vocab_size == 3 + 3 + 4 + 2
    assert [t.tolist() for t in vocab.token_of] == [[3, 4, 5], [6, 7, 8, 9], [10, 11]]
    codes = torch.tensor([[0, 0, 0], [2, 3, 1], [1, 2, 0]])
    tokens = vocab.encode(codes)
    assert tokens.tolist() == [[3, 6, 10], [5, 9, 11], [4, 8, 10]]
    assert torch.equal(vocab.decode(tokens), codes)
    assert vocab.token_strings()[:4] == ["<a_0>", "<a_1>", "<a_2>", "<b_0>"]


def test_vocab_decode_wrong_level_is_minus_one():
    vocab = SidVocab([3, 4, 2])
    tokens = torch.tensor([
        [6, 6, 10],  # level-b token in position 0
        [3, 3, 10],  # level-a token in position 1
        [0, 7, 2],  # specials
        [-5, 7, 99],  # out of the vocabulary
        [5, 9, 11],  # fine
    ])
    assert vocab.decode(tokens).tolist() == [[-1, 0, 0], [0, -1, 0], [-1, 1, -1], [-1, 1, -1], [2, 3, 1]]


# ----------------------------------------------------------------------------------------------- IndexFileSids


def make_data(item_ids: list[str], attrs: dict[str, list[str]] | None = None) -> Interactions:
    catalog = Catalog(item_ids=item_ids, text={}, attrs=attrs or {})
    n = len(item_ids)
    sequences = [[i % n, (i + 1) % n, (i + 2) % n] for i in range(n)]
    return Interactions.from_lists("toy", catalog, [f"u{i}" for i in range(n)], sequences, ["<toy>"])


def write_index(path: Path, entries: list[tuple[str, object]]) -> str:
    """Pretty-printed index: key ``entries[j]`` sits on line ``j + 2``."""
    body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in entries)
    path.write_text("{\n" + body + "\n}\n")
    return str(path)


TOY = [
    ("i0", ["<a_0>", "<b_1>", "<c_0>"]),
    ("i1", ["<a_2>", "<b_0>", "<c_1>"]),
    ("i2", ["<a_0>", "<b_1>", "<c_0>"]),  # collides with i0
    ("i3", ["<a_1>", "<b_4>", "<c_0>"]),
]


def test_index_file_happy_path(tmp_path):
    path = write_index(tmp_path / "toy.index.json", TOY)
    data = make_data(["i0", "i1", "i2", "i3"])
    sids = IndexFileSids(path).build(data, use_cache=False)
    assert sids.codes.tolist() == [[0, 1, 0, 0], [2, 0, 1, 0], [0, 1, 0, 1], [1, 4, 0, 0]]
    # Level sizes: max code + 1 rounded up to a power of two (3 -> 4, 5 -> 8, 2 -> 2); dedup level: 2 items.
    assert sids.codebook_sizes == [4, 8, 2, 2]
    assert sids.report["collision_rate"] == pytest.approx(0.25)
    assert sids.report["dedup_level_added"] is True
    assert sids.report["index_entries"] == 4
    assert sids.item_ids == ["i0", "i1", "i2", "i3"]
    # Catalogue order, not file order, decides the rows.
    data2 = make_data(["i3", "i2", "i1", "i0"])
    sids2 = IndexFileSids(path, dedup="off").build(make_data(["i3", "i1", "i0"]), use_cache=False)
    assert sids2.codes.tolist() == [[1, 4, 0], [2, 0, 1], [0, 1, 0]]
    sids3 = IndexFileSids(path).build(data2, use_cache=False)
    assert sids3.codes[:, 3].tolist() == [0, 0, 0, 1]  # i2 comes first now, so i0 gets dedup code 1


def test_index_missing_item_names_file_and_first_missing_key(tmp_path):
    path = write_index(tmp_path / "toy.index.json", TOY[:2])
    data = make_data(["i0", "i2", "i1", "i3"])
    with pytest.raises(DataError) as info:
        IndexFileSids(path).build(data, use_cache=False)
    err = info.value
    assert err.file == path and err.key == "i2"
    assert "2 of 4" in str(err)


@pytest.mark.parametrize("bad", ["<b_1>", "a_1", "<a_x>", 7, "<A_1>"])
def test_index_malformed_token(tmp_path, bad):
    entries = [TOY[0], ("i1", [bad, "<b_0>", "<c_1>"]), TOY[3]]
    path = write_index(tmp_path / "bad.index.json", entries)
    with pytest.raises(DataError) as info:
        IndexFileSids(path).build(make_data(["i0", "i1", "i3"]), use_cache=False)
    err = info.value
    assert (err.file, err.line, err.key) == (path, 3, "i1")
    assert f"{path}:3" in str(err)


def test_index_inconsistent_length(tmp_path):
    entries = [TOY[0], TOY[1], ("i3", ["<a_1>", "<b_4>"])]
    path = write_index(tmp_path / "len.index.json", entries)
    with pytest.raises(DataError) as info:
        IndexFileSids(path).build(make_data(["i0", "i1", "i3"]), use_cache=False)
    assert (info.value.file, info.value.line, info.value.key) == (path, 4, "i3")
    assert "2 tokens" in str(info.value)


def test_index_invalid_json(tmp_path):
    path = tmp_path / "broken.index.json"
    path.write_text('{\n  "i0": ["<a_0>"],\n  "i1": ["<a_1>"\n}\n')
    with pytest.raises(DataError) as info:
        IndexFileSids(str(path)).build(make_data(["i0", "i1"]), use_cache=False)
    assert info.value.file == str(path) and info.value.line == 4


def test_index_duplicate_key(tmp_path):
    path = write_index(tmp_path / "dup.index.json", [TOY[0], TOY[1], ("i0", ["<a_3>", "<b_0>", "<c_0>"])])
    with pytest.raises(DataError) as info:
        IndexFileSids(path).build(make_data(["i0", "i1"]), use_cache=False)
    assert info.value.file == path and info.value.key == "i0"
    assert "duplicate" in str(info.value)


def test_index_empty_value_and_missing_file(tmp_path):
    path = write_index(tmp_path / "empty.index.json", [TOY[0], ("i1", [])])
    with pytest.raises(DataError) as info:
        IndexFileSids(path).build(make_data(["i0", "i1"]), use_cache=False)
    assert (info.value.line, info.value.key) == (3, "i1")
    missing = str(tmp_path / "nope.index.json")
    with pytest.raises(DataError) as info:
        IndexFileSids(missing).build(make_data(["i0", "i1"]), use_cache=False)
    assert info.value.file == missing


def test_index_key_field_maps_through_attrs(tmp_path):
    # Sequences use ASIN-like ids; the index is keyed by another per-item field.
    path = write_index(tmp_path / "by_id.index.json", [("10", ["<a_1>", "<b_0>"]), ("11", ["<a_0>", "<b_3>"])])
    data = make_data(["B00X", "B00Y"], attrs={"item_id": ["11", "10"]})
    sids = IndexFileSids(path, key_field="item_id").build(data, use_cache=False)
    assert sids.codes.tolist() == [[0, 3], [1, 0]]
    assert sids.item_ids == ["B00X", "B00Y"]
    with pytest.raises(ConfigError, match="key_field"):
        IndexFileSids(path, key_field="p5_id").build(data, use_cache=False)
    # Keyed by raw id instead, nothing matches: the error names the first item's key.
    with pytest.raises(DataError) as info:
        IndexFileSids(path).build(data, use_cache=False)
    assert info.value.key == "B00X"


# ----------------------------------------------------------------------------------------------- cache


def test_cache_hit_and_corrupt_entry_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAGRPO_CACHE", str(tmp_path / "cache"))
    path = write_index(tmp_path / "toy.index.json", TOY)
    data = make_data(["i0", "i1", "i2", "i3"])
    first = IndexFileSids(path).build(data)
    assert first.report["cache_hit"] is False
    cache_file = Path(first.report["cache"])
    assert cache_file.parent == tmp_path / "cache" and cache_file.exists()
    second = IndexFileSids(path).build(data)
    assert second.report["cache_hit"] is True
    assert torch.equal(first.codes, second.codes) and first.codebook_sizes == second.codebook_sizes
    # Another dedup setting is another entry.
    assert IndexFileSids(path, dedup="always").build(data).report["cache_hit"] is False

    cache_file.write_bytes(b"not a torch file")
    third = IndexFileSids(path).build(data)
    assert third.report["cache_hit"] is False
    assert torch.equal(third.codes, first.codes)
    assert IndexFileSids(path).build(data).report["cache_hit"] is True  # rewritten and readable again


# ----------------------------------------------------------------------------------------------- outputs


def test_save_table_and_index(tmp_path):
    codes = torch.tensor([[0, 1], [1, 0], [1, 1]])
    sids = SemanticIds(codes, [2, 2], ["x", "y", "z"])
    catalog = Catalog(item_ids=["x", "y", "z"], text={"title": ["Red\tcup", "Blue", "Green\nbowl"]})
    data = Interactions.from_lists("toy", catalog, ["u0", "u1"], [[0, 1, 1], [2, 1, 0]], ["<toy>"])

    table = sids.save_table(tmp_path / "out" / "sid_table.tsv", data)
    lines = table.read_text().splitlines()
    assert lines[0].split("\t") == ["item_index", "item_id", "sid", "popularity", "title"]
    assert lines[1:] == [
        "0\tx\t<a_0><b_1>\t2\tRed cup",
        "1\ty\t<a_1><b_0>\t3\tBlue",
        "2\tz\t<a_1><b_1>\t1\tGreen bowl",
    ]
    index_path = sids.save_index(tmp_path / "out" / "toy.index.json")
    index = json.loads(index_path.read_text())
    assert index == {"x": ["<a_0>", "<b_1>"], "y": ["<a_1>", "<b_0>"], "z": ["<a_1>", "<b_1>"]}
    # The written index loads back to the same table.
    again = IndexFileSids(str(index_path)).build(data, use_cache=False)
    assert torch.equal(again.codes, codes)
    assert code_token(2, 40) == "<c_40>"


# ----------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def beauty(beauty_dir):
    from adagrpo.datamodules import ItemFile, SasRecText

    source = SasRecText(
        str(beauty_dir / "user_sequences.txt"),
        layout="lines",
        items=ItemFile(str(beauty_dir / "items.jsonl"), id_field="asin", keep_fields=["item_id"]),
        name="beauty",
    )
    return source.load()


@pytest.mark.realdata
def test_beauty_rkmeans_zcr_is_collision_free(beauty, beauty_dir):
    path = beauty_dir / "sid_indexes" / "rkmeans_zcr.index.json"
    sids = IndexFileSids(str(path), key_field="item_id").build(beauty, use_cache=False)
    assert sids.num_items == 12101
    assert sids.report["collision_rate"] == 0.0
    assert sids.report["dedup_level_added"] is False
    assert sids.depth == 4 and len(sids.codebook_sizes) == 4
    assert sids.trie().num_items == 12101


@pytest.mark.realdata
def test_beauty_rkmeans_native_collisions_and_dedup(beauty, beauty_dir):
    path = beauty_dir / "sid_indexes" / "rkmeans_native.index.json"
    sids = IndexFileSids(str(path), key_field="item_id").build(beauty, use_cache=False)
    assert sids.report["items"] == 12101
    assert sids.report["distinct_sids"] == 10527
    assert sids.report["collision_rate"] == pytest.approx(1 - 10527 / 12101)
    assert sids.report["dedup_level_added"] is True
    trie = sids.trie()
    assert trie.num_items == 12101
    assert len(torch.unique(sids.codes, dim=0)) == 12101
    assert torch.equal(trie.lookup(sids.codes), torch.arange(12101))
