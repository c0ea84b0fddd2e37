"""run_evaluator: HitRate@K of a trained model on every positive evaluation example."""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

from llm_hardneg.components.common.fileio import read_lines
from llm_hardneg.components.common.models import embed_items, load_towers
from llm_hardneg.components.common.progress import Progress
from llm_hardneg.components.common.tables import read_item_table, sorted_lookup
from llm_hardneg.components.evaluator.core import (
    NO_EXCLUSION,
    EvaluatorConfig,
    QueryBatch,
    SeenItems,
    evaluate,
    fingerprints,
    popularity_figures,
)
from llm_hardneg.components.trainer.data import example_files, make_dataset


def seen_items(examples_dir: str, index_of, users: np.ndarray | None = None,
               batch_size: int = 65536) -> SeenItems:
    """Every user's training items (any label), from one streaming pass over the training examples.
    index_of: item ids [B] tf.string -> [B] catalogue index (negative: not in the catalogue, left out);
    users: keep only these users' items (sorted `fingerprints`), e.g. a validation fold's; None = all."""
    keys, items = [np.zeros([0], np.int64)], [np.zeros([0], np.int64)]
    progress = Progress("evaluator", "training interactions read for exclude_seen", every_s=15)
    for batch in make_dataset(example_files(examples_dir, "train"), batch_size, 1):
        key, ids = fingerprints(batch["user_id"].numpy()), batch["item_id"]
        if users is not None:
            mine = sorted_lookup(users, key)[1]
            key, ids = key[mine], tf.boolean_mask(ids, mine)
        keys.append(key)
        items.append(np.asarray(index_of(ids)))
        progress.update(len(batch["item_id"]))
    progress.report(final=True)
    return SeenItems(np.concatenate(keys), np.concatenate(items))


def run_evaluator(config: EvaluatorConfig, model_dir: str, examples_dir: str, output_dir: str,
                  history_length: int = 20) -> dict:
    """Writes metrics.json (hit rates, popularity figures) to output_dir and returns it."""
    query_model, candidate_model = load_towers(model_dir)
    table = read_item_table(os.path.join(examples_dir, "items"))
    train_counts = table["train_count"].astype(np.int64)
    item_ids = table["item_id"]
    candidates = embed_items(candidate_model, item_ids)
    index_of = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(item_ids.tolist()), tf.range(len(item_ids), dtype=tf.int64)),
        default_value=-1)
    dataset = make_dataset(example_files(examples_dir, "eval"), config.batch_size, history_length,
                           positives_only=True)
    seen = seen_items(examples_dir, lambda ids: index_of.lookup(ids).numpy()) if config.exclude_seen else None
    users_path = os.path.join(examples_dir, "users.txt")  # the training users (example_gen writes them)
    training_users = np.sort(fingerprints(np.asarray(read_lines(users_path), dtype=object))) \
        if os.path.exists(users_path) else None
    progress = Progress("evaluator", "queries", every_s=15)
    scored_at_once = config.query_batch(len(item_ids))

    def batches():
        """Per read batch: the examples' distinct (user, history) queries, embedded once, in chunks that
        the memory budget allows, each with the targets that share them."""
        for batch in dataset:
            user_keys = fingerprints(batch["user_id"].numpy())  # hashed once: the query key and the seen items
            history = batch["history_item_ids"]  # padding '' and an item outside the catalogue keyed apart
            history_keys = tf.where(tf.equal(history, ""), tf.constant(-2, tf.int64), index_of.lookup(history))
            keys = np.concatenate([user_keys[:, None], history_keys.numpy()], axis=1)
            _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
            inverse = inverse.reshape(-1)
            queries = query_model(tf.gather(batch["user_id"], first), tf.gather(history, first))["embedding"].numpy()
            targets = index_of.lookup(batch["item_id"]).numpy()
            for start in range(0, len(first), scored_at_once):
                stop = min(len(first), start + scored_at_once)
                mine = (inverse >= start) & (inverse < stop)
                excluded = seen.pairs_of_keys(user_keys[first[start:stop]]) if seen is not None else NO_EXCLUSION
                new = None if training_users is None else ~sorted_lookup(training_users, user_keys[mine])[1]
                yield QueryBatch(queries[start:stop], targets[mine], excluded, inverse[mine] - start, new)
            progress.update(len(targets))

    result = evaluate(batches(), candidates, config, train_counts)
    progress.report(final=True)
    metrics = dict(result["metrics"])
    metrics["popularity"] = popularity_figures(result["appearances"], train_counts, result["k"], config)
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
    hr = ", ".join(f"HR@{k} {metrics[f'hit_rate@{k}']:.4f}" for k in config.ks)
    if config.exclude_seen:
        hr += (f" (each user's training items excluded from the ranking; {metrics['targets_seen_in_training']} "
               "targets were training items of their user: misses)")
    summary_path = os.path.join(examples_dir, "summary.json")
    negatives = ""
    if os.path.exists(summary_path):
        with open(summary_path, encoding="utf-8") as f:
            counts = json.load(f)
        unscored = counts["eval_examples"] - counts["eval_positives"]
        negatives = f" ({unscored:,} negative-label ones not scored, as the protocol says)"
    print(f"[evaluator] {metrics['num_queries']:,} positive eval examples in{negatives} -> {hr} over "
          f"{len(item_ids):,} items; {metrics['targets_not_in_corpus']} targets not in the corpus (counted as "
          f"misses); dropped 0", flush=True)
    k = max(config.ks)
    groups = "; ".join(f"{name}: {g['queries']:,} queries, HR@{k} {g[f'hit_rate@{k}']:.4f}"
                       for name, g in metrics["by_target_frequency"].items())
    print(f"[evaluator] by the target's training examples: {groups}", flush=True)
    if "by_user" in metrics:
        users = "; ".join(f"{name}: {g['queries']:,} queries, HR@{k} {g[f'hit_rate@{k}']:.4f}"
                          for name, g in metrics["by_user"].items())
        print(f"[evaluator] by user (returning: with training examples; new: without): {users}", flush=True)
    return metrics
