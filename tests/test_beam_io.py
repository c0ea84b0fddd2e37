import glob
import json
import os

import apache_beam as beam
import numpy as np
import pyarrow as pa
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_hardneg.components.common.beam_io import ConcatenateRuns, write_tfrecords
from llm_hardneg.components.example_gen.pipeline import UserRanges, _by_user_range, pack_batch, unpack_batch


@settings(max_examples=20, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=30), st.integers(1, 5))
def test_write_tfrecords_equals_tensorflow_writer(tmp_path_factory, records, chunk):
    directory = tmp_path_factory.mktemp("tfrecords")
    ours, theirs = str(directory / "ours"), str(directory / "theirs")
    write_tfrecords(ours, iter(records), chunk=chunk)
    with tf.io.TFRecordWriter(theirs) as writer:
        for record in records:
            writer.write(record)
    assert open(ours, "rb").read() == open(theirs, "rb").read()
    assert [r.numpy() for r in tf.data.TFRecordDataset(ours)] == records


def test_concatenate_runs_orders_runs_and_writes_empty_shards(tmp_path):
    runs = {}
    for order, shard, records in ((2, 0, [b"e", b"f"]), (0, 0, [b"a"]), (1, 0, [b"b", b"c"]), (0, 2, [b"x"])):
        runs[order, shard] = write_tfrecords(str(tmp_path / f"run-{order}-{shard}"), records)
    prefix = str(tmp_path / "out" / "part")
    os.makedirs(os.path.dirname(prefix))
    with beam.Pipeline(runner="DirectRunner") as p:
        _ = (p | beam.Create([(shard, (order, path)) for (order, shard), path in runs.items()])
             | ConcatenateRuns(prefix, 3))
    paths = sorted(glob.glob(prefix + "*"))
    assert [os.path.basename(p) for p in paths] == [f"part-0000{s}-of-00003.tfrecord" for s in range(3)]
    assert [[r.numpy() for r in tf.data.TFRecordDataset(p)] for p in paths] == [
        [b"a", b"b", b"c", b"e", b"f"], [], [b"x"]]


USER_CHARS = st.sampled_from(["a", "b", "\x1f", "\x05", "\x00", "é", "日", "0", " "])


def user_batch(users: list[str]) -> bytes:
    """A packed batch of interactions' user ids (what UserRanges and _by_user_range read)."""
    return pack_batch(pa.record_batch([pa.array(users, pa.string())], names=["user_id"]))


def user_ranges(batches: list[bytes], shards: int, path: str) -> list[str]:
    """UserRanges' one output, run on the DirectRunner (written to `path` on the way out)."""
    def save(bounds):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(bounds, f)

    with beam.Pipeline(runner="DirectRunner") as p:
        _ = p | beam.Create(batches) | UserRanges(shards) | beam.Map(save)
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(USER_CHARS, min_size=1, max_size=4), min_size=1, max_size=60),
       st.lists(st.text(USER_CHARS, min_size=1, max_size=4), max_size=8))
def test_user_ranges_keep_every_key_of_a_lower_shard_below_a_higher_one(users, bounds):
    """Runs are concatenated in user shard order, so every example key (user \\x1f timestamp \\x1f item) of
    shard k must sort before every key of shard k+1, for any user ids (\\x1f, NUL and prefixes included)
    and any bounds."""
    batch = user_batch(users)
    bounds = sorted({b + "\x1f" for b in bounds})
    shard_of = {}
    for shard, packed in _by_user_range(batch, bounds):
        for user in unpack_batch(packed).column("user_id").to_pylist():
            shard_of[user] = shard
    assert set(shard_of) == set(users) and all(0 <= s <= len(bounds) for s in shard_of.values())
    keys = [(shard_of[u], f"{u}\x1f{t:020d}\x1f{i}".encode()) for u in set(users) for t in (0, 99) for i in ("", "z")]
    assert sorted(keys) == sorted(keys, key=lambda k: k[1])


def test_user_ranges_balance_interactions_across_batches(tmp_path):
    rng = np.random.default_rng(0)
    users = [f"user{u}" for u in rng.zipf(1.5, 200_000) % 50_000]
    batches = [user_batch(users[i:i + 30_000]) for i in range(0, len(users), 30_000)]
    bounds = user_ranges(batches, 8, str(tmp_path / "bounds.json"))
    assert bounds == sorted(set(bounds)) and 2 <= len(bounds) <= 7
    sizes = np.zeros(len(bounds) + 1, int)
    for batch in batches:
        for shard, packed in _by_user_range(batch, bounds):
            sizes[shard] += unpack_batch(packed).num_rows
    assert sizes.sum() == len(users)
    assert sizes.max() < 0.5 * len(users)  # one heavy user can outweigh a range, but no range takes most rows
    assert user_ranges([user_batch(["a"] * 1000)], 8, str(tmp_path / "one.json")) in ([], ["a\x1f"])  # one user
