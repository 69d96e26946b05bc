"""Readers for the on-disk dataset formats; each is a :class:`~adagrpo.datamodules.sources.DataSource`.

Formats:

* :class:`LCRecJson` — LC-Rec / LETTER json: ``*.inter.json`` ``{"user": [item, ...]}`` and
  ``*.item.json`` ``{"item": {"title", "description", "brand", "categories"}}``.
* :class:`SasRecText` — SASRec-style text: ``USER item1 item2 ...`` per line, or ``user item [timestamp]`` pairs.
* :class:`RecBoleAtomic` — RecBole atomic ``.inter`` / ``.item`` files (tab-separated, typed header).
* :class:`TableFile` — CSV / TSV / Parquet interactions with a column map.
* :class:`ItemFile` — item metadata (JSON, JSONL or CSV); not a source, it is plugged into the others.

All user and item ids become strings. Every problem in the input raises :class:`DataError` naming the
file and the 1-based line (or the key where a line has no meaning, e.g. Parquet rows).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from bisect import bisect_right
from json.decoder import scanstring
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from adagrpo.datamodules.catalog import TEXT_FIELDS, Catalog, Interactions
from adagrpo.datamodules.errors import missing_file
from adagrpo.datamodules.sources import DataSource
from adagrpo.errors import ConfigError, DataError
from adagrpo.progress import progress

Where = list[tuple[str, int | None, str | None]]

#: Text fields an :class:`ItemFile` picks up by default, and the Catalog text key each is stored under.
_DEFAULT_TEXT = {
    "title": "title",
    "brand": "brand",
    "categories": "categories",
    "description": "description",
    "attributes": "categories",
}


# --------------------------------------------------------------------------------------------- file helpers


def _read_text(path: str) -> str:
    """The whole file as text; missing files, invalid UTF-8 and empty files become located errors."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise missing_file(path) from None
    except IsADirectoryError:
        raise DataError("is a directory, expected a file", file=path) from None
    except OSError as e:
        raise DataError(f"cannot read file: {e.strerror}", file=path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"invalid UTF-8: byte 0x{data[e.start]:02x} at offset {e.start} ({e.reason})", file=path, line=line
        ) from None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise DataError("file is empty", file=path)
    return text


def _split_lines(text: str) -> list[str]:
    # str.splitlines() also breaks on \x1c, \u2028, ... which would desynchronise line numbers from the bytes.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln.removesuffix("\r") for ln in lines]


def _as_text(value: Any) -> str:
    """A metadata value as a string: lists joined with ", ", None as ""."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(_as_text(v) for v in value if v is not None and v != "")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class _LineIndex:
    """Maps character offsets of a text to 1-based line numbers."""

    def __init__(self, text: str) -> None:
        self._newlines = [m.start() for m in re.finditer("\n", text)]

    def line(self, pos: int) -> int:
        return bisect_right(self._newlines, pos - 1) + 1


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _pairs_no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs_no_duplicates)
_WS = re.compile(r"[ \t\n\r]*")


def _json_entries(path: str, text: str) -> tuple[str, list[tuple[str | None, Any, int]]]:
    """Parse a top-level JSON object or array entry by entry.

    Returns ``("object" | "array", [(key or None, value, line), ...])`` where ``line`` is where the key
    (or array element) starts, so later errors can point at it. Duplicate keys are kept (callers report them).
    """
    lines = _LineIndex(text)
    n = len(text)

    def skip(pos: int) -> int:
        return _WS.match(text, pos).end()

    def fail(msg: str, pos: int) -> DataError:
        return DataError(f"invalid JSON: {msg}", file=path, line=lines.line(min(pos, n)))

    pos = skip(0)
    opener = text[pos]
    if opener not in "{[":
        raise fail(f"expected a top-level object or array, found {opener!r}", pos)
    closer = "}" if opener == "{" else "]"
    entries: list[tuple[str | None, Any, int]] = []
    pos = skip(pos + 1)
    if pos < n and text[pos] == closer:
        pos += 1
    else:
        while True:
            start = pos
            key = None
            try:
                if opener == "{":
                    if pos >= n or text[pos] != '"':
                        raise fail("expecting a property name in double quotes", pos)
                    key, pos = scanstring(text, pos + 1)
                    pos = skip(pos)
                    if pos >= n or text[pos] != ":":
                        raise fail("expecting ':' delimiter", pos)
                    pos = skip(pos + 1)
                value, pos = _DECODER.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                raise DataError(f"invalid JSON: {e.msg}", file=path, line=e.lineno) from None
            except _DuplicateKey as e:
                raise DataError(
                    f"duplicate key {e.key!r} inside one object", file=path, line=lines.line(start), key=key
                ) from None
            entries.append((key, value, lines.line(start)))
            pos = skip(pos)
            if pos < n and text[pos] == ",":
                pos = skip(pos + 1)
                continue
            if pos < n and text[pos] == closer:
                pos += 1
                break
            raise fail(f"expecting ',' or {closer!r}" if pos < n else "unexpected end of file", pos)
    pos = skip(pos)
    if pos < n:
        raise fail("extra data after the top-level value", pos)
    return ("object" if opener == "{" else "array"), entries


def _check_dup(path: str, what: str, ident: str, line: int | None, seen: dict[str, int | None]) -> None:
    """Record ``ident`` as seen at ``line``; raise naming both places if it was seen before."""
    if ident in seen:
        at = f"line {seen[ident]}" if seen[ident] is not None else "earlier"
        raise DataError(f"duplicate {what} {ident!r} (first at {at})", file=path, line=line, key=ident)
    seen[ident] = line


# --------------------------------------------------------------------------------------------- items


class ItemFile:
    """Item metadata: JSON (object keyed by item id, or array of objects), JSONL (one object a line) or CSV/TSV.

    The format follows the extension (``.json``, ``.jsonl``/``.ndjson``, ``.csv``/``.tsv``). The catalogue
    keeps the file's item order.

    Args:
        path: the item file.
        id_field: field holding the item id (ignored for a JSON object keyed by id).
        text_fields: fields kept as item text; default: whichever of title, brand, categories, description,
            attributes occur. ``attributes`` is stored as ``categories``; list values are joined with ", ".
        keep_fields: further fields kept as strings in ``Catalog.attrs`` (e.g. an alternative item id).
    """

    def __init__(
        self,
        path: str,
        id_field: str = "item_id",
        text_fields: list[str] | None = None,
        keep_fields: list[str] | None = None,
    ) -> None:
        suffix = Path(path).suffix.lower()
        if suffix not in (".json", ".jsonl", ".ndjson", ".csv", ".tsv"):
            raise ConfigError("path", f"item file {path!r}: unknown extension {suffix!r} (json, jsonl, csv, tsv)")
        self.path = str(path)
        self.id_field = id_field
        self.text_fields = list(text_fields) if text_fields is not None else None
        self.keep_fields = list(keep_fields) if keep_fields is not None else []

    def __repr__(self) -> str:  # deterministic: DataSource.cache_key() stringifies it
        return (
            f"ItemFile(path={self.path!r}, id_field={self.id_field!r}, text_fields={self.text_fields!r}, "
            f"keep_fields={self.keep_fields!r})"
        )

    def _records(self) -> list[tuple[str, dict[str, Any], int | None]]:
        """``(item id, fields, line)`` per item, in file order."""
        path = self.path
        suffix = Path(path).suffix.lower()
        text = _read_text(path)
        rows: list[tuple[str | None, dict[str, Any], int]] = []  # (key or None, object, line)
        if suffix == ".json":
            _, entries = _json_entries(path, text)
            for key, value, line in entries:
                if not isinstance(value, dict):
                    raise DataError(
                        f"expected an object for each item, found {type(value).__name__}", file=path, line=line, key=key
                    )
                rows.append((key, value, line))
        elif suffix in (".jsonl", ".ndjson"):
            lines = _split_lines(text)
            for lineno, raw in enumerate(progress(lines, f"reading {Path(path).name}", total=len(lines), unit="line"),
                                         1):
                if not raw.strip():
                    continue
                try:
                    value = _DECODER.decode(raw)
                except json.JSONDecodeError as e:
                    raise DataError(f"invalid JSON: {e.msg} (column {e.colno})", file=path, line=lineno) from None
                except _DuplicateKey as e:
                    raise DataError(f"duplicate field {e.key!r}", file=path, line=lineno) from None
                if not isinstance(value, dict):
                    raise DataError(
                        f"expected one JSON object per line, found {type(value).__name__}", file=path, line=lineno
                    )
                rows.append((None, value, lineno))
        else:
            reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
            header = next(reader)
            if self.id_field not in header:
                raise DataError(f"missing column {self.id_field!r} (id_field); found {header}", file=path, line=1)
            try:
                for fields in reader:
                    if not any(f.strip() for f in fields):
                        continue
                    if len(fields) != len(header):
                        raise DataError(
                            f"expected {len(header)} fields, found {len(fields)}", file=path, line=reader.line_num
                        )
                    rows.append((None, dict(zip(header, fields)), reader.line_num))
            except csv.Error as e:
                raise DataError(f"malformed CSV: {e}", file=path, line=reader.line_num) from None
        if not rows:
            raise DataError("item file holds no items", file=path)

        out: list[tuple[str, dict[str, Any], int | None]] = []
        for key, obj, line in rows:
            if key is None:
                if self.id_field not in obj:
                    raise DataError(
                        f"missing id field {self.id_field!r} (id_field); found fields {sorted(obj)}",
                        file=path,
                        line=line,
                    )
                key = _as_text(obj[self.id_field])
                if key == "":
                    raise DataError(f"empty item id in field {self.id_field!r}", file=path, line=line)
            out.append((key, obj, line))
        return out

    def load(self) -> Catalog:
        """Read and validate the file into a :class:`Catalog` (text fields + ``keep_fields`` as attrs)."""
        records = self._records()
        present: dict[str, None] = {}
        for _, obj, _ in records:
            present.update(dict.fromkeys(obj))
        if self.text_fields is None:
            chosen = [f for f in _DEFAULT_TEXT if f in present]
            # when both exist, attributes must not overwrite categories
            targets = {
                f: ("attributes" if f == "attributes" and "categories" in present else _DEFAULT_TEXT[f]) for f in chosen
            }
        else:
            chosen = list(self.text_fields)
            targets = {f: ("categories" if f == "attributes" and "categories" not in chosen else f) for f in chosen}
        missing = [f for f in [*chosen, *self.keep_fields] if f not in present]
        if missing:
            raise DataError(
                f"missing field(s) {missing} (text_fields/keep_fields); found {sorted(present)}", file=self.path
            )

        seen: dict[str, int | None] = {}
        ids: list[str] = []
        for key, _, line in records:
            _check_dup(self.path, "item id", key, line, seen)
            ids.append(key)
        text = {targets[f]: [_as_text(obj.get(f)) for _, obj, _ in records] for f in chosen}
        attrs = {f: [_as_text(obj.get(f)) for _, obj, _ in records] for f in self.keep_fields}
        return Catalog(item_ids=ids, text=text, attrs=attrs)


class _ItemCodes:
    """Maps raw item ids to catalogue indices: fixed by an item file, or growing in order of first appearance."""

    def __init__(self, catalog: Catalog | None, items_path: str | None) -> None:
        self.catalog = catalog
        self.items_path = items_path
        self.codes: dict[str, int] = {raw: i for i, raw in enumerate(catalog.item_ids)} if catalog else {}

    def encode(self, raw: list[str]) -> list[int] | None:
        """Indices of ``raw``; ``None`` if some id is unknown (only possible with an item file)."""
        codes = self.codes
        if self.catalog is None:
            return [codes.setdefault(r, len(codes)) for r in raw]
        try:
            return [codes[r] for r in raw]
        except KeyError:
            return None

    def first_unknown(self, raw: list[str]) -> str:
        return next(r for r in raw if r not in self.codes)

    def unknown_error(self, item: str, user: str, file: str, line: int | None) -> DataError:
        return DataError(
            f"item {item!r} of user {user!r} is not in the item file {self.items_path}", file=file, line=line, key=user
        )

    def result(self) -> Catalog:
        return self.catalog if self.catalog is not None else Catalog(item_ids=list(self.codes))


def _delimited_frame(path: str, text: str, sep: str, quoting: int = csv.QUOTE_MINIMAL) -> pd.DataFrame:
    """All columns of a delimited table with a header line, as strings ("" for missing), indexed by file line.

    Blank lines are dropped. Line numbers assume no quoted field spans lines.
    """
    try:
        df = pd.read_csv(
            io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, skip_blank_lines=False, quoting=quoting
        )
    except pd.errors.EmptyDataError:
        raise DataError("file is empty", file=path) from None
    except pd.errors.ParserError as e:
        m = re.search(r"line (\d+)", str(e))
        raise DataError(f"malformed table: {e}", file=path, line=int(m.group(1)) if m else None) from None
    if not isinstance(df.index, pd.RangeIndex):
        # pandas silently turns the first column into an index when every row has one field more than the header
        raise DataError(f"rows have more fields than the header ({len(df.columns)})", file=path, line=2)
    df = df.fillna("")
    df.index = np.arange(2, len(df) + 2)
    blank = np.ones(len(df), dtype=bool)
    for c in df.columns:
        blank &= (df[c].str.strip() == "").to_numpy()
    return df[~blank]


def _require_columns(path: str, found: list[str], needed: dict[str, str], line: int | None = None) -> None:
    missing = [c for c in dict.fromkeys(needed.values()) if c not in found]
    if missing:
        raise DataError(f"missing column(s) {missing} (needed {needed}); found {found}", file=path, line=line)


class _Rows:
    """One interaction per row (users, items, optional times) plus where each row came from.

    ``lines[r]`` is the file line of row ``r``; without lines (Parquet) rows are named by ``key="row r"``.
    """

    def __init__(self, path: str, lines: np.ndarray | None) -> None:
        self.path = path
        self.lines = lines

    def error(self, msg: str, r: int) -> DataError:
        if self.lines is not None:
            return DataError(msg, file=self.path, line=int(self.lines[r]))
        return DataError(msg, file=self.path, key=f"row {r}")

    def from_frame(self, df: pd.DataFrame, roles: dict[str, str]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """User ids, item ids (stripped strings) and times (float, for sorting) from ``df`` columns."""
        ids = []
        for role in ("user", "item"):
            strings = _id_strings(df[roles[role]])
            empty = np.flatnonzero(strings == "")
            if len(empty):
                raise self.error(f"empty {role} in column {roles[role]!r}", int(empty[0]))
            ids.append(strings)
        times = None
        if "time" in roles:
            times = _time_values(df[roles["time"]])
            bad = np.flatnonzero(np.isnan(times))
            if len(bad):
                raw = df[roles["time"]].iloc[int(bad[0])]
                raise self.error(f"time {raw!r} in column {roles['time']!r} is not a number or date", int(bad[0]))
        return ids[0], ids[1], times

    def assemble(
        self,
        name: str,
        files: list[str],
        users: np.ndarray,
        items: np.ndarray,
        times: np.ndarray | None,
        catalog: Catalog | None,
        items_path: str | None,
    ) -> tuple[Interactions, Where]:
        """CSR interactions: users in first-appearance order, each user's items in row order or stably sorted
        by ``times``; the catalogue is ``catalog`` or the items in first-appearance order. The where-list
        points at each user's first row."""
        user_codes, user_uniques = pd.factorize(users)
        user_ids = [str(u) for u in user_uniques]
        if catalog is None:
            item_codes, item_uniques = pd.factorize(items)
            catalog = Catalog(item_ids=[str(x) for x in item_uniques])
        else:
            item_codes = pd.Index(catalog.item_ids).get_indexer(items)
            unknown = np.flatnonzero(item_codes < 0)
            if len(unknown):
                r = int(unknown[0])
                raise self.error(f"item {items[r]!r} of user {users[r]!r} is not in the item file {items_path}", r)
        user_codes = np.asarray(user_codes, dtype=np.int64)
        order = np.arange(len(user_codes)) if times is None else np.argsort(times, kind="stable")
        order = order[np.argsort(user_codes[order], kind="stable")]
        offsets = np.zeros(len(user_ids) + 1, dtype=np.int64)
        np.cumsum(np.bincount(user_codes, minlength=len(user_ids)), out=offsets[1:])
        data = Interactions(name, catalog, user_ids, offsets, np.asarray(item_codes, dtype=np.int64)[order], files)
        _, first_rows = np.unique(user_codes, return_index=True)
        lines = self.lines
        where: Where = [
            (self.path, int(lines[r]) if lines is not None else None, u) for r, u in zip(first_rows, user_ids)
        ]
        return data, where


# --------------------------------------------------------------------------------------------- sources


class LCRecJson(DataSource):
    """LC-Rec / LETTER json: ``*.inter.json`` ``{"user": [item, ...]}`` (items in time order) and optionally
    ``*.item.json`` ``{"item": {"title", "description", "brand", "categories"}}``.

    The catalogue is the item file's items in file order when given, else items in order of first appearance.

    Args:
        inter_path: the ``.inter.json`` file.
        item_path: the ``.item.json`` file (enables text and the unknown-item check).
    """

    def __init__(
        self,
        inter_path: str,
        item_path: str | None = None,
        min_length: int = 3,
        on_short: Literal["error", "drop"] = "error",
        kcore: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(min_length=min_length, on_short=on_short, kcore=kcore, name=name)
        self.inter_path = str(inter_path)
        self.item_path = str(item_path) if item_path is not None else None

    def read(self) -> tuple[Interactions, Where]:
        path = self.inter_path
        catalog = ItemFile(self.item_path).load() if self.item_path else None
        codes = _ItemCodes(catalog, self.item_path)
        kind, entries = _json_entries(path, _read_text(path))
        if kind != "object":
            raise DataError("expected a top-level object {user: [items]}, found an array", file=path, line=1)
        seen: dict[str, int | None] = {}
        users: list[str] = []
        sequences: list[list[int]] = []
        where: Where = []
        for user, value, line in entries:
            assert user is not None
            _check_dup(path, "user", user, line, seen)
            if not isinstance(value, list):
                raise DataError(
                    f"user {user!r}: expected a list of item ids, found {type(value).__name__}",
                    file=path,
                    line=line,
                    key=user,
                )
            bad = next((v for v in value if isinstance(v, bool) or not isinstance(v, (int, str))), None)
            if bad is not None:
                raise DataError(
                    f"user {user!r}: item id {bad!r} is not an integer or string", file=path, line=line, key=user
                )
            raw = [v if isinstance(v, str) else str(v) for v in value]
            seq = codes.encode(raw)
            if seq is None:
                raise codes.unknown_error(codes.first_unknown(raw), user, path, line)
            users.append(user)
            sequences.append(seq)
            where.append((path, line, user))
        files = [path] + ([self.item_path] if self.item_path else [])
        return Interactions.from_lists(self.name, codes.result(), users, sequences, files), where


class SasRecText(DataSource):
    """SASRec-style whitespace-separated text.

    ``layout="lines"``: one user per line, ``USER item1 item2 ...`` in time order (a user may appear once).
    ``layout="pairs"``: one ``user item [timestamp]`` per line; a user's items are in line order, or stably
    sorted by the numeric timestamp when the file has a third column (then every line must have one).
    Blank lines are skipped.

    Args:
        path: the text file.
        layout: ``"lines"`` or ``"pairs"``.
        items: optional item metadata (enables text and the unknown-item check; sets the catalogue order).
    """

    def __init__(
        self,
        path: str,
        layout: Literal["lines", "pairs"] = "lines",
        items: ItemFile | None = None,
        min_length: int = 3,
        on_short: Literal["error", "drop"] = "error",
        kcore: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(min_length=min_length, on_short=on_short, kcore=kcore, name=name)
        if layout not in ("lines", "pairs"):
            raise ConfigError("layout", f"must be 'lines' or 'pairs', got {layout!r}")
        self.path = str(path)
        self.layout = layout
        self.items = items

    def read(self) -> tuple[Interactions, Where]:
        catalog = self.items.load() if self.items else None
        lines = _split_lines(_read_text(self.path))
        files = [self.path] + ([self.items.path] if self.items else [])
        if self.layout == "lines":
            return self._read_lines(lines, _ItemCodes(catalog, self.items.path if self.items else None), files)
        return self._read_pairs(lines, catalog, files)

    def _read_lines(self, lines: list[str], codes: _ItemCodes, files: list[str]) -> tuple[Interactions, Where]:
        path = self.path
        seen: dict[str, int | None] = {}
        users: list[str] = []
        sequences: list[list[int]] = []
        where: Where = []
        for lineno, raw in enumerate(progress(lines, f"reading {Path(path).name}", total=len(lines), unit="line"), 1):
            tokens = raw.split()
            if not tokens:
                continue
            user = tokens[0]
            _check_dup(path, "user", user, lineno, seen)
            seq = codes.encode(tokens[1:])
            if seq is None:
                raise codes.unknown_error(codes.first_unknown(tokens[1:]), user, path, lineno)
            users.append(user)
            sequences.append(seq)
            where.append((path, lineno, user))
        return Interactions.from_lists(self.name, codes.result(), users, sequences, files), where

    def _read_pairs(self, lines: list[str], catalog: Catalog | None, files: list[str]) -> tuple[Interactions, Where]:
        path = self.path
        width = None
        users: list[str] = []
        items: list[str] = []
        times: list[float] = []
        row_lines: list[int] = []
        for lineno, raw in enumerate(progress(lines, f"reading {Path(path).name}", total=len(lines), unit="line"), 1):
            tokens = raw.split()
            if not tokens:
                continue
            if width is None:
                width = len(tokens)
                if width not in (2, 3):
                    raise DataError(
                        f"expected 'user item [timestamp]', found {len(tokens)} field(s): {raw!r}",
                        file=path,
                        line=lineno,
                    )
            if len(tokens) != width:
                raise DataError(
                    f"expected {width} fields like the first line ('user item{' timestamp' if width == 3 else ''}'),"
                    f" found {len(tokens)}: {raw!r}",
                    file=path,
                    line=lineno,
                )
            if width == 3:
                try:
                    t = float(tokens[2])
                except ValueError:
                    t = math.nan
                if math.isnan(t):
                    raise DataError(f"timestamp {tokens[2]!r} is not a number", file=path, line=lineno)
                times.append(t)
            users.append(tokens[0])
            items.append(tokens[1])
            row_lines.append(lineno)
        rows = _Rows(path, np.asarray(row_lines, dtype=np.int64))
        return rows.assemble(
            self.name,
            files,
            np.asarray(users, dtype=object),
            np.asarray(items, dtype=object),
            np.asarray(times) if width == 3 else None,
            catalog,
            self.items.path if self.items else None,
        )


class RecBoleAtomic(DataSource):
    """RecBole atomic files: tab-separated with a typed header (``user_id:token\\titem_id:token\\t...``).

    ``.inter`` needs ``user_id`` and ``item_id``; with a ``timestamp`` column each user's interactions are
    stably sorted by it, else kept in file order. The optional ``.item`` file needs ``item_id``; fields named
    title/brand/categories/description or typed ``token_seq`` become item text, the rest ``Catalog.attrs``.

    Args:
        inter_path: the ``.inter`` file.
        item_path: the ``.item`` file (enables text and the unknown-item check; sets the catalogue order).
    """

    def __init__(
        self,
        inter_path: str,
        item_path: str | None = None,
        min_length: int = 3,
        on_short: Literal["error", "drop"] = "error",
        kcore: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(min_length=min_length, on_short=on_short, kcore=kcore, name=name)
        self.inter_path = str(inter_path)
        self.item_path = str(item_path) if item_path is not None else None

    @staticmethod
    def _table(path: str, required: dict[str, str]) -> tuple[pd.DataFrame, dict[str, str]]:
        """The atomic file as a string frame with plain column names, and each column's declared type."""
        # RecBole does not quote fields; titles may contain quote characters
        df = _delimited_frame(path, _read_text(path), "\t", quoting=csv.QUOTE_NONE)
        header = [str(c) for c in df.columns]
        names = [c.split(":", 1)[0].strip() for c in header]
        df.columns = names
        _require_columns(path, names, required, line=1)
        if len(df) == 0:
            raise DataError("no rows below the header", file=path)
        return df, {n: (h.split(":", 1)[1].strip() if ":" in h else "") for n, h in zip(names, header)}

    def _catalog(self) -> Catalog:
        path = self.item_path
        assert path is not None
        df, types = self._table(path, {"item": "item_id"})
        ids = df["item_id"].str.strip()
        rows = _Rows(path, df.index.to_numpy())
        empty = np.flatnonzero((ids == "").to_numpy())
        if len(empty):
            raise rows.error("empty item_id", int(empty[0]))
        dup = np.flatnonzero(ids.duplicated().to_numpy())
        if len(dup):
            r = int(dup[0])
            first = int(np.flatnonzero((ids == ids.iloc[r]).to_numpy())[0])
            raise DataError(
                f"duplicate item id {ids.iloc[r]!r} (first at line {rows.lines[first]})",
                file=path,
                line=int(rows.lines[r]),
                key=ids.iloc[r],
            )
        text: dict[str, list[str]] = {}
        attrs: dict[str, list[str]] = {}
        for name, typ in types.items():
            if name != "item_id":
                target = text if name in TEXT_FIELDS or typ == "token_seq" else attrs
                target[name] = df[name].tolist()
        return Catalog(item_ids=ids.tolist(), text=text, attrs=attrs)

    def read(self) -> tuple[Interactions, Where]:
        path = self.inter_path
        catalog = self._catalog() if self.item_path else None
        roles = {"user": "user_id", "item": "item_id"}
        df, _ = self._table(path, roles)
        if "timestamp" in df.columns:
            roles["time"] = "timestamp"
        rows = _Rows(path, df.index.to_numpy())
        users, items, times = rows.from_frame(df, roles)
        files = [path] + ([self.item_path] if self.item_path else [])
        return rows.assemble(self.name, files, users, items, times, catalog, self.item_path)


class TableFile(DataSource):
    """Interactions in a CSV, TSV or Parquet table (format by extension), one row per interaction.

    ``columns`` maps the roles ``user``, ``item`` and optionally ``time`` to column names (defaults:
    ``user``, ``item``, and ``time`` if such a column exists). Each user's rows are stably sorted by the time
    column (numbers or ISO dates), else kept in row order. CSV errors name the line (header = line 1, assuming
    no quoted field spans lines); Parquet errors name the row as ``key="row N"`` (0-based).

    Args:
        path: the ``.csv`` / ``.tsv`` / ``.parquet`` file.
        columns: role → column name map, e.g. ``{"user": "user_id", "item": "asin", "time": "unixReviewTime"}``.
        items: optional item metadata (enables text and the unknown-item check; sets the catalogue order).
    """

    def __init__(
        self,
        path: str,
        columns: dict[str, str] | None = None,
        items: ItemFile | None = None,
        min_length: int = 3,
        on_short: Literal["error", "drop"] = "error",
        kcore: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(min_length=min_length, on_short=on_short, kcore=kcore, name=name)
        columns = dict(columns or {})
        unknown = sorted(set(columns) - {"user", "item", "time"})
        if unknown:
            raise ConfigError("columns", f"unknown role(s) {unknown}; expected user, item, time")
        suffix = Path(path).suffix.lower()
        if suffix not in (".csv", ".tsv", ".parquet", ".pq"):
            raise ConfigError("path", f"{path!r}: unknown extension {suffix!r} (csv, tsv, parquet)")
        self.path = str(path)
        self.columns = columns
        self.items = items

    def read(self) -> tuple[Interactions, Where]:
        path = self.path
        roles = {"user": self.columns.get("user", "user"), "item": self.columns.get("item", "item")}
        time_col = self.columns.get("time", "time")
        if path.lower().endswith((".parquet", ".pq")):
            import pyarrow.parquet as pq

            try:
                found = list(pq.read_schema(path).names)
            except FileNotFoundError:
                raise missing_file(path) from None
            except (OSError, ValueError) as e:  # ArrowInvalid is a ValueError, ArrowIOError an OSError
                raise DataError(f"cannot read Parquet file: {e}", file=path) from None
            if "time" in self.columns or time_col in found:
                roles["time"] = time_col
            _require_columns(path, found, roles)
            df = pd.read_parquet(path, columns=list(dict.fromkeys(roles.values())))
            rows = _Rows(path, None)
        else:
            sep = "\t" if path.lower().endswith(".tsv") else ","
            df = _delimited_frame(path, _read_text(path), sep)
            found = [str(c) for c in df.columns]
            if "time" in self.columns or time_col in found:
                roles["time"] = time_col
            _require_columns(path, found, roles, line=1)
            rows = _Rows(path, df.index.to_numpy())
        if len(df) == 0:
            raise DataError("no interactions in the table", file=path)
        users, items, times = rows.from_frame(df, roles)
        catalog = self.items.load() if self.items else None
        files = [path] + ([self.items.path] if self.items else [])
        return rows.assemble(self.name, files, users, items, times, catalog, self.items.path if self.items else None)


def _id_strings(col: pd.Series) -> np.ndarray:
    """Id column values as an object array of stripped strings ("" for missing); integral floats lose ``.0``."""
    if pd.api.types.is_float_dtype(col.dtype):
        vals = col.to_numpy(dtype=np.float64, na_value=np.nan)
        ok = ~np.isnan(vals)
        if np.all(vals[ok] == np.round(vals[ok])):
            out = np.full(len(col), "", dtype=object)
            out[ok] = vals[ok].astype(np.int64).astype(str)
            return out
    strings = col.astype(object).where(col.notna(), "").astype(str)
    return strings.str.strip().to_numpy(dtype=object)


def _datetimes_as_float(col: pd.Series) -> np.ndarray:
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        col = col.dt.tz_convert(None)
    out = col.to_numpy(dtype="datetime64[us]").astype(np.int64).astype(np.float64)
    out[col.isna().to_numpy()] = np.nan
    return out


def _time_values(col: pd.Series) -> np.ndarray:
    """Time column as float64 for sorting (NaN where a value is missing or unparsable)."""
    if pd.api.types.is_datetime64_any_dtype(col.dtype):
        return _datetimes_as_float(col)
    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        return col.to_numpy(dtype=np.float64, na_value=np.nan)
    numbers = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    if not np.isnan(numbers).all():
        return numbers
    return _datetimes_as_float(pd.to_datetime(col, errors="coerce", format="ISO8601", utc=True))
