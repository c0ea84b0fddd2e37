"""Sequence records (example_gen) and sequence training (trainer): chunks, leak-freedom, equivalence."""

import dataclasses
import functools
import glob
import json
import os

import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_hardneg.components.example_gen import ExampleGenConfig, core, run_example_gen
from llm_hardneg.components.trainer import TrainerConfig, run_trainer
from llm_hardneg.components.trainer.data import ItemCatalogue, make_dataset
from llm_hardneg.components.trainer.model import TwoTowerModel
from tests.test_example_gen import interactions_table


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 700), st.integers(1, 60), st.integers(0, 40))
def test_every_positive_but_the_first_is_a_target_once_with_half_a_window_of_context(positives, length, context):
    """context: positives before a time window (context only); 0 and 1 both leave just the user's first out."""
    chunks = core.sequence_chunks(positives, length, context)
    first_target = max(1, context)
    targets = [j for start, end, first in chunks for j in range(first, end)]
    assert sorted(targets) == list(range(first_target, positives))  # each once, the context never
    for start, end, first in chunks:
        assert 0 <= start < first < end <= positives and end - start <= length + 1
        assert first - start >= min(first, length // 2 + 1)  # context of the chunk's first target
    if positives > first_target:
        tokens = sum(end - start for start, end, _ in chunks)
        assert tokens <= (positives - first_target) * (length + 1) / max(1, length - length // 2) + length + 1e-9
    if context <= 1:
        assert chunks == core.sequence_chunks(positives, length)


def _table(rng, users=6, rows=120):
    return pa.table({"user_id": [f"u{u}" for u in rng.integers(0, users, rows)],
                     "item_id": [str(i) for i in rng.integers(1, 30, rows)],
                     "rating": rng.integers(1, 6, rows).astype(float),
                     "timestamp": rng.integers(0, 40, rows),  # many ties
                     "order": np.arange(rows)})


@pytest.mark.parametrize("seed,split,ties", [(0, "leave_last_out", "exclude"), (1, "time", "exclude"),
                                             (2, "leave_last_out", "exclude"), (3, "leave_last_out", "input_order")])
def test_sequence_records_hold_each_users_training_positives_in_order(seed, split, ties):
    rng = np.random.default_rng(seed)
    table = _table(rng)
    cut = core.compute_cut(np.asarray(table.column("timestamp")), 0.8) if split == "time" else None
    examples = core.user_examples(table, cut, 5, 3.0, split, ties)
    records = list(core.serialized_sequences(examples, 6))
    decoded: dict[str, list] = {}
    for _, record, targets, items in records:
        parsed = tf.train.Example.FromString(record)
        assert parsed.SerializeToString(deterministic=True) == record  # the deterministic wire form
        f = parsed.features.feature
        ids = [v.decode() for v in f["item_ids"].bytes_list.value]
        stamps = list(f["timestamps"].int64_list.value)
        assert len(ids) == items == len(stamps) and stamps == sorted(stamps)
        if ties == "input_order":  # each position later than the one before: a target's query is the position before
            assert len(set(stamps)) == len(stamps)
        assert targets == len(ids) - f["target_from"].int64_list.value[0]
        decoded.setdefault(f["user_id"].bytes_list.value[0].decode(), []).append((ids, stamps))
    train = (examples.label == 1) & ~examples.in_eval
    for u, user in enumerate(examples.users):  # the oracle: the user's training positives in row order
        rows = np.flatnonzero(train & (examples.user == u))
        expected = [(examples.items[examples.item[r]], int(examples.order_key[r])) for r in rows]
        chunks = core.sequence_chunks(len(rows), 6)
        got = decoded.get(user, [])
        assert len(got) == len(chunks)
        for (start, end, _), (ids, stamps) in zip(chunks, got):
            assert list(zip(ids, stamps)) == expected[start:end]
    assert sum(r[2] for r in records) == int(train.sum()) - sum(
        1 for u in range(len(examples.users)) if (train & (examples.user == u)).any())


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("uvw"), st.sampled_from("abcdefgh"), st.integers(0, 20)), min_size=1,
                max_size=70), st.lists(st.integers(1, 21), min_size=3, max_size=3, unique=True), st.integers(1, 7))
def test_window_sequences_target_the_windows_positives_after_context_from_before_it(log, bounds, length):
    """Targets: each user's training positives of the window (a user's first positive ever never); context: up
    to length // 2 + 1 positives from before the window, never an evaluation or later row."""
    start, cut, end = sorted(bounds)
    table = interactions_table([(u, i, 5, t) for u, i, t in log])
    examples = core.user_examples(table, cut, 3, 3.0, window_start=start, window_end=end)
    got: dict[str, list] = {}
    for _, record, targets, items in core.serialized_sequences(examples, length):
        f = tf.train.Example.FromString(record).features.feature
        stamps, begin = list(f["timestamps"].int64_list.value), f["target_from"].int64_list.value[0]
        user = f["user_id"].bytes_list.value[0].decode()
        assert items == len(stamps) <= length + 1 and targets == len(stamps) - begin
        assert all(start <= t < cut for t in stamps[begin:])  # targets: the window's training rows
        got.setdefault(user, []).append((stamps, begin))
    positive = examples.label == 1
    for u, user in enumerate(examples.users):
        mine = positive & (examples.user == u)
        window = np.flatnonzero(mine & examples.in_train)
        before = np.flatnonzero(mine & (examples.timestamp < start))
        expected_targets = [int(examples.order_key[r]) for r in window if len(before) or r != window[0]]
        chunks = got.get(user, [])
        assert [t for stamps, b in chunks for t in stamps[b:]] == expected_targets
        if chunks:  # the first chunk's context: the last positives before the window (the first one without them)
            stamps, begin = chunks[0]
            kept = [int(examples.order_key[r]) for r in before[len(before) - min(len(before), length // 2 + 1):]]
            assert stamps[:begin] == (kept if len(before) else [int(examples.order_key[window[0]])])


@functools.cache
def _model(history=4, strategy="in_batch"):
    catalogue = ItemCatalogue(np.array([str(i) for i in range(1, 31)]), np.arange(30) % 3, np.ones(30, np.int64), 3)
    config = TrainerConfig(query_tower="transformer", sequence_training=True, strategy=strategy, embedding_dim=8,
                           history_length=history, transformer_heads=2, transformer_dropout=0.0)
    return TwoTowerModel(config, catalogue, None)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(2, 5), st.integers(1, 4), st.integers(0, 3)), min_size=1, max_size=5),
       st.integers(0, 10**6))
def test_a_target_is_queried_at_the_last_strictly_earlier_position(rows, seed):
    model, window = _model(history=4), 5
    rng = np.random.default_rng(seed)
    ids, stamps, lengths, firsts = [], [], [], []
    for length, first, ties in rows:
        first = min(first, length - 1)
        stamp = np.sort(rng.integers(0, 1 + ties, length))  # ties ~ small ranges
        ids.append([str(i) for i in rng.integers(1, 31, length)] + [""] * (window - length))
        stamps.append(list(stamp) + [np.iinfo(np.int64).max] * (window - length))
        lengths.append(length)
        firsts.append(first)
    batch = {"sequence_item_ids": tf.constant(ids), "sequence_timestamps": tf.constant(stamps, tf.int64),
             "sequence_length": tf.constant(lengths, tf.int64), "target_from": tf.constant(firsts, tf.int64),
             "user_id": tf.constant([f"u{i}" for i in range(len(rows))])}
    flat, (inputs, at), stats = model._sequence_targets(batch)
    expected_targets, expected_at = [], []
    for s, (length, first) in enumerate(zip(lengths, firsts)):
        for j in range(first, length):
            earlier = [i for i in range(j) if stamps[s][i] < stamps[s][j]]
            if earlier:  # the query sees positions <= max(earlier): every one strictly earlier in time
                expected_targets.append(ids[s][j])
                expected_at.append((s, (window - length) + max(earlier)))
    assert [t.decode() for t in flat["item_id"].numpy()] == expected_targets
    assert [tuple(a) for a in at.numpy().tolist()] == expected_at
    inputs = inputs.numpy()
    for s, length in enumerate(lengths):  # left-padded inputs: the chunk's items but the last
        index = model.items.lookup(tf.constant(ids[s][:length - 1])).numpy()
        np.testing.assert_array_equal(inputs[s], np.r_[np.zeros(4 - (length - 1), np.int64), index])
    total = sum(length - first for length, first in zip(lengths, firsts))
    assert float(stats["targets_skipped_rate"]) == pytest.approx((total - len(expected_targets)) / total)


def test_the_last_target_of_a_chunk_gets_the_query_of_its_history():
    model = _model(history=4)
    ids = [["3", "7", "9", "2", "5"], ["4", "8", "", "", ""], ["6", "1", "11", "", ""]]
    stamps = [[1, 2, 3, 4, 5], [1, 2, 9, 9, 9], [1, 2, 3, 9, 9]]
    lengths = [5, 2, 3]
    batch = {"sequence_item_ids": tf.constant(ids), "sequence_timestamps": tf.constant(stamps, tf.int64),
             "sequence_length": tf.constant(lengths, tf.int64), "target_from": tf.constant([1, 1, 1], tf.int64),
             "user_id": tf.constant(["a", "b", "c"])}
    flat, sequence, _ = model._sequence_targets(batch)
    queries = model._query(flat, sequence).numpy()
    last = np.cumsum([length - 1 for length in lengths]) - 1  # the targets of each chunk, in order
    history = tf.constant([["2", "9", "7", "3"], ["4", "", "", ""], ["1", "6", "", ""]])  # most recent first
    served = model.query_tower(tf.constant(["a", "b", "c"]), history).numpy()
    np.testing.assert_allclose(queries[last], served, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def sequence_examples(tmp_path_factory, movielens_dir):
    out = str(tmp_path_factory.mktemp("sequence_examples"))
    run_example_gen(ExampleGenConfig.movielens(movielens_dir, history_length=4, sequence_length=4, num_train_shards=2,
                                               num_eval_shards=1, split="leave_last_out"), out)
    return out


def test_sequences_leave_out_every_evaluation_item_and_count_what_they_hold(sequence_examples):
    summary = json.load(open(os.path.join(sequence_examples, "summary.json")))
    files = sorted(glob.glob(os.path.join(sequence_examples, "train_sequences", "*.tfrecord")))
    chunks = [b for b in make_dataset(files, 1000, 4, sequences=True)]
    lengths = np.concatenate([b["sequence_length"].numpy() for b in chunks])
    firsts = np.concatenate([b["target_from"].numpy() for b in chunks])
    assert len(lengths) == summary["train_sequences"] and lengths.sum() == summary["train_sequence_items"]
    assert (lengths - firsts).sum() == summary["train_sequence_targets"]
    users = {u for b in chunks for u in b["user_id"].numpy()}
    assert summary["train_sequence_targets"] == summary["train_positives"] - len(users)
    evals = {(u, i, t) for b in make_dataset(sorted(glob.glob(os.path.join(sequence_examples, "eval", "*"))), 1000, 1)
             for u, i, t in zip(b["user_id"].numpy(), b["item_id"].numpy(), b["timestamp"].numpy())}
    trained = {(u, i, t) for b in chunks for u, row, stamps in zip(b["user_id"].numpy(),
               b["sequence_item_ids"].numpy(), b["sequence_timestamps"].numpy()) for i, t in zip(row, stamps) if i}
    assert not trained & evals


def test_sequence_training_trains_and_serves(sequence_examples, clusters_dir, tmp_path):
    config = TrainerConfig(query_tower="transformer", sequence_training=True, strategy="cluster_oob", history_length=4,
                           sequence_batch_size=8, embedding_dim=8, epochs=1, num_negatives=4, shuffle_buffer=100,
                           negative_sharing="shared", transformer_heads=2, mask_user_positives=True,
                           mask_same_user_in_batch=True)
    summary = run_trainer(config, sequence_examples, clusters_dir, str(tmp_path))
    examples = json.load(open(os.path.join(sequence_examples, "summary.json")))
    assert summary["train_examples_per_epoch"] == examples["train_sequences"]
    assert summary["steps_per_epoch"] == -(-examples["train_sequences"] // 8)
    final = summary["final_metrics"]
    assert np.isfinite(final["loss"]) and 0.0 <= final["targets_skipped_rate"] < 0.5
    assert final["targets_per_step"] > 8  # a chunk holds several targets
    assert 0.0 < final["negative_user_positive_rate"] < 1.0  # each target's user's positives masked in the draws
    # a chunk's other targets are its user's: at least (targets a chunk - 1) / (targets a step - 1) of the columns
    assert 1.0 / (final["targets_per_step"] - 1) < final["in_batch_same_user_rate"] < 1.0
    served = tf.saved_model.load(str(tmp_path / "query_model"))
    out = served(tf.constant(["1"]), tf.constant([["3", "4"]]))["embedding"].numpy()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_a_window_of_sequence_records_warm_starts_sequence_training(movielens_dir, clusters_dir, tmp_path):
    """Continuous training on the sequence path: window 1's records target its own positives only (context from
    before it, never an evaluation row), and a sequence model warm-started from window 0's trains on them."""
    stamps = [int(line.split("::")[3]) for line in open(os.path.join(movielens_dir, "ratings.dat"))]
    bounds = core.window_bounds(np.array(stamps), 2, 0.6)
    summaries, outs = [], []
    for t in range(2):
        out = str(tmp_path / f"examples{t}")
        summaries.append(run_example_gen(ExampleGenConfig.movielens(
            movielens_dir, history_length=4, sequence_length=4, window_start=bounds[t - 1] if t else 0,
            cut_timestamp=bounds[t], window_end=bounds[t + 1]), out))
        outs.append(out)
    window = summaries[1]
    chunks = list(make_dataset(sorted(glob.glob(os.path.join(outs[1], "train_sequences", "*"))), 1000, 4,
                               sequences=True))
    lengths = np.concatenate([b["sequence_length"].numpy() for b in chunks])
    firsts = np.concatenate([b["target_from"].numpy() for b in chunks])
    target_stamps = np.concatenate([b["sequence_timestamps"].numpy()[j, firsts[j]:lengths[j]]
                                    for b in chunks for j in range(len(b["user_id"]))])
    assert (lengths - firsts).sum() == window["train_sequence_targets"] <= window["train_positives"]
    assert window["train_sequence_targets"] > 0.8 * window["train_positives"]  # most users rated before the window
    assert ((target_stamps >= bounds[0]) & (target_stamps < bounds[1])).all()
    context = np.concatenate([b["sequence_timestamps"].numpy()[j, :firsts[j]] for b in chunks
                              for j in range(len(b["user_id"]))])
    assert (context < bounds[1]).all() and (context < bounds[0]).mean() > 0.5  # context from before the window
    config = TrainerConfig(query_tower="transformer", sequence_training=True, history_length=4, sequence_batch_size=8,
                           embedding_dim=8, epochs=1, transformer_heads=2, shuffle_buffer=100)
    run_trainer(config, outs[0], clusters_dir, str(tmp_path / "model0"))
    warm = run_trainer(dataclasses.replace(config, warm_start_from=str(tmp_path / "model0")), outs[1], clusters_dir,
                       str(tmp_path / "model1"))
    assert warm["warm_start"] and warm["train_examples_per_epoch"] == window["train_sequences"]
    assert np.isfinite(warm["final_metrics"]["loss"])


def test_sequence_training_names_what_it_needs(examples_dir, sequence_examples, clusters_dir, tmp_path):
    with pytest.raises(ValueError, match="needs query_tower 'transformer', got 'pooled'"):
        TrainerConfig(sequence_training=True)
    with pytest.raises(ValueError, match="does not support mask_history_negatives"):
        TrainerConfig(query_tower="transformer", sequence_training=True, mask_history_negatives=True)
    config = TrainerConfig(query_tower="transformer", sequence_training=True, history_length=4, embedding_dim=8)
    with pytest.raises(ValueError, match=r"has none \(set --example_gen.sequence_length\)"):
        run_trainer(config, examples_dir, clusters_dir, str(tmp_path / "a"))
    with pytest.raises(ValueError, match="at most history_length 3 items of history: .* has sequence_length 4"):
        run_trainer(TrainerConfig(**{**config.__dict__, "history_length": 3}), sequence_examples, clusters_dir,
                    str(tmp_path / "b"))
    from llm_hardneg.tfx_pipeline.config import parse

    with pytest.raises(ValueError, match="set --example_gen.sequence_length 200 .got 0."):
        parse(["--trainer.query_tower", "transformer", "--trainer.sequence_training", "true",
               "--trainer.history_length", "200", "--example_gen.history_length", "200"])
    with pytest.raises(ValueError, match="reads more history than the examples hold .example_gen.history_length 20."):
        parse(["--trainer.history_length", "50"])
    both = parse(["--trainer.query_tower", "transformer", "--trainer.sequence_training", "true",
                  "--trainer.history_length", "200", "--example_gen.history_length", "200",
                  "--example_gen.sequence_length", "200"])
    assert both.trainer.sequence_training and both.example_gen.sequence_length == 200


MIRRORED_SEQUENCES = """
import json, os, sys, numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import tf_keras
from llm_hardneg.components.trainer import TrainerConfig
from llm_hardneg.components.trainer.data import example_files, load_catalogue, make_dataset
from llm_hardneg.components.trainer.model import TwoTowerModel
from tests.helpers import one_step_on_one_and_two_replicas
examples, clusters = sys.argv[1:3]
files = example_files(examples, "train_sequences")
catalogue = load_catalogue(os.path.join(examples, "items"), os.path.join(clusters, "llm"))
base = dict(strategy="in_batch", query_tower="transformer", sequence_training=True, sequence_batch_size=9,
            history_length=4, embedding_dim=8, transformer_dropout=0.0, shuffle_buffer=0)

def build(config, strategy):
    with strategy.scope():
        model = TwoTowerModel(config, catalogue, None)
        model.compile(optimizer=tf_keras.optimizers.SGD(0.05))
        model.query_tower(tf.constant(["1"]), tf.constant([["3", "", "", ""]]))  # the variables, in the scope
        model.candidate_tower(tf.constant([2], tf.int64))
    return model

single = build(TrainerConfig(**base), tf.distribute.get_strategy())
report = one_step_on_one_and_two_replicas(build, base, single, make_dataset(files, 9, 4, sequences=True), files)
print(json.dumps(report))
"""
MIRRORED_SEQUENCE_RUN = """
import json, sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from llm_hardneg.components.trainer import TrainerConfig, run_trainer
examples, clusters, out = sys.argv[1:4]
config = TrainerConfig(strategy="cluster_oob", query_tower="transformer", sequence_training=True, sequence_batch_size=9,
                       history_length=4, embedding_dim=8, shuffle_buffer=0, distribute="mirrored", epochs=1,
                       num_negatives=4)
summary = run_trainer(config, examples, clusters, out)
print(json.dumps({"replicas": summary["replicas"], "loss": summary["final_metrics"]["loss"],
                  "targets_per_step": summary["final_metrics"]["targets_per_step"]}))
"""


def test_sequence_training_under_two_replicas_trains_as_one_on_the_global_batch(sequence_examples, clusters_dir,
                                                                                tmp_path):
    """Two replicas, each on half of a batch of 9 sequence chunks (their target counts differ), with global
    in-batch negatives: the loss and one SGD step equal one replica's on all 9 chunks; with per-replica
    negatives they differ. A mirrored cluster_oob run trains end to end."""
    import subprocess
    import sys

    outputs = []
    for script in (MIRRORED_SEQUENCES, MIRRORED_SEQUENCE_RUN):  # one strategy per process
        result = subprocess.run([sys.executable, "-c", script, sequence_examples, clusters_dir, str(tmp_path)],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    report = {**outputs[0], "run": outputs[1]}
    assert report["moved"] > 0.01
    np.testing.assert_allclose(report["True"]["loss"], report["single"], rtol=1e-5)
    assert report["True"]["weight_difference"] < 1e-5
    assert abs(report["False"]["loss"] - report["single"]) > 1e-3
    assert report["False"]["weight_difference"] > 0.01 * report["moved"]
    assert report["run"]["replicas"] == 2 and np.isfinite(report["run"]["loss"])
    assert report["run"]["targets_per_step"] > 9  # targets of the global batch (figures are global)


def test_replica_slices_of_a_sequence_batch_hold_equal_chunk_counts(sequence_examples):
    """A global batch of 9 chunks over 2 replicas: slices of 4 + 1 empty chunk and 5, the empty one holding no
    item and no target; together the slices hold exactly the batch's chunks, in order."""
    files = sorted(glob.glob(os.path.join(sequence_examples, "train_sequences", "*.tfrecord")))
    whole = next(iter(make_dataset(files, 9, 4, sequences=True)))
    parts = [next(iter(make_dataset(files, 9, 4, sequences=True, slices=(r,), num_slices=2))) for r in (0, 1)]
    assert [len(p["user_id"]) for p in parts] == [5, 5]
    empty = {k: v.numpy()[-1] for k, v in parts[0].items()}
    assert empty["sequence_length"] == 0 and empty["user_id"] == b"" and (empty["sequence_item_ids"] == b"").all()
    assert (parts[1]["sequence_length"].numpy() > 0).all()
    for key in whole:
        np.testing.assert_array_equal(np.concatenate([parts[0][key].numpy()[:4], parts[1][key].numpy()]),
                                      whole[key].numpy())


def test_sequence_training_on_two_workers_trains_what_two_local_replicas_train(sequence_examples, clusters_dir,
                                                                               tmp_path):
    """multi_worker (two processes, TF_CONFIG) with sequence training: identical pool copies, and the model of
    one process with two replicas (the same global batches of 9 chunks, the same slices)."""
    from tests.test_multi_worker import two_workers_and_two_replicas

    two_workers_and_two_replicas(sequence_examples, clusters_dir, tmp_path, strategy="cluster_oob",
                                 query_tower="transformer", sequence_training=True, sequence_batch_size=9,
                                 history_length=4, transformer_dropout=0.0, epochs=1)
