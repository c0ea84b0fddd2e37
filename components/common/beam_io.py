"""Beam I/O shared by the data steps.

Beam's text source does not expose line numbers, and its sharded sinks assign elements to
shards at random. The two transforms here exist for what those lack: errors that name
file and line, and byte-identical outputs for identical inputs (deterministic training).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics


def expand_patterns(patterns: Iterable[str]) -> list[str]:
    """Expands file patterns (local or remote) to a sorted list; errors if one matches nothing."""
    paths = []
    for pattern in patterns:
        matched = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
        if not matched:
            raise FileNotFoundError(f"no input file matches {pattern!r}")
        paths.extend(sorted(matched))
    return paths


class ReadNumberedRecords(beam.PTransform):
    """Reads files with `reader(path)` -> iterable of records; each file is read by one worker.

    Parallelism is per file: shard large inputs into many files.
    """

    def __init__(self, paths: list[str], reader: Callable[[str], Iterable]):
        super().__init__()
        self._paths = paths
        self._reader = reader

    def expand(self, pbegin):
        return (
            pbegin
            | "Files" >> beam.Create(self._paths)
            | "Spread" >> beam.Reshuffle()
            | "Read" >> beam.FlatMap(self._reader)
        )


class _CountDoFn(beam.DoFn):
    def __init__(self, namespace: str, name: str, rows: bool):
        self._counter = Metrics.counter(namespace, name)
        self._rows = rows

    def process(self, element):
        self._counter.inc(len(element) if self._rows else 1)
        yield element


def Counted(namespace: str, name: str, rows: bool = False) -> beam.ParDo:  # noqa: N802 (reads like a transform)
    """Passes elements through, counting them in the Beam counter `namespace/name`; rows=True: the elements are
    batches (Arrow tables) and each counts its number of rows."""
    return beam.ParDo(_CountDoFn(namespace, name, rows))


def stable_shard(key: str, num_shards: int) -> int:
    """Shard of a string key, the same on every run and machine."""
    return zlib.crc32(key.encode("utf-8")) % num_shards


def _write_shard(element, prefix: str, num_shards: int) -> str:
    import tensorflow as tf  # workers import TF only when they write

    shard, keyed = element
    path = f"{prefix}-{shard:05d}-of-{num_shards:05d}.tfrecord"
    with tf.io.TFRecordWriter(path) as writer:
        for _, record in sorted(keyed, key=lambda kv: kv[0]):
            writer.write(record)
    return path


class WriteDeterministicTFRecords(beam.PTransform):
    """Writes (sort_key, serialized record) pairs to `num_shards` TFRecord files.

    A record's shard is a hash of its key and records are sorted by key inside a shard, so the
    files are identical across runs. A shard is sorted in memory: size shards accordingly.
    Every shard file is written, empty or not. Output: the PCollection of written paths.
    """

    def __init__(self, prefix: str, num_shards: int):
        super().__init__()
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        self._prefix = prefix
        self._num_shards = num_shards

    def expand(self, records):
        n = self._num_shards
        empty = records.pipeline | "AllShards" >> beam.Create([(s, None) for s in range(n)])
        keyed = records | "ByShard" >> beam.Map(lambda kv: (stable_shard(kv[0], n), kv))
        return (
            (keyed, empty)
            | "Merge" >> beam.Flatten()
            | "Group" >> beam.GroupByKey()
            | "Drop" >> beam.Map(lambda kv: (kv[0], [r for r in kv[1] if r is not None]))
            | "Write" >> beam.Map(_write_shard, prefix=self._prefix, num_shards=n)
        )
