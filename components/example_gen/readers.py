"""Readers: a file -> stream of `Record`s, one per line (or Parquet row), for every supported format.

A reader never stops at a bad line: it yields the line with its problem, and the pipeline
applies the bad-row policy (stop with the problem, or drop the row to the dead-letter file).
Readers are generators: they stream and never hold a file in memory. Rows are validated
against schemas/ afterwards, so readers only decode and split fields.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from typing import NamedTuple

from apache_beam.io.filesystems import FileSystems


class Record(NamedTuple):
    """One input line: where it is, its raw text, the fields read from it or why they could not be."""

    source: str
    line: int
    raw: str
    row: dict | None
    field: str = ""
    problem: str = ""


def _lines(path: str, encoding: str) -> Iterator[tuple[int, str, str | None]]:
    """(line number, text, decoding problem or None) for every line; gzip is detected by name; a
    UTF-8 byte-order mark (what spreadsheet programs and some exporters write) is dropped."""
    with FileSystems.open(path) as handle:
        for number, raw in enumerate(iter(handle.readline, b""), start=1):  # gzip handles only readline
            if number == 1 and raw.startswith(b"\xef\xbb\xbf") and encoding.replace("-", "").lower() == "utf8":
                raw = raw[3:]
            try:
                yield number, raw.decode(encoding).rstrip("\r\n"), None
            except UnicodeDecodeError as error:
                text = raw.decode(encoding, errors="replace").rstrip("\r\n")
                yield number, text, f"bytes not valid {encoding}: {error}"


def _empty_file(path: str) -> Record:
    return Record(path, 0, "", None, "<file>", "empty input file")


class _BadLine(Exception):
    def __init__(self, field: str, problem: str):
        super().__init__(problem)
        self.field, self.problem = field, problem


def _text_records(path: str, encoding: str, parse: Callable[[str], dict | None]) -> Iterator[Record]:
    """The per-line frame of every text format: bytes that do not decode, blank lines and an empty
    file are handled here; `parse(text)` returns the row, None to skip the line (a header), or
    raises _BadLine."""
    seen = False
    for number, text, problem in _lines(path, encoding):
        seen = True
        if problem:
            yield Record(path, number, text, None, "<bytes>", problem)
            continue
        if not text.strip():
            continue
        try:
            row = parse(text)
        except _BadLine as bad:
            yield Record(path, number, text, None, bad.field, bad.problem)
            continue
        if row is not None:
            yield Record(path, number, text, row)
    if not seen:
        yield _empty_file(path)


def _delimited(path: str, encoding: str, names: tuple[str, ...], build=None) -> Iterator[Record]:
    def parse(text: str) -> dict:
        parts = text.split("::")
        if len(parts) != len(names):
            raise _BadLine("<line>", f"expected {len(names)} '::'-separated fields, got {len(parts)}")
        row = dict(zip(names, parts))
        return build(row) if build else row

    return _text_records(path, encoding, parse)


def movielens_ratings(path: str) -> Iterator[Record]:
    """MovieLens `UserID::MovieID::Rating::Timestamp` (ratings.dat)."""
    return _delimited(path, "utf-8", ("user_id", "item_id", "rating", "timestamp"))


def _movie(row: dict) -> dict:
    genres = [g for g in row["genres"].split("|") if g]
    title = row["title"].strip()
    text = f"{title}. Genres: {', '.join(genres)}" if title else ""
    return {"item_id": row["item_id"], "text": text, "categories": genres}


def movielens_movies(path: str) -> Iterator[Record]:
    """MovieLens `MovieID::Title::Genre|Genre` (movies.dat, latin-1). Text = title + genres."""
    return _delimited(path, "latin-1", ("item_id", "title", "genres"), _movie)


def _csv_rows(path: str) -> Iterator[Record]:
    """RFC 4180 CSV with a header, streamed through the csv module: quoted fields may hold commas,
    quotes and line breaks; CRLF or LF; a UTF-8 byte-order mark is ignored. A record's line is the
    line where it starts; bytes that are not UTF-8 make that record bad."""
    with FileSystems.open(path) as handle:
        lines = (raw.decode("utf-8", errors="surrogateescape") for raw in iter(handle.readline, b""))
        reader = csv.reader(lines)
        header: list[str] = []
        start = 1
        try:
            for values in reader:
                line, start = start, reader.line_num + 1
                if not values or (len(values) == 1 and not values[0].strip()):
                    continue  # a blank line
                raw = ",".join(values)
                if not raw.isascii() and _UNDECODED.search(raw):
                    yield Record(path, line, raw.encode("utf-8", "replace").decode("utf-8"), None, "<bytes>",
                                 "bytes not valid utf-8")
                    continue
                if not header:  # the first record names the columns
                    header = [name.lstrip("\ufeff").strip() for name in values]
                    continue
                if len(values) != len(header):
                    yield Record(path, line, raw, None, "<line>", f"expected {len(header)} fields, got {len(values)}")
                    continue
                row = dict(zip(header, values))
                if "categories" in row:
                    row["categories"] = [c for c in row["categories"].split("|") if c]
                yield Record(path, line, raw, row)
        except csv.Error as error:  # the csv module cannot go on: the rest of the file is this one bad record
            yield Record(path, start, "", None, "<csv>", f"{error}; the file could not be read from this line on")
            return
    if not header:
        yield _empty_file(path)


_UNDECODED = re.compile("[\udc80-\udcff]")


def _jsonl_rows(path: str, convert=None) -> Iterator[Record]:
    def parse(text: str) -> dict:
        try:
            row = json.loads(text)
        except json.JSONDecodeError as error:
            raise _BadLine("<json>", f"malformed JSON: {error.msg}") from None
        if not isinstance(row, dict):
            raise _BadLine("<json>", "a line must be a JSON object")
        return convert(row) if convert else row

    return _text_records(path, "utf-8", parse)


def _parquet_rows(path: str) -> Iterator[Record]:
    import pyarrow.parquet as pq

    number = 0
    with FileSystems.open(path) as handle:
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=8192):
            for row in batch.to_pylist():
                number += 1
                yield Record(path, number, "", row)
    if number == 0:
        yield _empty_file(path)


def generic_rows(path: str) -> Iterator[Record]:
    """CSV (with header), JSON lines (.jsonl/.json[.gz]) or Parquet, chosen by file extension."""
    lowered = path.lower().removesuffix(".gz")
    if lowered.endswith(".parquet"):
        return _parquet_rows(path)
    if lowered.endswith((".jsonl", ".json", ".ndjson")):
        return _jsonl_rows(path)
    if lowered.endswith((".csv", ".txt")):
        return _csv_rows(path)
    raise ValueError(f"{path}: unknown generic format; use .csv, .jsonl or .parquet")


def _amazon_review(row: dict) -> dict:
    return {"user_id": row.get("reviewerID"), "item_id": row.get("asin"), "rating": row.get("overall"),
            "timestamp": row.get("unixReviewTime")}


def _amazon_item(row: dict) -> dict:
    title = str(row.get("title") or "").strip()
    brand = str(row.get("brand") or "").strip()
    categories = [str(c) for c in row.get("category") or [] if str(c).strip()]
    text = title if not brand or brand.lower() in title.lower() else f"{title}. Brand: {brand}"
    return {"item_id": row.get("asin"), "text": text if title else "", "categories": categories}


def amazon_reviews(path: str) -> Iterator[Record]:
    """Amazon Reviews 2018 ratings/reviews JSON lines (gzipped or not): reviewerID, asin, overall,
    unixReviewTime."""
    return _jsonl_rows(path, _amazon_review)


def amazon_meta(path: str) -> Iterator[Record]:
    """Amazon Reviews 2018 `meta_*.json(.gz)`: asin, title (+ brand) as text, category list."""
    return _jsonl_rows(path, _amazon_item)


READERS = {
    "movielens": (movielens_ratings, movielens_movies),
    "generic": (generic_rows, generic_rows),
    "amazon": (amazon_reviews, amazon_meta),
}


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def tfds_records(name: str, data_dir: str = "") -> Iterator[Record]:
    """A prepared TensorFlow Datasets MovieLens data set ('movielens/1m-ratings' for interactions,
    'movielens/1m-movies' for items; any `movielens/*` config), read from `data_dir` (never
    downloaded: prepare it beforehand with `tfds build`). Item text = title + genre names."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir or None)
    genre_names = builder.info.features["movie_genres"].feature.names
    source = f"tfds:{name}"
    number = 0
    for number, example in enumerate(tfds.as_numpy(builder.as_dataset(split="train", shuffle_files=False)), 1):
        if "user_id" in example:
            row = {"user_id": _text(example["user_id"]), "item_id": _text(example["movie_id"]),
                   "rating": float(example["user_rating"]), "timestamp": int(example["timestamp"])}
        else:
            genres = [genre_names[g] for g in example["movie_genres"]]
            title = _text(example["movie_title"]).strip()
            row = {"item_id": _text(example["movie_id"]), "categories": genres,
                   "text": f"{title}. Genres: {', '.join(genres)}" if title else ""}
        yield Record(source, number, "", row)
    if number == 0:
        yield Record(source, 0, "", None, "<file>", "empty input file")
