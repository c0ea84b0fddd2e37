"""Beam I/O shared by the data steps.

Beam's text source does not expose line numbers, and its sharded sinks assign elements to
shards at random. The transforms here exist for what those lack: errors that name file and
line, and byte-identical outputs for identical inputs (deterministic training) at any size.
"""

from __future__ import annotations

import heapq
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
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


def _batches(path: str, reader: Callable[[str], Iterable], size: int) -> Iterator[list]:
    batch = []
    for record in reader(path):
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _ReadBatches(beam.DoFn):
    def __init__(self, reader: Callable[[str], Iterable], size: int, parse: beam.DoFn):
        self._reader, self._size, self._parse = reader, size, parse

    def setup(self):
        self._parse.setup()

    def process(self, path: str):
        for batch in _batches(path, self._reader, self._size):
            yield from self._parse.process(batch)


class ReadNumberedRecords(beam.PTransform):
    """Reads files with `reader(path)` -> iterable of records, each file by one worker, and hands lists of up
    to `batch_size` consecutive records of one file to `parse.process(batch)` (a DoFn whose outputs, main and
    tagged `outputs`, are this transform's). Reading and parsing are one step: a list of records is never
    an element, because runners estimate element sizes by encoding them (per record, for a list).

    Parallelism is per file: shard large inputs into many files.
    """

    def __init__(self, paths: list[str], reader: Callable[[str], Iterable], parse: beam.DoFn,
                 outputs: tuple[str, ...] = (), batch_size: int = 65536):
        super().__init__()
        self._paths = paths
        self._reader = reader
        self._parse = parse
        self._outputs = outputs
        self._batch_size = batch_size

    def expand(self, pbegin):
        return (
            pbegin
            | "Files" >> beam.Create(self._paths)
            | "Spread" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(_ReadBatches(self._reader, self._batch_size, self._parse)).with_outputs(
                *self._outputs, main="rows")
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


def stable_shard(key: str | bytes, num_shards: int) -> int:
    """Shard of a key (str: of its UTF-8 bytes), the same on every run and machine."""
    return zlib.crc32(key.encode("utf-8") if isinstance(key, str) else key) % num_shards


_IPC = pa.ipc.IpcWriteOptions(compression="zstd")


def pack_batch(batch: pa.RecordBatch) -> bytes:
    """An Arrow record batch as zstd-compressed Arrow IPC bytes: the compact form for elements that a runner
    holds in memory or ships between workers (a GroupByKey's values). Ids and timestamps take a fraction of
    their in-memory size."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema, options=_IPC) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def unpack_batch(data: bytes) -> pa.RecordBatch:
    return pa.ipc.open_stream(data).read_next_batch()


_PAIR = struct.Struct("<II")


def write_sorted_run(path: str, pairs: list[tuple[bytes, bytes]]) -> str:
    """Writes (sort key, record) pairs sorted (by key, then record) to a run file for MergeSortedRuns."""
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        for key, record in sorted(pairs):
            handle.write(_PAIR.pack(len(key), len(record)) + key + record)
    return path


def _read_run(path: str) -> Iterator[tuple[bytes, bytes]]:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        while header := handle.read(_PAIR.size):
            key_size, record_size = _PAIR.unpack(header)
            pair = handle.read(key_size + record_size)
            yield pair[:key_size], pair[key_size:]


def _merge_shard(element, prefix: str, num_shards: int) -> str:
    import tensorflow as tf  # workers import TF only when they write

    shard, runs = element
    runs = sorted(r for r in runs if r is not None)
    path = f"{prefix}-{shard:05d}-of-{num_shards:05d}.tfrecord"
    with tf.io.TFRecordWriter(path) as writer:
        for _, record in heapq.merge(*(_read_run(run) for run in runs)):
            writer.write(record)
    return path


class MergeSortedRuns(beam.PTransform):
    """(shard, run file) pairs -> `num_shards` TFRecord files `prefix-SSSSS-of-NNNNN.tfrecord`, each the k-way
    merge of its runs (written by write_sorted_run; the caller removes them after the pipeline, so a retried
    merge finds them), so a shard's records are sorted by key and the files are identical across runs.
    Memory: one buffered read per run, never a whole shard.
    Every shard file is written, empty or not. Output: the PCollection of written paths.

    Beam's sinks assign records to shards at random and hold a shard to sort it: this is the external
    merge sort that deterministic output at any size needs.
    """

    def __init__(self, prefix: str, num_shards: int):
        super().__init__()
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        self._prefix = prefix
        self._num_shards = num_shards

    def expand(self, runs):
        n = self._num_shards
        empty = runs.pipeline | "AllShards" >> beam.Create([(s, None) for s in range(n)])
        return (
            (runs, empty)
            | "Merge" >> beam.Flatten()
            | "Group" >> beam.GroupByKey()
            | "Write" >> beam.Map(_merge_shard, prefix=self._prefix, num_shards=n)
        )
