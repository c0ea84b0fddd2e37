import json
import os

import numpy as np
import pytest
import tensorflow as tf

from components.trainer import TrainerConfig, run_trainer
from components.trainer.data import example_files, load_catalogue, make_dataset


def tiny_config(**overrides):
    values = dict(batch_size=32, epochs=2, embedding_dim=8, num_negatives=4, random_ratio=1, cluster_ratio=3,
                  log_every_steps=5, shuffle_buffer=1000, history_length=5, seed=3)
    values.update(overrides)
    return TrainerConfig(**values)


def test_negative_split_and_slots():
    assert TrainerConfig().negative_split() == (1, 15)
    assert TrainerConfig(strategy="oob").negative_split() == (16, 0)
    assert TrainerConfig(strategy="in_batch").negative_split() == (0, 0)
    assert TrainerConfig(num_negatives=32, random_ratio=1, cluster_ratio=31).negative_split() == (1, 31)
    assert TrainerConfig().slots_for(3883, 62) == 128
    with pytest.raises(ValueError, match="strategy must be one of"):
        TrainerConfig(strategy="hard")


def test_dataset_pads_history_and_keeps_every_example(examples_dir):
    files = example_files(examples_dir, "train")
    batches = list(make_dataset(files, 50, 5))
    summary = json.load(open(os.path.join(examples_dir, "summary.json")))
    assert sum(int(b["label"].shape[0]) for b in batches) == summary["train_examples"]
    assert all(b["history_item_ids"].shape[1] == 5 for b in batches)


def test_catalogue_joins_clusters(examples_dir, clusters_dir):
    catalogue = load_catalogue(os.path.join(examples_dir, "items"), os.path.join(clusters_dir, "llm"))
    assert list(catalogue.item_ids) == sorted(str(i) for i in range(1, 41))
    assert catalogue.num_clusters == 4 and catalogue.cluster_ids.max() < 4
    np.testing.assert_allclose(catalogue.sampling_probability.sum(), 1.0, rtol=1e-6)


@pytest.mark.parametrize("strategy", ["in_batch", "oob", "cluster_oob"])
def test_train_and_export(strategy, examples_dir, clusters_dir, tmp_path):
    summary = run_trainer(tiny_config(strategy=strategy), examples_dir, clusters_dir, str(tmp_path))
    assert np.isfinite(summary["final_metrics"]["loss"])
    if strategy == "in_batch":
        assert summary["pool"] is None
    else:
        assert summary["pool"]["fill_rate"] > 0 and summary["pool"]["clusters"] == 4
    query = tf.saved_model.load(str(tmp_path / "query_model"))
    candidate = tf.saved_model.load(str(tmp_path / "candidate_model"))
    q = query(tf.constant(["1", "unknown-user"]), tf.constant([["3", ""], ["no-such-item", ""]]))["embedding"]
    c = candidate(tf.constant(["1", "2", "no-such-item"]))["embedding"]
    assert q.shape == (2, 8) and c.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(np.concatenate([q, c]), axis=1), 1.0, rtol=1e-5)
    assert os.listdir(tmp_path / "logs")


def test_same_seed_same_model_and_resume_equals_uninterrupted(examples_dir, clusters_dir, tmp_path):
    def embeddings(directory):
        candidate = tf.saved_model.load(os.path.join(directory, "candidate_model"))
        return candidate(tf.constant([str(i) for i in range(1, 41)]))["embedding"].numpy()

    full = str(tmp_path / "full")
    run_trainer(tiny_config(epochs=2), examples_dir, clusters_dir, full)
    again = str(tmp_path / "again")
    run_trainer(tiny_config(epochs=2), examples_dir, clusters_dir, again)
    np.testing.assert_array_equal(embeddings(full), embeddings(again))

    resumed = str(tmp_path / "resumed")
    run_trainer(tiny_config(epochs=1), examples_dir, clusters_dir, resumed)  # "killed" after epoch 1
    run_trainer(tiny_config(epochs=2), examples_dir, clusters_dir, resumed)  # restarts at epoch 2
    np.testing.assert_allclose(embeddings(resumed), embeddings(full), atol=1e-6)
