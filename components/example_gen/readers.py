"""Readers: a file -> stream of (source, line, raw row dict), one per supported format.

Every reader is a generator (streams; never holds a file in memory). Rows are validated
against schemas/ by the pipeline, so readers only split fields.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

from components.common.beam_io import read_numbered_lines
from components.common.schema import SchemaViolation

Row = tuple[str, int, dict]


def _split_ml(path: str, number: int, line: str, names: tuple[str, ...]) -> dict:
    parts = line.split("::")
    if len(parts) != len(names):
        raise SchemaViolation(path, number, names[0], f"expected {len(names)} '::'-separated fields, got {len(parts)}")
    return dict(zip(names, parts))


def movielens_ratings(path: str) -> Iterator[Row]:
    """MovieLens `UserID::MovieID::Rating::Timestamp` (ratings.dat)."""
    for _, number, line in read_numbered_lines(path, "utf-8"):
        if line.strip():
            yield path, number, _split_ml(path, number, line, ("user_id", "item_id", "rating", "timestamp"))


def movielens_movies(path: str) -> Iterator[Row]:
    """MovieLens `MovieID::Title::Genre|Genre` (movies.dat, latin-1). Text = title + genres."""
    for _, number, line in read_numbered_lines(path, "latin-1"):
        if not line.strip():
            continue
        row = _split_ml(path, number, line, ("item_id", "title", "genres"))
        genres = [g for g in row["genres"].split("|") if g]
        text = f"{row['title']}. Genres: {', '.join(genres)}" if row["title"].strip() else ""
        yield path, number, {"item_id": row["item_id"], "text": text, "categories": genres}


def _csv_rows(path: str) -> Iterator[Row]:
    lines = read_numbered_lines(path, "utf-8")
    try:
        _, _, header_line = next(lines)
    except StopIteration:
        return
    header = next(csv.reader([header_line]))
    for path, number, line in lines:
        if not line.strip():
            continue
        values = next(csv.reader(io.StringIO(line)))
        if len(values) != len(header):
            raise SchemaViolation(path, number, header[0], f"expected {len(header)} fields, got {len(values)}")
        row = dict(zip(header, values))
        if "categories" in row:
            row["categories"] = [c for c in row["categories"].split("|") if c]
        yield path, number, row


def _jsonl_rows(path: str) -> Iterator[Row]:
    for _, number, line in read_numbered_lines(path, "utf-8"):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise SchemaViolation(path, number, "<json>", f"malformed JSON: {error.msg}") from None
        if not isinstance(row, dict):
            raise SchemaViolation(path, number, "<json>", "a line must be a JSON object")
        yield path, number, row


def _parquet_rows(path: str) -> Iterator[Row]:
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as handle:
        number = 0
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=8192):
            for row in batch.to_pylist():
                number += 1
                yield path, number, row


def generic_rows(path: str) -> Iterator[Row]:
    """CSV (with header), JSON lines (.jsonl/.json) or Parquet, chosen by file extension."""
    lowered = path.lower()
    if lowered.endswith(".parquet"):
        return _parquet_rows(path)
    if lowered.endswith((".jsonl", ".json", ".ndjson")):
        return _jsonl_rows(path)
    if lowered.endswith((".csv", ".tsv", ".txt")):
        return _csv_rows(path)
    raise ValueError(f"{path}: unknown generic format; use .csv, .jsonl or .parquet")
