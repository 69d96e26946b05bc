"""Tests for adagrpo.datamodules.readers: located errors for every malformed input, happy paths, and the real data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adagrpo.datamodules.errors import ConfigError, DataError
from adagrpo.datamodules.readers import ItemFile, LCRecJson, RecBoleAtomic, SasRecText, TableFile

REPO = Path(__file__).resolve().parents[2]
BAD_UTF8 = b"\xff\xfe"


def write(tmp_path: Path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return str(path)


def raw_sequences(data) -> dict[str, list[str]]:
    ids = data.catalog.item_ids
    return {u: [ids[i] for i in data.sequence(k)] for k, u in enumerate(data.user_ids)}


def raises(fn, file: str, line: int | None = None, key: str | None = None, mentions: tuple[str, ...] = ()) -> DataError:
    with pytest.raises(DataError) as info:
        fn()
    err = info.value
    assert err.file == file, str(err)
    assert err.line == line, str(err)
    if key is not None:
        assert err.key == key, str(err)
    for m in mentions:
        assert m in str(err), str(err)
    return err


# ----------------------------------------------------------------------------------------- fixtures (small files)

INTER_JSON = '{\n  "u1": [1, 2, 3],\n  "u2": [2, 3, 4, 1],\n  "u3": ["3", 4, 5]\n}\n'
ITEM_JSON = json.dumps(
    {str(i): {"title": f"t{i}", "description": f"d{i}", "brand": f"b{i}", "categories": f"c{i}"} for i in range(1, 7)},
    indent=2,
)
LINES_TXT = "A i1 i2 i3\nB i2 i3 i4 i5\n\nC i3 i1 i2\n"
ITEMS_JSONL = "\n".join(
    json.dumps({"item_id": n, "asin": f"i{n}", "title": f"T{n}", "attributes": ["x", f"y{n}"]}) for n in range(1, 7)
)
RB_INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "u1\ti1\t5\t30\nu1\ti2\t4\t10\nu2\ti1\t3\t5\nu1\ti3\t1\t20\nu2\ti2\t2\t5\nu2\ti3\t2\t1\n"
)
RB_ITEM = (
    "item_id:token\ttitle:token_seq\tcategories:token_seq\tbrand:token\tprice:float\n"
    "i1\tRed Pen\tOffice Pens\tAcme\t1.5\ni2\tBlue Pen\tOffice Pens\tAcme\t2\ni3\tPad\tOffice Paper\tZed\t3\n"
)


# ----------------------------------------------------------------------------------------- happy paths


def test_lcrec_json_with_items(tmp_path):
    inter = write(tmp_path, "x.inter.json", INTER_JSON)
    items = write(tmp_path, "x.item.json", ITEM_JSON)
    data = LCRecJson(inter, items).load()
    assert data.user_ids == ["u1", "u2", "u3"]
    assert data.catalog.item_ids == ["1", "2", "3", "4", "5", "6"]  # item file order, unused item kept
    assert raw_sequences(data) == {"u1": ["1", "2", "3"], "u2": ["2", "3", "4", "1"], "u3": ["3", "4", "5"]}
    assert data.catalog.text["title"][0] == "t1" and data.catalog.text["categories"][5] == "c6"
    assert set(data.catalog.text) == {"title", "description", "brand", "categories"}
    assert data.files == [inter, items]


def test_lcrec_json_without_items_first_appearance(tmp_path):
    inter = write(tmp_path, "x.inter.json", '{"a": [9, 7, 9], "b": [8, 7, 10]}')
    data = LCRecJson(inter).load()
    assert data.catalog.item_ids == ["9", "7", "8", "10"]
    assert not data.catalog.has_text()


def test_sasrec_lines(tmp_path):
    path = write(tmp_path, "seq.txt", LINES_TXT)
    data = SasRecText(path).load()
    assert data.user_ids == ["A", "B", "C"]
    assert data.catalog.item_ids == ["i1", "i2", "i3", "i4", "i5"]
    assert raw_sequences(data)["B"] == ["i2", "i3", "i4", "i5"]


def test_sasrec_lines_with_item_file(tmp_path):
    path = write(tmp_path, "seq.txt", LINES_TXT)
    items = ItemFile(write(tmp_path, "items.jsonl", ITEMS_JSONL), id_field="asin", keep_fields=["item_id"])
    data = SasRecText(path, items=items).load()
    assert data.catalog.item_ids == [f"i{n}" for n in range(1, 7)]
    assert data.catalog.attrs["item_id"] == [str(n) for n in range(1, 7)]
    assert data.catalog.text == {
        "title": [f"T{n}" for n in range(1, 7)],
        "categories": [f"x, y{n}" for n in range(1, 7)],
    }
    assert raw_sequences(data)["C"] == ["i3", "i1", "i2"]


def test_sasrec_pairs_line_order_and_timestamps(tmp_path):
    plain = write(tmp_path, "p.txt", "u1 a\nu2 b\nu1 b\nu1 c\nu2 c\nu2 a\n")
    data = SasRecText(plain, layout="pairs").load()
    assert raw_sequences(data) == {"u1": ["a", "b", "c"], "u2": ["b", "c", "a"]}
    timed = write(tmp_path, "t.txt", "u1 a 30\nu2 b 2\nu1 b 10\nu1 c 10\nu2 c 1.5e0\nu2 a 3\n")
    data = SasRecText(timed, layout="pairs").load()
    # ties (b, c at 10) keep line order
    assert raw_sequences(data) == {"u1": ["b", "c", "a"], "u2": ["c", "b", "a"]}


def test_recbole_atomic_sorts_by_timestamp_and_keeps_text(tmp_path):
    inter = write(tmp_path, "x.inter", RB_INTER)
    item = write(tmp_path, "x.item", RB_ITEM)
    data = RecBoleAtomic(inter, item).load()
    assert raw_sequences(data) == {"u1": ["i2", "i3", "i1"], "u2": ["i3", "i1", "i2"]}  # u2: tie at 5 keeps order
    assert data.catalog.text == {
        "title": ["Red Pen", "Blue Pen", "Pad"],
        "categories": ["Office Pens", "Office Pens", "Office Paper"],
        "brand": ["Acme", "Acme", "Zed"],
    }
    assert data.catalog.attrs == {"price": ["1.5", "2", "3"]}


def test_recbole_atomic_without_timestamp_keeps_file_order(tmp_path):
    inter = write(tmp_path, "x.inter", "user_id:token\titem_id:token\nu\tc\nu\ta\nu\tb\n")
    data = RecBoleAtomic(inter).load()
    assert raw_sequences(data) == {"u": ["c", "a", "b"]}


def test_table_csv_with_column_map(tmp_path):
    path = write(tmp_path, "t.csv", "uid,iid,ts,rating\n1,a,3,5\n2,a,1,4\n1,b,1,3\n1,c,2,1\n2,b,0,2\n2,c,5,1\n")
    data = TableFile(path, columns={"user": "uid", "item": "iid", "time": "ts"}).load()
    assert data.user_ids == ["1", "2"]
    assert raw_sequences(data) == {"1": ["b", "c", "a"], "2": ["b", "a", "c"]}


def test_table_tsv_defaults_and_iso_dates(tmp_path):
    rows = "user\titem\ttime\nu\tx\t2020-03-01\nu\ty\t2020-01-01T10:00:00\nu\tz\t2020-02-01\n"
    data = TableFile(write(tmp_path, "t.tsv", rows)).load()
    assert raw_sequences(data) == {"u": ["y", "z", "x"]}


def test_table_csv_without_time_keeps_row_order(tmp_path):
    data = TableFile(write(tmp_path, "t.csv", "user,item\nu,c\nu,a\n\nu,b\n")).load()
    assert raw_sequences(data) == {"u": ["c", "a", "b"]}


def test_table_parquet_with_items(tmp_path):
    path = tmp_path / "t.parquet"
    pd.DataFrame(
        {
            "user": [10, 10, 20, 10, 20, 20],
            "item": ["a", "b", "a", "c", "b", "c"],
            "time": pd.to_datetime(
                ["2021-01-03", "2021-01-01", "2021-01-01", "2021-01-02", "2021-01-03", "2021-01-02"]
            ),
        }
    ).to_parquet(path)
    items = ItemFile(write(tmp_path, "items.csv", "item_id,title,brand\nc,Cc,B\nb,Bb,B\na,Aa,\n"))
    data = TableFile(str(path), items=items).load()
    assert data.user_ids == ["10", "20"]
    assert data.catalog.item_ids == ["c", "b", "a"]
    assert data.catalog.text == {"title": ["Cc", "Bb", "Aa"], "brand": ["B", "B", ""]}
    assert raw_sequences(data) == {"10": ["b", "c", "a"], "20": ["a", "c", "b"]}


def test_item_file_json_list_and_dict(tmp_path):
    as_list = write(tmp_path, "l.json", json.dumps([{"id": "x", "title": "X"}, {"id": "y", "description": "Y"}]))
    cat = ItemFile(as_list, id_field="id").load()
    assert cat.item_ids == ["x", "y"]
    assert cat.text == {"title": ["X", ""], "description": ["", "Y"]}
    as_dict = write(tmp_path, "d.json", json.dumps({"7": {"name": "seven", "tags": ["a", "b"]}}))
    cat = ItemFile(as_dict, text_fields=["name", "tags"]).load()
    assert cat.item_ids == ["7"] and cat.text == {"name": ["seven"], "tags": ["a, b"]}


def test_item_file_repr_is_stable_for_cache_keys(tmp_path):
    a = SasRecText("s.txt", items=ItemFile("i.jsonl", id_field="asin")).cache_key()
    b = SasRecText("s.txt", items=ItemFile("i.jsonl", id_field="asin")).cache_key()
    assert a == b and "asin" in a["items"]


def test_kcore_shrinks_users_and_items(tmp_path):
    # e occurs once; without it D has one item and goes, which leaves d with one interaction, so d goes too
    path = write(tmp_path, "seq.txt", "A a b c\nD d e\nB a b c\nC a b d\n")
    data = SasRecText(path, kcore=2, min_length=1).load()
    assert data.user_ids == ["A", "B", "C"]
    assert data.catalog.item_ids == ["a", "b", "c"]
    assert raw_sequences(data) == {"A": ["a", "b", "c"], "B": ["a", "b", "c"], "C": ["a", "b"]}
    # the where-list follows the users through k-core: the short-sequence error points at C's line
    raises(SasRecText(path, kcore=2, min_length=3).load, path, 4, key="C", mentions=("'C'",))


def test_on_short_drop(tmp_path):
    path = write(tmp_path, "seq.txt", "A a b c\nB a\nC b c a\n")
    data = SasRecText(path, on_short="drop").load()
    assert data.user_ids == ["A", "C"]


def test_config_errors():
    with pytest.raises(ConfigError):
        SasRecText("x.txt", layout="columns")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        TableFile("x.csv", columns={"usr": "u"})
    with pytest.raises(ConfigError):
        TableFile("x.xlsx")
    with pytest.raises(ConfigError):
        ItemFile("items.xml")


# ----------------------------------------------------------------------------------------- missing / empty / encoding


@pytest.mark.parametrize(
    "make",
    [
        lambda p: LCRecJson(p),
        lambda p: SasRecText(p),
        lambda p: SasRecText(p, layout="pairs"),
        lambda p: RecBoleAtomic(p),
        lambda p: TableFile(p),
        lambda p: TableFile(p.replace(".csv", ".parquet")),
    ],
    ids=["lcrec", "lines", "pairs", "recbole", "csv", "parquet"],
)
def test_missing_file(tmp_path, make):
    path = str(tmp_path / "nope.csv")
    source = make(path)
    want = getattr(source, "path", None) or source.inter_path
    raises(source.load, want, mentions=("not found",))


def test_missing_item_file(tmp_path):
    inter = write(tmp_path, "x.inter.json", INTER_JSON)
    missing = str(tmp_path / "x.item.json")
    raises(LCRecJson(inter, missing).load, missing, mentions=("not found",))
    raises(ItemFile(str(tmp_path / "i.jsonl")).load, str(tmp_path / "i.jsonl"), mentions=("not found",))


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("x.inter.json", lambda p: LCRecJson(p)),
        ("s.txt", lambda p: SasRecText(p)),
        ("p.txt", lambda p: SasRecText(p, layout="pairs")),
        ("x.inter", lambda p: RecBoleAtomic(p)),
        ("t.csv", lambda p: TableFile(p)),
        ("i.jsonl", lambda p: ItemFile(p)),
    ],
)
def test_empty_file(tmp_path, name, make):
    path = write(tmp_path, name, " \n\n")
    raises(make(path).load, path, mentions=("empty",))


@pytest.mark.parametrize(
    ("name", "good", "make"),
    [
        ("x.inter.json", '{\n"a": [1, 2, 3],\n"b": [1, 2, 3],\n"c": [1, 2, 3]\n}', lambda p: LCRecJson(p)),
        ("s.txt", "u1 a b c\nu2 a b c\nu3 a b c\n", lambda p: SasRecText(p)),
        ("p.txt", "u a\nu b\nu c\n", lambda p: SasRecText(p, layout="pairs")),
        ("x.inter", "user_id:token\titem_id:token\nu\ta\nu\tb\n", lambda p: RecBoleAtomic(p)),
        ("t.csv", "user,item\nu,a\nu,b\nu,c\n", lambda p: TableFile(p)),
        ("i.jsonl", '{"item_id": 1}\n{"item_id": 2}\n{"item_id": 3}\n', lambda p: ItemFile(p)),
        ("i.csv", "item_id,title\n1,a\n2,b\n3,c\n", lambda p: ItemFile(p)),
    ],
)
def test_bad_utf8_names_the_line(tmp_path, name, good, make):
    lines = good.encode().split(b"\n")
    lines[2] = lines[2][:2] + BAD_UTF8 + lines[2][2:]  # corrupt the third line
    path = write(tmp_path, name, b"\n".join(lines))
    raises(make(path).load, path, 3, mentions=("UTF-8", "0xff"))


def test_bad_utf8_in_item_file_of_source(tmp_path):
    inter = write(tmp_path, "x.inter", "user_id:token\titem_id:token\nu\ti1\n")
    item = write(tmp_path, "x.item", b"item_id:token\ttitle:token_seq\ni1\tok\ni2\tbad \xc3\x28\n")
    raises(RecBoleAtomic(inter, item).load, item, 3, mentions=("UTF-8",))


# ----------------------------------------------------------------------------------------- unknown items


def test_unknown_item_lcrec(tmp_path):
    inter = write(tmp_path, "x.inter.json", '{\n  "u1": [1, 2, 3],\n  "u2": [2, 99,\n 4]\n}')
    items = write(tmp_path, "x.item.json", ITEM_JSON)
    raises(LCRecJson(inter, items).load, inter, 3, key="u2", mentions=("'99'", "'u2'"))


def test_unknown_item_lines(tmp_path):
    path = write(tmp_path, "seq.txt", "A i1 i2 i3\n\nB i2 nope i4\n")
    items = ItemFile(write(tmp_path, "items.jsonl", ITEMS_JSONL), id_field="asin")
    raises(SasRecText(path, items=items).load, path, 3, mentions=("'nope'", "'B'"))


def test_unknown_item_pairs(tmp_path):
    path = write(tmp_path, "p.txt", "u i1\nu i2\nv i3\nv zzz\n")
    items = ItemFile(write(tmp_path, "items.jsonl", ITEMS_JSONL), id_field="asin")
    raises(SasRecText(path, layout="pairs", items=items).load, path, 4, mentions=("'zzz'", "'v'"))


def test_unknown_item_recbole(tmp_path):
    inter = write(tmp_path, "x.inter", RB_INTER.replace("u1\ti3\t1\t20", "u1\ti9\t1\t20"))
    item = write(tmp_path, "x.item", RB_ITEM)
    raises(RecBoleAtomic(inter, item).load, inter, 5, mentions=("'i9'", "'u1'"))


def test_unknown_item_csv(tmp_path):
    path = write(tmp_path, "t.csv", "user,item\nu,a\n\nu,q\n")
    items = ItemFile(write(tmp_path, "i.csv", "item_id\na\nb\n"))
    raises(TableFile(path, items=items).load, path, 4, mentions=("'q'",))


def test_unknown_item_parquet(tmp_path):
    path = str(tmp_path / "t.parquet")
    pd.DataFrame({"user": ["u", "u", "u"], "item": ["a", "b", "q"]}).to_parquet(path)
    items = ItemFile(write(tmp_path, "i.csv", "item_id\na\nb\n"))
    raises(TableFile(path, items=items).load, path, None, key="row 2", mentions=("'q'",))


# ----------------------------------------------------------------------------------------- duplicates


def test_duplicate_user_lcrec(tmp_path):
    inter = write(tmp_path, "x.inter.json", '{\n  "a": [1, 2, 3],\n  "b": [1, 2, 3],\n  "a": [3, 2, 1]\n}')
    raises(LCRecJson(inter).load, inter, 4, key="a", mentions=("duplicate user 'a'", "line 2"))


def test_duplicate_user_lines(tmp_path):
    path = write(tmp_path, "seq.txt", "A a b c\nB a b c\nA c b a\n")
    raises(SasRecText(path).load, path, 3, key="A", mentions=("duplicate user 'A'", "line 1"))


def test_duplicate_item_json_dict(tmp_path):
    path = write(tmp_path, "x.item.json", '{\n"1": {"title": "a"},\n"2": {"title": "b"},\n"1": {"title": "c"}\n}')
    raises(ItemFile(path).load, path, 4, key="1", mentions=("duplicate item id '1'", "line 2"))


def test_duplicate_item_jsonl(tmp_path):
    path = write(tmp_path, "i.jsonl", '{"item_id": 1}\n{"item_id": 2}\n\n{"item_id": 1}\n')
    raises(ItemFile(path).load, path, 4, mentions=("duplicate item id '1'", "line 1"))


def test_duplicate_item_csv(tmp_path):
    path = write(tmp_path, "i.csv", "item_id,title\na,x\nb,y\na,z\n")
    raises(ItemFile(path).load, path, 4, mentions=("'a'", "line 2"))


def test_duplicate_item_recbole(tmp_path):
    inter = write(tmp_path, "x.inter", RB_INTER)
    item = write(tmp_path, "x.item", RB_ITEM + "i2\tAgain\tX\tY\t1\n")
    raises(RecBoleAtomic(inter, item).load, item, 5, mentions=("'i2'", "line 3"))


def test_duplicate_field_inside_item_object(tmp_path):
    path = write(tmp_path, "x.item.json", '{\n"1": {"title": "a"},\n"2": {"title": "b", "title": "c"}\n}')
    raises(ItemFile(path).load, path, 3, key="2", mentions=("'title'",))


# ----------------------------------------------------------------------------------------- short sequences


def test_short_lcrec(tmp_path):
    inter = write(tmp_path, "x.inter.json", '{\n  "a": [1, 2, 3],\n  "b": [1, 2]\n}')
    raises(LCRecJson(inter).load, inter, 3, key="b", mentions=("'b'", "min_length=3"))


def test_short_lines(tmp_path):
    path = write(tmp_path, "seq.txt", "A a b c\n\nB a b\n")
    raises(SasRecText(path).load, path, 3, mentions=("'B'",))


def test_short_pairs_points_at_first_line_of_user(tmp_path):
    path = write(tmp_path, "p.txt", "u a 1\nv a 1\nu b 2\nv b 2\nu c 3\n")
    raises(SasRecText(path, layout="pairs").load, path, 2, key="v", mentions=("'v'",))


def test_short_recbole(tmp_path):
    inter = write(tmp_path, "x.inter", "user_id:token\titem_id:token\nu\ta\nu\tb\nv\ta\nu\tc\n")
    raises(RecBoleAtomic(inter).load, inter, 4, mentions=("'v'",))


def test_short_csv(tmp_path):
    path = write(tmp_path, "t.csv", "user,item\nu,a\nu,b\nu,c\nv,a\n")
    raises(TableFile(path).load, path, 5, mentions=("'v'",))


def test_short_parquet(tmp_path):
    path = str(tmp_path / "t.parquet")
    pd.DataFrame({"user": ["u", "u", "v", "u"], "item": ["a", "b", "a", "c"]}).to_parquet(path)
    raises(TableFile(path).load, path, None, key="v", mentions=("'v'",))


# ----------------------------------------------------------------------------------------- missing columns


def test_missing_columns_recbole_inter(tmp_path):
    inter = write(tmp_path, "x.inter", "user_id:token\titem:token\nu\ta\n")
    raises(RecBoleAtomic(inter).load, inter, 1, mentions=("['item_id']", "'item'"))


def test_missing_columns_recbole_item(tmp_path):
    inter = write(tmp_path, "x.inter", RB_INTER)
    item = write(tmp_path, "x.item", "id:token\ttitle:token_seq\ni1\tx\n")
    raises(RecBoleAtomic(inter, item).load, item, 1, mentions=("['item_id']", "'id'"))


def test_missing_columns_csv(tmp_path):
    path = write(tmp_path, "t.csv", "uid,asin\nu,a\n")
    raises(
        TableFile(path, columns={"user": "uid", "item": "item_id", "time": "ts"}).load,
        path,
        1,
        mentions=("['item_id', 'ts']", "'asin'"),
    )


def test_missing_columns_parquet(tmp_path):
    path = str(tmp_path / "t.parquet")
    pd.DataFrame({"user": ["u"], "product": ["a"]}).to_parquet(path)
    raises(TableFile(path).load, path, mentions=("['item']", "'product'"))


def test_missing_id_field_jsonl(tmp_path):
    path = write(tmp_path, "i.jsonl", '{"asin": "a", "title": "x"}\n{"title": "y"}\n')
    raises(ItemFile(path, id_field="asin").load, path, 2, mentions=("'asin'", "'title'"))


def test_missing_id_field_csv(tmp_path):
    path = write(tmp_path, "i.csv", "asin,title\na,x\n")
    raises(ItemFile(path).load, path, 1, mentions=("'item_id'", "'asin'"))


def test_missing_keep_field(tmp_path):
    path = write(tmp_path, "i.jsonl", '{"item_id": 1, "title": "x"}\n')
    raises(ItemFile(path, keep_fields=["p5_id"]).load, path, mentions=("'p5_id'", "'title'"))


# ----------------------------------------------------------------------------------------- malformed lines


def test_pairs_single_token(tmp_path):
    path = write(tmp_path, "p.txt", "lonely\nu a\n")
    raises(SasRecText(path, layout="pairs").load, path, 1, mentions=("'lonely'",))


def test_pairs_inconsistent_width(tmp_path):
    path = write(tmp_path, "p.txt", "u a 1\nu b 2\nu c\n")
    raises(SasRecText(path, layout="pairs").load, path, 3, mentions=("'u c'",))


def test_pairs_bad_timestamp(tmp_path):
    path = write(tmp_path, "p.txt", "u a 1\nu b 2\n\nu c yesterday\n")
    raises(SasRecText(path, layout="pairs").load, path, 4, mentions=("'yesterday'",))


def test_recbole_bad_timestamp(tmp_path):
    inter = write(tmp_path, "x.inter", "user_id:token\titem_id:token\ttimestamp:float\nu\ta\t1\nu\tb\tsoon\n")
    raises(RecBoleAtomic(inter).load, inter, 3, mentions=("'soon'",))


def test_recbole_wrong_field_count(tmp_path):
    inter = write(tmp_path, "x.inter", "user_id:token\titem_id:token\nu\ta\nu\tb\tc\n")
    raises(RecBoleAtomic(inter).load, inter, 3, mentions=("Expected 2 fields",))
    # a row with too few fields reads as a missing value
    inter = write(tmp_path, "y.inter", "user_id:token\titem_id:token\nu\ta\nu b\n")
    raises(RecBoleAtomic(inter).load, inter, 3, mentions=("empty item",))


def test_lcrec_invalid_json(tmp_path):
    inter = write(tmp_path, "x.inter.json", '{\n  "a": [1, 2, 3],\n  "b": [1, 2 3]\n}')
    raises(LCRecJson(inter).load, inter, 3, mentions=("invalid JSON",))


def test_lcrec_truncated_json(tmp_path):
    inter = write(tmp_path, "x.inter.json", '{\n  "a": [1, 2, 3],\n')
    raises(LCRecJson(inter).load, inter, 3, mentions=("invalid JSON",))


def test_lcrec_sequence_not_a_list(tmp_path):
    inter = write(tmp_path, "x.inter.json", '{\n  "a": [1, 2, 3],\n  "b": {"x": 1}\n}')
    raises(LCRecJson(inter).load, inter, 3, key="b", mentions=("'b'", "list"))


def test_lcrec_bad_item_value(tmp_path):
    inter = write(tmp_path, "x.inter.json", '{\n  "a": [1, 2.5, 3]\n}')
    raises(LCRecJson(inter).load, inter, 2, key="a", mentions=("2.5",))


def test_item_json_invalid(tmp_path):
    path = write(tmp_path, "x.item.json", '{\n"1": {"title": "a"},\n"2": {"title": "b",}\n}')
    raises(ItemFile(path).load, path, 3, mentions=("invalid JSON",))


def test_item_jsonl_invalid_line(tmp_path):
    path = write(tmp_path, "i.jsonl", '{"item_id": 1}\n{"item_id": 2\n')
    raises(ItemFile(path).load, path, 2, mentions=("invalid JSON",))


def test_csv_bad_time(tmp_path):
    path = write(tmp_path, "t.csv", "user,item,time\nu,a,1\nu,b,2\nu,c,later\n")
    raises(TableFile(path).load, path, 4, mentions=("'later'",))


def test_csv_empty_item(tmp_path):
    path = write(tmp_path, "t.csv", "user,item\nu,a\nu,\nu,c\n")
    raises(TableFile(path).load, path, 3, mentions=("empty item",))


def test_csv_ragged_line(tmp_path):
    path = write(tmp_path, "t.csv", "user,item\nu,a\nu,b,extra\n")
    raises(TableFile(path).load, path, 3, mentions=("Expected 2 fields",))
    path = write(tmp_path, "t2.csv", "user,item\nu,a,x\nu,b,y\nu,c,z\n")
    raises(TableFile(path).load, path, 2, mentions=("more fields than the header",))


# ----------------------------------------------------------------------------------------- real data


def data_root() -> Path:
    root = Path(os.environ.get("ADAGRPO_DATA_ROOT", "../shared/data"))
    return root if root.is_absolute() else (REPO / root).resolve()


def test_real_beauty():
    root = data_root() / "amazon_beauty_2014"
    if not (root / "user_sequences.txt").exists():
        pytest.skip(f"no Beauty data under {root}")
    items = ItemFile(str(root / "items.jsonl"), id_field="asin", keep_fields=["item_id"])
    data = SasRecText(str(root / "user_sequences.txt"), items=items, min_length=5).load()
    assert (data.num_users, data.num_items, data.num_interactions) == (22363, 12101, 198502)
    assert all(data.catalog.attrs["item_id"])
    assert data.catalog.attrs["item_id"] == [str(i) for i in range(12101)]  # items.jsonl is in LC-Rec id order
    assert data.catalog.item_ids[0] == "B004756YJA" and data.user_ids[0] == "A1YJEY40YUW4SE"


def test_real_industrial():
    root = data_root() / "amazon_industrial_scientific_2018"
    if not (root / "Scientific.inter.json").exists():
        pytest.skip(f"no Industrial data under {root}")
    data = LCRecJson(str(root / "Scientific.inter.json"), str(root / "Scientific.item.json"), min_length=5).load()
    assert (data.num_users, data.num_items, data.num_interactions) == (8317, 4344, 58492)
    assert data.catalog.item_ids == [str(i) for i in range(4344)]
    assert raw_sequences(data)["0"] == [str(i) for i in range(9)]
    assert all(data.catalog.text["title"])
    assert np.all(data.popularity() >= 5)
