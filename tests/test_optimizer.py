import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from llm_hardneg.components.trainer.data import example_files, load_catalogue, make_dataset
from llm_hardneg.components.trainer.optimizer import LazyAdam, make_optimizer
from tests.test_trainer import tiny_config


def numpy_lazy_adam(table, steps, lr=0.01, b1=0.9, b2=0.999, eps=1e-7):
    """Oracle: per step, duplicate rows summed, then Adam on the looked-up rows only."""
    table, m, v = table.copy(), np.zeros_like(table), np.zeros_like(table)
    for t, (rows, values) in enumerate(steps, start=1):
        grad = {}
        for r, g in zip(rows, values):
            grad[r] = grad.get(r, 0) + g
        alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        for r, g in grad.items():
            m[r] = b1 * m[r] + (1 - b1) * g
            v[r] = b2 * v[r] + (1 - b2) * g * g
            table[r] -= alpha * m[r] / (np.sqrt(v[r]) + eps)
    return table


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_updates_match_numpy_and_leave_other_rows_alone(seed):
    rng = np.random.default_rng(seed)
    start = rng.normal(size=(20, 3)).astype(np.float32)
    steps = [(rng.integers(0, 8, size=6), rng.normal(size=(6, 3)).astype(np.float32)) for _ in range(5)]
    table = tf.Variable(start)
    optimizer = LazyAdam(0.01)
    for rows, values in steps:  # duplicate rows within a step included
        optimizer.apply_gradients([(tf.IndexedSlices(tf.constant(values), tf.constant(rows)), table)])
    np.testing.assert_allclose(table.numpy(), numpy_lazy_adam(start, steps), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(table.numpy()[8:], start[8:])  # rows never looked up never move


def test_dense_gradients_take_the_ordinary_adam_update():
    rng = np.random.default_rng(0)
    start, grads = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(3, 4, 3)).astype(np.float32)
    lazy, dense = tf.Variable(start), tf.Variable(start)
    lazy_opt, adam = LazyAdam(0.01), tf_keras.optimizers.Adam(0.01)
    for g in grads:
        lazy_opt.apply_gradients([(tf.constant(g), lazy)])
        adam.apply_gradients([(tf.constant(g), dense)])
    np.testing.assert_allclose(lazy.numpy(), dense.numpy(), rtol=1e-6)


def test_bad_optimizer_names_the_value():
    with pytest.raises(ValueError, match="optimizer must be one of .* got 'sgd'"):
        make_optimizer("sgd", 0.1)
    with pytest.raises(ValueError, match="amsgrad"):
        LazyAdam(amsgrad=True)


@pytest.mark.parametrize("buckets", [0, 7])
def test_embedding_tables_get_sparse_gradients_in_the_real_model(buckets, examples_dir, clusters_dir):
    """The lazy path is only taken for IndexedSlices: no dense [V, d] gradient may reach a table."""
    from llm_hardneg.components.trainer.model import TwoTowerModel

    config = tiny_config(user_id_buckets=buckets)
    catalogue = load_catalogue(os.path.join(examples_dir, "items"), os.path.join(clusters_dir, "llm"))
    model = TwoTowerModel(config, catalogue, None if buckets else ["1", "2", "3"])
    model.compile(optimizer=LazyAdam(1e-3), run_eagerly=True)
    seen = {}
    apply = model.optimizer.apply_gradients

    def record(pairs, **kwargs):
        pairs = list(pairs)
        seen.update({v.name: isinstance(g, tf.IndexedSlices) for g, v in pairs})
        return apply(pairs, **kwargs)

    model.optimizer.apply_gradients = record
    batch = next(iter(make_dataset(example_files(examples_dir, "train"), 16, config.history_length)))
    model.train_step(batch)
    tables = {name: sparse for name, sparse in seen.items() if "embedding" in name}
    assert len(tables) == 3 and all(tables.values()), seen  # item, cluster and user tables
    assert not any(sparse for name, sparse in seen.items() if "embedding" not in name)
    user_rows = [v for v in model.trainable_variables if "user_embedding" in v.name][0].shape[0]
    assert user_rows == (7 if buckets else 4)
