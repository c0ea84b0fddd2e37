"""Beam I/O shared by the data steps.

Beam's text source does not expose line numbers, and its sharded sinks assign elements to
shards at random. The transforms here exist for what those lack: errors that name file and
line, and byte-identical outputs for identical inputs (deterministic training) at any size.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator

import apache_beam as beam
import google_crc32c
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


# TFRecord framing (tensorflow/core/lib/io/record_writer.cc): uint64 length, masked crc32c of the length,
# the data, masked crc32c of the data. Written here with google-crc32c so that the data steps' workers never
# import TensorFlow (about 480 MB of memory and 4 s per process); Beam's WriteToTFRecord assigns records to
# shards at random. tests/test_beam_io.py checks the bytes against tf.io.TFRecordWriter's.
_LENGTH, _CRC = struct.Struct("<Q"), struct.Struct("<I")


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


_HEADERS: dict[int, bytes] = {}  # record length -> its 12-byte header (records of a data set share few lengths)


def write_tfrecords(path: str, records: Iterable[bytes], chunk: int = 4096) -> str:
    """Writes `records`, in order, as a TFRecord file (uncompressed) at `path` (local or remote)."""
    crc32c, pack, headers = google_crc32c.value, _CRC.pack, _HEADERS
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        parts: list[bytes] = []
        for record in records:
            size = len(record)
            header = headers.get(size)
            if header is None:
                length = _LENGTH.pack(size)
                header = length + _CRC.pack(_masked_crc(length))
                if size < 1 << 16:
                    headers[size] = header
            crc = crc32c(record)
            parts += (header, record, pack((((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF))
            if len(parts) >= 3 * chunk:
                handle.write(b"".join(parts))
                parts.clear()
        handle.write(b"".join(parts))
    return path


def _concatenate_shard(element, prefix: str, num_shards: int) -> str:
    shard, runs = element
    path = f"{prefix}-{shard:05d}-of-{num_shards:05d}.tfrecord"
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as out:
        for _, run in sorted(r for r in runs if r is not None):
            with FileSystems.open(run, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                shutil.copyfileobj(handle, out, 1 << 20)
    return path


class ConcatenateRuns(beam.PTransform):
    """(shard, (order, run file)) pairs -> `num_shards` TFRecord files `prefix-SSSSS-of-NNNNN.tfrecord`, each
    the concatenation of its runs (TFRecord files written by write_tfrecords) in ascending `order`. When every
    record of run k sorts before every record of run k+1 (runs cut from ranges of the sort key), the shard
    is sorted and identical across runs, without a merge: one pass of file copies. The caller removes the
    runs after the pipeline, so a retried concatenation finds them. Every shard file is written, empty or not.
    Output: the PCollection of written paths.

    Beam's sinks assign records to shards at random and hold a shard to sort it: deterministic output at
    any size needs this.
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
            | "Runs" >> beam.Flatten()
            | "Group" >> beam.GroupByKey()
            | "Write" >> beam.Map(_concatenate_shard, prefix=self._prefix, num_shards=n)
        )
