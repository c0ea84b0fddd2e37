"""Trainer inputs: the item table, the cluster table and streaming tf.data over example shards."""

from __future__ import annotations

import dataclasses
import glob
import os

import numpy as np
import tensorflow as tf

from llm_hardneg.components.common.tables import read_item_table
from llm_hardneg.components.item_clusterer.pipeline import read_cluster_table, read_num_clusters


@dataclasses.dataclass(frozen=True)
class ItemCatalogue:
    """Items in a fixed order with their cluster and training frequency.

    item_ids: [V] str, sorted. cluster_ids: [V] int64 in [0, num_clusters).
    train_counts: [V] int64, training examples per item (for logQ).
    """

    item_ids: np.ndarray
    cluster_ids: np.ndarray
    train_counts: np.ndarray
    num_clusters: int

    @property
    def sampling_probability(self) -> np.ndarray:
        """P(item in a training example), the in-batch logQ probability: [V] float32."""
        return (self.train_counts / max(1, self.train_counts.sum())).astype(np.float32)

    def subset(self, keep: np.ndarray) -> ItemCatalogue:
        """The items where `keep` [V] bool is true, in the same order, with their clusters and counts."""
        return ItemCatalogue(self.item_ids[keep], self.cluster_ids[keep], self.train_counts[keep], self.num_clusters)


def load_catalogue(items_path: str, clusters_path: str) -> ItemCatalogue:
    """Joins the item table with a cluster table; every item must have a cluster."""
    table = read_item_table(items_path, ("item_id", "train_count"))
    item_ids, counts = table["item_id"], table["train_count"].astype(np.int64)
    clusters = read_cluster_table(clusters_path)
    missing = [i for i in item_ids if i not in clusters]
    if missing:
        hint = (" (items without text get no LLM embedding, so no 'llm' cluster: use --trainer.cluster_source "
                "category or behavioural)" if os.path.basename(os.path.normpath(clusters_path)) == "llm" else "")
        raise ValueError(f"{len(missing):,} of {len(item_ids):,} items have no cluster in {clusters_path}, e.g. "
                         f"{missing[:5]}{hint}")
    cluster_ids = np.asarray([clusters[i] for i in item_ids], dtype=np.int64)
    num_clusters = read_num_clusters(clusters_path)
    if cluster_ids.min() < 0 or cluster_ids.max() >= num_clusters:
        raise ValueError(f"cluster ids in {clusters_path} must lie in [0, {num_clusters}), "
                         f"found [{cluster_ids.min()}, {cluster_ids.max()}]")
    return ItemCatalogue(item_ids, cluster_ids, counts, num_clusters)


def example_files(examples_dir: str, split: str) -> list[str]:
    files = sorted(glob.glob(os.path.join(examples_dir, split, "*.tfrecord")))
    if not files:
        raise FileNotFoundError(f"no {split} examples (*.tfrecord) under {os.path.join(examples_dir, split)}")
    return files


def parse_batch(serialized: tf.Tensor, history_length: int) -> dict[str, tf.Tensor]:
    """Serialized tf.Examples [B] -> user_id [B], item_id [B], label [B] float32,
    history_item_ids [B, history_length] string ('' = padding), timestamp [B]."""
    spec = {
        "user_id": tf.io.FixedLenFeature([], tf.string),
        "item_id": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
        "timestamp": tf.io.FixedLenFeature([], tf.int64),
        "history_item_ids": tf.io.RaggedFeature(tf.string),
    }
    parsed = tf.io.parse_example(serialized, spec)
    history = parsed["history_item_ids"][:, :history_length].to_tensor(default_value="")
    history = tf.pad(history, [[0, 0], [0, history_length - tf.shape(history)[1]]])
    return {
        "user_id": parsed["user_id"],
        "item_id": parsed["item_id"],
        "label": tf.cast(parsed["label"], tf.float32),
        "timestamp": parsed["timestamp"],
        "history_item_ids": tf.ensure_shape(history, [None, history_length]),
    }


def parse_sequences(serialized: tf.Tensor, window: int) -> dict[str, tf.Tensor]:
    """Serialized sequence records (example_gen's train_sequences) [S] -> user_id [S], sequence_item_ids
    [S, window] string (time order, '' right padding), sequence_timestamps [S, window] int64 (padding: int64
    max), target_from [S] int64 (the first target's position), sequence_length [S] int64. Chunks longer
    than `window` (example_gen's sequence_length + 1 is the most it writes) keep their last `window` items."""
    spec = {
        "user_id": tf.io.FixedLenFeature([], tf.string),
        "item_ids": tf.io.RaggedFeature(tf.string),
        "timestamps": tf.io.RaggedFeature(tf.int64),
        "target_from": tf.io.FixedLenFeature([], tf.int64),
    }
    parsed = tf.io.parse_example(serialized, spec)
    length = tf.cast(parsed["item_ids"].row_lengths(), tf.int64)
    cut = tf.maximum(length - window, 0)  # items dropped from the front of an over-long chunk

    def dense(values: tf.RaggedTensor, pad) -> tf.Tensor:
        out = values[:, -window:].to_tensor(default_value=pad)
        return tf.ensure_shape(tf.pad(out, [[0, 0], [0, window - tf.shape(out)[1]]], constant_values=pad),
                               [None, window])

    return {
        "user_id": parsed["user_id"],
        "sequence_item_ids": dense(parsed["item_ids"], ""),
        "sequence_timestamps": dense(parsed["timestamps"], tf.int64.max),
        "target_from": tf.maximum(parsed["target_from"] - cut, 1),
        "sequence_length": length - cut,
    }


def pad_sequences(chunks: dict[str, tf.Tensor], size: tf.Tensor) -> dict[str, tf.Tensor]:
    """parse_sequences' output topped up to `size` chunks with empty ones (length 0: no item, no target)."""
    missing = tf.maximum(size - tf.shape(chunks["user_id"], out_type=tf.int64)[0], 0)
    fill = {"user_id": "", "sequence_item_ids": "", "sequence_timestamps": tf.int64.max, "target_from": 1,
            "sequence_length": 0}
    return {k: tf.pad(v, [[0, missing]] + [[0, 0]] * (len(v.shape) - 1), constant_values=fill[k])
            for k, v in chunks.items()}


def make_dataset(files: list[str], batch_size: int, history_length: int, shuffle_buffer: int = 0,
                 seed: int = 0, positives_only: bool = False, reshuffle: bool = True, skip: int = 0,
                 slices: tuple[int, ...] = (0,), num_slices: int = 1, sequences: bool = False) -> tf.data.Dataset:
    """Streams batches from TFRecord shards.

    With shuffle_buffer > 0 the file order and the examples are shuffled with `seed`
    (again at every iteration when `reshuffle`). `skip` leaves out the first batches. With
    num_slices > 1, every batch of batch_size is cut into num_slices consecutive slices (sizes
    differ by at most one) and the dataset yields, batch after batch, the slices numbered in
    `slices`: replica r of a distributed run trains on slice r of every global batch (the
    slicing happens before parsing, so a worker parses only its share). sequences: the files hold
    sequence records (`parse_sequences` with window history_length + 1) instead of examples.
    """
    if num_slices < 1 or not slices or min(slices) < 0 or max(slices) >= num_slices:
        raise ValueError(f"slices must lie in [0, {num_slices}), got {slices}")
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_buffer:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=reshuffle)
    cycle = min(4, len(files))  # tf.data refuses more parallel calls than the cycle (a single shard: 1)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=cycle, num_parallel_calls=min(2, cycle),
                       deterministic=True)
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=reshuffle)
    ds = ds.batch(batch_size).skip(skip)
    if num_slices > 1:
        def cut(serialized: tf.Tensor) -> tf.data.Dataset:
            rows = tf.shape(serialized, out_type=tf.int64)[0]
            size = -(-rows // num_slices)  # the largest slice's rows
            return tf.data.Dataset.from_tensor_slices(tf.constant(slices, tf.int64)).map(
                lambda s: (serialized[s * rows // num_slices:(s + 1) * rows // num_slices], size))
        ds = ds.flat_map(cut)
    else:
        ds = ds.map(lambda serialized: (serialized, tf.shape(serialized, out_type=tf.int64)[0]))

    def parse(serialized: tf.Tensor, size: tf.Tensor) -> dict[str, tf.Tensor]:
        if not sequences:
            return parse_batch(serialized, history_length)
        # Every replica gets the same number of sequence chunks: a smaller slice is topped up with empty
        # chunks (no item, no target). With unequal chunk counts the strategy's all-gather of the sparse
        # embedding gradients failed (TF 2.20: a shape mismatch in CollectiveGatherV2); unequal target
        # counts, and the per-interaction path's unequal slices, train fine.
        return pad_sequences(parse_sequences(serialized, history_length + 1), size)

    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if positives_only:
        ds = ds.map(lambda b: {k: tf.boolean_mask(v, b["label"] > 0) for k, v in b.items()})
    return ds.prefetch(tf.data.AUTOTUNE)


def pair_keys(user_ids: tf.Tensor, item_ids: tf.Tensor) -> tf.Tensor:
    """63-bit hash keys of (user id, item id) string pairs of the same shape [...]: [...] int64."""
    return tf.strings.to_hash_bucket_fast(tf.strings.join([user_ids, item_ids], separator="\x1f"), 2**63 - 1)


def user_positive_keys(files: list[str], batch_size: int = 65536) -> np.ndarray:
    """Sorted distinct pair_keys of every (user, item) training positive (one streaming pass)."""
    parts = [pair_keys(b["user_id"], b["item_id"]).numpy()
             for b in make_dataset(files, batch_size, 1, positives_only=True)]
    return np.unique(np.concatenate(parts)) if parts else np.zeros([0], np.int64)
