"""Reading the item table (items/*.parquet) that example_gen writes, for the TF-side steps, and looking ids up
in sorted id arrays."""

from __future__ import annotations

import glob
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def parquet_files(path: str) -> list[str]:
    """The parquet files of a table directory (or the file itself)."""
    files = sorted(glob.glob(os.path.join(path, "*.parquet"))) if os.path.isdir(path) else [path]
    if not files or not all(os.path.exists(f) for f in files):
        raise FileNotFoundError(f"no parquet table at {path}")
    return files


def read_item_table(items_path: str, columns=("item_id", "train_count")) -> dict[str, np.ndarray]:
    """The item table sorted by item id, as numpy columns; duplicate ids are an error."""
    table = pa.concat_tables([pq.read_table(f, columns=list(columns)) for f in parquet_files(items_path)])
    ids = np.asarray(table.column("item_id").to_pylist(), dtype=object)
    if len(set(ids)) != len(ids):
        raise ValueError(f"item table {items_path} has duplicate item ids")
    order = np.argsort(ids, kind="stable")
    return {c: (ids if c == "item_id" else np.asarray(table.column(c).to_pylist()))[order] for c in columns}


def sorted_lookup(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of `keys` its position in `sorted_keys` (clipped) and whether it is there: O(B log U)."""
    at = np.minimum(np.searchsorted(sorted_keys, keys), max(0, len(sorted_keys) - 1))
    return at, (sorted_keys[at] == keys) if len(sorted_keys) else np.zeros(len(keys), bool)


def is_in(ids, values) -> np.ndarray:
    """[N] bool: which of the string `ids` are among `values`. Both become fixed-width unicode arrays, so
    np.isin sorts (O((N + M) log(N + M))); with an object array on either side it compares pairs, O(N x M):
    ten minutes for a 296k-item catalogue."""
    return np.isin(np.asarray(ids, dtype=str), np.asarray(values, dtype=str))
