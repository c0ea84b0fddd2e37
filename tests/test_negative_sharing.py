"""Shared pool draws, deduplicated candidate embedding and the full-softmax strategy of the trainer."""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from llm_hardneg.components.trainer import TrainerConfig, run_trainer
from llm_hardneg.components.trainer.data import example_files, load_catalogue, make_dataset
from llm_hardneg.components.trainer.model import TwoTowerModel
from llm_hardneg.components.trainer.optimizer import make_optimizer
from tests.test_pool import numpy_allocation
from tests.test_trainer import tiny_config


def _model(config, examples_dir, clusters_dir):
    tf_keras.utils.set_random_seed(config.seed)
    catalogue = load_catalogue(os.path.join(examples_dir, "items"), os.path.join(clusters_dir, "llm"))
    model = TwoTowerModel(config, catalogue, ["1", "2", "3"])
    model.compile(optimizer=make_optimizer(config.optimizer, config.learning_rate))
    model.preload_pool(catalogue)
    return model, catalogue


def _pool_oracle(model, catalogue):
    """in_pool [V] and filled slots per cluster, read off the model's pool by item."""
    prob = model.items.probability_of_index.numpy()
    cluster_of = model.items.cluster_of_index.numpy()
    in_pool = np.zeros(len(prob), bool)
    in_pool[2:] = model.pool.contains(tf.range(2, len(prob), dtype=tf.int64), tf.constant(cluster_of[2:])).numpy()
    return prob, cluster_of, in_pool, np.bincount(cluster_of[in_pool], minlength=catalogue.num_clusters)


def _shared_counts(items, prob, cluster_of, in_pool, filled_of_cluster, b, n_r, allocation):
    """c(j) for shared draws by its definition (losses module docstring)."""
    clusters, draws = allocation
    a = dict(zip(clusters.tolist(), draws.tolist()))
    return np.array([(b - 1) * prob[j] + in_pool[j] * (n_r / in_pool.sum()
                                                        + a.get(cluster_of[j], 0) / filled_of_cluster[cluster_of[j]])
                     for j in items])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("strategy", ["oob", "cluster_oob"])
def test_shared_log_counts_match_their_definition(seed, strategy, examples_dir, clusters_dir):
    config = tiny_config(strategy=strategy, negative_sharing="shared", shared_negatives=12, slots_per_cluster=4,
                         seed=seed)  # small segments: some items collide and stay out of the pool
    model, catalogue = _model(config, examples_dir, clusters_dir)
    rng = np.random.default_rng(seed)
    index = tf.constant(rng.integers(2, len(catalogue.item_ids) + 2, size=10), tf.int64)
    cluster = tf.gather(model.items.cluster_of_index, index)
    label = tf.constant((rng.uniform(size=10) > 0.3).astype(np.float32))
    samples = model._draw({"label": label}, cluster)
    in_batch, pool = model._log_counts(index, cluster, samples)
    prob, cluster_of, in_pool, filled = _pool_oracle(model, catalogue)
    assert 0 < in_pool[2:].mean() < 1
    allocation = numpy_allocation(cluster.numpy(), label.numpy(), model.num_cluster)
    if strategy == "oob":
        allocation = (allocation[0][:0], allocation[1][:0])
        assert model.num_cluster == 0 and model.num_random == 12
    else:
        np.testing.assert_array_equal(samples["clusters"].numpy(), allocation[0])
        np.testing.assert_array_equal(samples["draws"].numpy(), allocation[1])
    assert in_batch.shape == (1, 10) and pool.shape == (1, samples["item_index"].shape[0])
    want = _shared_counts(index.numpy(), prob, cluster_of, in_pool, filled, 10, model.num_random, allocation)
    np.testing.assert_allclose(in_batch.numpy()[0], np.log(want), rtol=1e-5)
    want = _shared_counts(samples["item_index"].numpy(), prob, cluster_of, in_pool, filled, 10, model.num_random,
                          allocation)
    np.testing.assert_allclose(pool.numpy()[0], np.log(want), rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_corrected_shared_draws_estimate_the_full_denominator_without_bias(seed, examples_dir, clusters_dir):
    """Given the batch, sum over the shared draws of f(j) / c(j), plus the in-batch columns' expected share
    (B - 1) sum_j p_j f(j) / c(j), has expectation sum_j f(j) over the catalogue: the pool's real draw
    frequencies match the counts of the correction (Monte Carlo over repeated draws, 4 standard errors)."""
    config = tiny_config(negative_sharing="shared", shared_negatives=9, slots_per_cluster=4, seed=seed)
    model, catalogue = _model(config, examples_dir, clusters_dir)
    rng = np.random.default_rng(seed)
    b = 8
    index = tf.constant(rng.integers(2, len(catalogue.item_ids) + 2, size=b), tf.int64)
    cluster = tf.gather(model.items.cluster_of_index, index)
    label = tf.ones([b])
    f = np.exp(rng.normal(size=len(model.items.probability_of_index.numpy()))).astype(np.float32)
    f[:2] = 0.0  # padding and the unknown item are not in the catalogue

    @tf.function
    def estimate():
        samples = model._draw({"label": label}, cluster)
        _, pool_log_count = model._log_counts(index, cluster, samples)
        drawn = tf.where(samples["valid"], tf.gather(f, samples["item_index"]), 0.0)
        return tf.reduce_sum(drawn / tf.exp(pool_log_count[0]))

    values = np.array([float(estimate()) for _ in range(3000)])
    prob, cluster_of, in_pool, filled = _pool_oracle(model, catalogue)
    allocation = numpy_allocation(cluster.numpy(), np.ones(b), model.num_cluster)
    items = np.arange(2, len(prob))
    c = _shared_counts(items, prob, cluster_of, in_pool, filled, b, model.num_random, allocation)
    in_batch_part = ((b - 1) * prob[items] * f[items] / c).sum()
    reachable = ((b - 1) * prob[items] + in_pool[items]) > 0  # items no source can produce are outside the estimate
    target = f[items][reachable].sum()
    mean, error = in_batch_part + values.mean(), values.std() / np.sqrt(len(values))
    assert abs(mean - target) < 4 * error + 1e-6 * target, (mean, target, error)
    assert values.std() > 0  # the draws do vary


@pytest.mark.parametrize("sharing", ["per_example", "per_cluster", "shared"])
def test_deduplicated_embedding_gives_the_same_step(sharing, examples_dir, clusters_dir):
    batch = next(iter(make_dataset(example_files(examples_dir, "train"), 32, 5)))
    results = {}
    for dedup in (False, True):
        config = tiny_config(negative_sharing=sharing, deduplicate_candidates=dedup, num_negatives=8,
                             shared_negatives=0)
        model, _ = _model(config, examples_dir, clusters_dir)
        logs = model.make_train_function()(iter(tf.data.Dataset.from_tensors(batch)))
        weights = [w.numpy() for w in model.query_tower.weights + model.candidate_tower.weights]
        results[dedup] = {k: float(v) for k, v in logs.items()}, weights
    (plain, plain_weights), (dedup, dedup_weights) = results[False], results[True]
    np.testing.assert_allclose(dedup["loss"], plain["loss"], rtol=1e-5)
    for a, b in zip(plain_weights, dedup_weights):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    draws = 32 if sharing == "shared" else 32 * 8
    assert plain["embedded_rows"] == 32 + draws
    assert dedup["embedded_rows"] <= 40  # the tiny catalogue: 40 distinct items at most
    assert plain["pool_draws"] == dedup["pool_draws"] == draws


@pytest.mark.parametrize("seed", [0, 1])
def test_per_cluster_draws_are_taken_by_every_example_of_the_cluster(seed, examples_dir, clusters_dir):
    """'per_cluster': the examples of a cluster share one set of K draws, random ones from the pool and cluster
    ones from that cluster's segment; the tower embeds at most B + (distinct clusters) x K rows."""
    config = tiny_config(negative_sharing="per_cluster", num_negatives=6, random_ratio=1, cluster_ratio=5, seed=seed)
    model, _ = _model(config, examples_dir, clusters_dir)
    batch = next(iter(make_dataset(example_files(examples_dir, "train"), 32, 5, 1000, seed)))
    index, cluster = model.items(batch["item_id"])
    drawn = model._draw(batch, cluster)
    ids, valid, cluster = drawn["item_index"].numpy(), drawn["valid"].numpy(), cluster.numpy()
    assert ids.shape == valid.shape == (32, 6)
    cluster_of = model.items.cluster_of_index.numpy()
    for c in np.unique(cluster):
        rows = np.flatnonzero(cluster == c)
        assert (ids[rows] == ids[rows[0]]).all() and (valid[rows] == valid[rows[0]]).all()
        drawn_clusters = cluster_of[ids[rows[0], 1:]][valid[rows[0], 1:]]
        assert (drawn_clusters == c).all()  # the cluster share from the cluster's own segment
    assert len({tuple(r) for r in ids}) <= len(np.unique(cluster))
    logs = model.make_train_function()(iter(tf.data.Dataset.from_tensors(batch)))
    assert float(logs["embedded_rows"]) <= len(np.unique(index.numpy())) + 6 * len(np.unique(cluster))
    assert np.isfinite(float(logs["loss"])) and float(logs["pool_draws"]) == 32 * 6


def test_full_softmax_step_is_the_softmax_over_the_catalogue(examples_dir, clusters_dir):
    config = tiny_config(strategy="full")
    model, catalogue = _model(config, examples_dir, clusters_dir)
    assert model.pool is None
    batch = next(iter(make_dataset(example_files(examples_dir, "train"), 32, 5)))
    index, _ = model.items(batch["item_id"])
    q = model.query_tower(batch["user_id"], batch["history_item_ids"])
    loss, stats = model._full_softmax(q, batch, index)
    q = q.numpy()
    c = model.candidate_tower.embed_ids(tf.constant(catalogue.item_ids.tolist())).numpy()
    logits = q @ c.T / config.temperature
    positive = np.searchsorted(catalogue.item_ids, batch["item_id"].numpy().astype(str))
    log_softmax = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    w = batch["label"].numpy()
    np.testing.assert_allclose(float(loss), -(w * log_softmax[np.arange(len(w)), positive]).sum() / len(w),
                               rtol=1e-5)
    assert float(stats["embedded_rows"]) == len(catalogue.item_ids)


def test_full_softmax_is_refused_beyond_its_memory(examples_dir, clusters_dir):
    with pytest.raises(ValueError, match=r"strategy 'full' over 40 items with batch 100000 needs about 46 MB.*"
                                         r"full_softmax_memory_mb=1"):
        _model(tiny_config(strategy="full", batch_size=100_000, full_softmax_memory_mb=1), examples_dir,
               clusters_dir)


@pytest.mark.parametrize("strategy,sharing", [("cluster_oob", "shared"), ("oob", "shared"), ("full", "per_example"),
                                              ("cluster_oob", "per_cluster")])
def test_train_shared_and_full(strategy, sharing, examples_dir, clusters_dir, tmp_path):
    config = tiny_config(strategy=strategy, negative_sharing=sharing, shared_negatives=24)
    summary = run_trainer(config, examples_dir, clusters_dir, str(tmp_path))
    metrics = summary["final_metrics"]
    assert np.isfinite(metrics["loss"]) and metrics["loss"] > 0
    if strategy == "full":
        assert summary["pool"] is None and metrics["embedded_rows"] == 40
        return
    # 4 clusters <= the cluster share: every step draws exactly the budget (per cluster: K per example)
    assert metrics["pool_draws"] == pytest.approx(24 if sharing == "shared" else config.num_negatives * 32, rel=0.1)
    shares = [metrics[f"mass_{s}"] for s in ("in_batch", "random", "cluster")]
    assert sum(shares) == pytest.approx(1.0, abs=1e-4) and metrics["mass_random"] > 0
    assert (metrics["mass_cluster"] > 0) == (strategy == "cluster_oob")
    query = tf.saved_model.load(str(tmp_path / "query_model"))
    assert query(tf.constant(["1"]), tf.constant([["3", ""]]))["embedding"].shape == (1, 8)


def test_shared_masks_history_items_per_query(examples_dir, clusters_dir, tmp_path):
    config = tiny_config(negative_sharing="shared", mask_history_negatives=True, shared_negatives=64)
    metrics = run_trainer(config, examples_dir, clusters_dir, str(tmp_path))["final_metrics"]
    assert 0.0 < metrics["negative_history_rate"] <= metrics["negative_masked_rate"] < 1.0


def test_sharing_config_is_checked():
    assert TrainerConfig(negative_sharing="shared").negative_split() == (16, 240)  # M = 256 by default, 1:15
    assert TrainerConfig(negative_sharing="shared", shared_negatives=0).negative_split() == (64, 960)  # the batch
    assert TrainerConfig(negative_sharing="shared", shared_negatives=32, strategy="oob").negative_split() == (32, 0)
    assert TrainerConfig(strategy="full").negative_split() == (0, 0) and not TrainerConfig(strategy="full").uses_pool
    with pytest.raises(ValueError, match="negative_sharing must be one of .* got 'batch'"):
        TrainerConfig(negative_sharing="batch")
    with pytest.raises(ValueError, match="shared_negatives must be >= 0 .* got -1"):
        TrainerConfig(shared_negatives=-1)
    with pytest.raises(ValueError, match="edis_negatives .* negative_sharing 'per_example' or 'per_cluster'"):
        TrainerConfig(negative_sharing="shared", edis_negatives=2)
    with pytest.raises(ValueError, match="strategy 'full' has none"):
        TrainerConfig(strategy="full", mask_history_negatives=True)


def test_shared_draws_that_find_no_item_are_masked(examples_dir, clusters_dir):
    """Before any update the pool is empty: every shared draw finds no item (the padding row, whose cluster
    is out of the pool's range) and is masked; the step still trains on the in-batch columns."""
    config = tiny_config(negative_sharing="shared", shared_negatives=12)
    tf_keras.utils.set_random_seed(config.seed)
    catalogue = load_catalogue(os.path.join(examples_dir, "items"), os.path.join(clusters_dir, "llm"))
    model = TwoTowerModel(config, catalogue, ["1"])  # not preloaded
    model.compile(optimizer=make_optimizer(config.optimizer, config.learning_rate))
    batch = next(iter(make_dataset(example_files(examples_dir, "train"), 32, 5)))
    logs = model.make_train_function()(iter(tf.data.Dataset.from_tensors(batch)))
    assert float(logs["negative_masked_rate"]) == 1.0 and np.isfinite(float(logs["loss"]))
    assert float(logs["mass_in_batch"]) == pytest.approx(1.0) and float(logs["pool_fill"]) > 0


@pytest.mark.parametrize("sharing", ["per_example", "shared"])
def test_cached_negative_embeddings_give_the_recomputed_step_with_a_fresh_cache(sharing, examples_dir, clusters_dir):
    """Right after preloading the cache holds the tower's current output: the cached step's loss and its
    query tower update equal the recomputed step's, while only positives go through the candidate tower
    (an item drawn, but neither a positive nor in a history, keeps its embedding row). After the step the
    cache holds the positives' embeddings of the step's start and the swept rows' of its end."""
    batch = next(iter(make_dataset(example_files(examples_dir, "train"), 32, 5)))
    logs, models = {}, {}
    for mode in ("recompute", "cached"):
        config = tiny_config(negative_sharing=sharing, negative_embeddings=mode, shared_negatives=24,
                             cache_refresh_rows=10)
        model, _ = _model(config, examples_dir, clusters_dir)  # (the cache's preload builds the candidate tower
        rows = tf.range(model.items.vocabulary_size, dtype=tf.int64)  # first: so here for both, for equal weights)
        model.candidate_tower(rows)
        if mode == "cached":
            np.testing.assert_allclose(model.cache.table.numpy(), model.candidate_tower(rows).numpy(), rtol=1e-6)
            index, _ = model.items(batch["item_id"])
            before = model.candidate_tower(index).numpy()
            item_rows_before = model.candidate_tower.item_embedding.embeddings.numpy().copy()
        logs[mode] = {k: float(v) for k, v in model.make_train_function()(iter(tf.data.Dataset.from_tensors(batch)))
                      .items()}
        models[mode] = model
    np.testing.assert_allclose(logs["cached"]["loss"], logs["recompute"]["loss"], rtol=1e-5)
    for a, b in zip(models["recompute"].query_tower.trainable_weights, models["cached"].query_tower.trainable_weights):
        if "embedding" not in a.name:  # the item and cluster tables are shared with the candidate tower
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-6)
    positives = np.unique(index.numpy())
    assert logs["cached"]["embedded_rows"] == len(positives) < logs["recompute"]["embedded_rows"]
    cached = models["cached"]
    item_rows_after = cached.candidate_tower.item_embedding.embeddings.numpy()
    history, _ = cached.items(batch["history_item_ids"])  # the query tower reads the same item table
    untouched = np.setdiff1d(np.arange(2, cached.items.vocabulary_size), np.union1d(positives, history.numpy()))
    assert len(untouched) > 0
    np.testing.assert_array_equal(item_rows_after[untouched], item_rows_before[untouched])  # no gradient via cache
    table = cached.cache.table.numpy()
    swept = np.arange(10)
    np.testing.assert_allclose(table[swept], cached.candidate_tower(tf.constant(swept, tf.int64)).numpy(),
                               rtol=1e-5, atol=1e-6)
    rest = np.setdiff1d(positives, swept)
    last = {i: r for r, i in enumerate(index.numpy())}
    np.testing.assert_allclose(table[rest], before[[last[i] for i in rest]], rtol=1e-6)
    assert int(cached.cache.sweep_at.numpy()) == 10


def test_train_and_resume_with_cached_negative_embeddings(examples_dir, clusters_dir, tmp_path):
    config = tiny_config(negative_embeddings="cached", cache_refresh_rows=16, epochs=1, checkpoint_every_steps=2)
    summary = run_trainer(config, examples_dir, clusters_dir, str(tmp_path))
    metrics = summary["final_metrics"]
    assert np.isfinite(metrics["loss"]) and metrics["mass_cluster"] > 0 and metrics["embedded_rows"] <= 32
    resumed = run_trainer(dataclasses.replace(config, epochs=2), examples_dir, clusters_dir, str(tmp_path))
    assert np.isfinite(resumed["final_metrics"]["loss"])
    with pytest.raises(ValueError, match="negative_embeddings: 'cached' -> 'recompute'"):
        run_trainer(dataclasses.replace(config, negative_embeddings="recompute"), examples_dir, clusters_dir,
                    str(tmp_path))
    with pytest.raises(ValueError, match="negative_embeddings must be one of .* got 'stale'"):
        TrainerConfig(negative_embeddings="stale")
    with pytest.raises(ValueError, match="cache_refresh_rows must be >= 0 .* got -1"):
        TrainerConfig(cache_refresh_rows=-1)
