"""The transformer (SASRec-style) query tower: NumPy oracle, causality, padding, training and serving."""

import os

import numpy as np
import pytest
import tensorflow as tf
from scipy.special import erf

from llm_hardneg.components.trainer import TrainerConfig, run_trainer
from llm_hardneg.components.trainer.data import ItemCatalogue, load_catalogue
from llm_hardneg.components.trainer.model import TransformerQueryTower, TwoTowerModel


def tower_of(heads: int = 2, history: int = 6, blocks: int = 2, seed: int = 0) -> TransformerQueryTower:
    catalogue = ItemCatalogue(np.array([str(i) for i in range(1, 31)]), np.arange(30) % 4, np.ones(30, np.int64), 4)
    config = TrainerConfig(query_tower="transformer", strategy="in_batch", embedding_dim=8, history_length=history,
                           transformer_heads=heads, transformer_blocks=blocks)
    tower = TwoTowerModel(config, catalogue, None).query_tower
    tower(tf.constant(["u"]), tf.constant([["1"]]))  # build
    rng = np.random.default_rng(seed)  # random weights everywhere (layer norms too), so the oracle sees them all
    for weight in tower.weights:
        weight.assign(rng.normal(scale=0.5, size=weight.shape).astype(np.float32))
    return tower


def _norm(x, layer):
    gamma, beta = (w.numpy() for w in layer.weights)
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * gamma + beta


def _attention(x, mask, layer):
    (wq, bq), (wk, bk), (wv, bv) = ((layer._query_dense.kernel.numpy(), layer._query_dense.bias.numpy()),
                                    (layer._key_dense.kernel.numpy(), layer._key_dense.bias.numpy()),
                                    (layer._value_dense.kernel.numpy(), layer._value_dense.bias.numpy()))
    q, k, v = (np.einsum("bnd,dhk->bnhk", x, w) + b for w, b in ((wq, bq), (wk, bk), (wv, bv)))
    scores = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(mask[:, None], scores, -1e9)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhqs,bshk->bqhk", weights, v)
    return np.einsum("bqhk,hkd->bqd", out, layer._output_dense.kernel.numpy()) + layer._output_dense.bias.numpy()


def numpy_query(tower: TransformerQueryTower, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """index [B, N] oldest first (0 = padding) -> (states [B, N, d], query [B, d]), in float64."""
    item = tower.item_embedding.embeddings.numpy().astype(np.float64)
    cluster = tower.cluster_embedding.embeddings.numpy()[tower.items.cluster_of_index.numpy()[index]]
    x = item[index] + cluster + tower.position_embedding.embeddings.numpy()[None, :index.shape[1]]
    x = _norm(x, tower.input_norm)
    n = index.shape[1]
    mask = (np.arange(n)[None, :] <= np.arange(n)[:, None])[None] & ((index > 0)[:, None, :] | np.eye(n, dtype=bool))
    for block in tower.blocks:
        x = x + _attention(_norm(x, block.attention_norm), mask, block.attention)
        dense1, dense2 = block.feed_forward.layers
        h = _norm(x, block.feed_forward_norm) @ dense1.kernel.numpy() + dense1.bias.numpy()
        h = 0.5 * h * (1 + erf(h / np.sqrt(2)))  # exact GELU
        x = x + h @ dense2.kernel.numpy() + dense2.bias.numpy()
    states = _norm(x, tower.output_norm)
    out = states[:, -1] @ tower.output_projection.kernel.numpy() + tower.output_projection.bias.numpy()
    return states, out / np.linalg.norm(out, axis=-1, keepdims=True)


@pytest.mark.parametrize("seed,heads,blocks", [(0, 1, 1), (1, 2, 2), (2, 4, 2)])
def test_transformer_tower_matches_numpy(seed, heads, blocks):
    tower = tower_of(heads=heads, blocks=blocks, seed=seed)
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 9, size=7)  # some longer than history_length 6: cut to the 6 most recent
    history = [[str(i) for i in rng.integers(1, 31, size=n)] for n in lengths]
    history[0] = ["unknown-item", "3"]  # an unknown item is a filled position with the unknown row
    ids = np.array([h + [""] * (8 - len(h)) for h in history])
    query = tower(tf.constant(["u"] * 7), tf.constant(ids)).numpy()
    index = tower.items.lookup(tf.constant(ids[:, :6])).numpy()[:, ::-1]  # oldest first, left-padded
    states, expected = numpy_query(tower, index)
    np.testing.assert_allclose(query, expected, rtol=2e-4, atol=2e-5)
    got_states = tower.sequence_states(tf.constant(index)).numpy()
    np.testing.assert_allclose(got_states, states, rtol=2e-4, atol=2e-4)
    last = tower.sequence_states(tf.constant(index), last_only=True).numpy()  # the serving path's shortcut
    assert last.shape == (7, 1, 8)
    np.testing.assert_allclose(last[:, 0], got_states[:, -1], rtol=1e-5, atol=1e-6)


def test_a_position_sees_only_itself_and_earlier_items():
    tower = tower_of(seed=3)
    rng = np.random.default_rng(3)
    index = rng.integers(1, 32, size=(5, 6))
    index[0, :2] = 0  # left padding
    states = tower.sequence_states(tf.constant(index)).numpy()
    for cut in range(6):  # changing positions cut.. leaves every earlier state as it was
        changed = index.copy()
        changed[:, cut:] = rng.integers(1, 32, size=(5, 6 - cut))
        other = tower.sequence_states(tf.constant(changed)).numpy()
        np.testing.assert_allclose(other[:, :cut], states[:, :cut], rtol=1e-5, atol=1e-6)
        if cut < 5:
            assert np.abs(other[:, cut:] - states[:, cut:]).max() > 1e-3  # ... and later ones do change


def test_padding_and_longer_histories_do_not_change_the_query_and_dropout_is_training_only():
    tower = tower_of(history=4, seed=4)
    users = tf.constant(["1", "2"])
    short = tower(users, tf.constant([["3", "5"], ["7", ""]]))
    padded = tower(users, tf.constant([["3", "5", "", "", ""], ["7", "", "", "", ""]]))
    longer = tower(users, tf.constant([["3", "5", "", "", "9"], ["7", "", "", "", "2"]]))  # 5th item: cut
    np.testing.assert_allclose(short.numpy(), padded.numpy(), rtol=1e-6)
    np.testing.assert_allclose(longer.numpy(), padded.numpy(), rtol=1e-6)
    other_users = tower(tf.constant(["9", "8"]), tf.constant([["3", "5"], ["7", ""]]))
    assert np.abs((other_users - short).numpy()).max() == 0.0  # the user id is not used
    first = tower(users, tf.constant([["3", "5"], ["7", ""]]), training=True)
    second = tower(users, tf.constant([["3", "5"], ["7", ""]]), training=True)
    assert np.abs((first - second).numpy()).max() > 1e-3  # dropout 0.2


def test_tied_candidates_and_dot_similarity_match_numpy():
    """candidate_tower 'embedding' is the item's input token (item + cluster row); similarity 'dot' leaves both
    towers' outputs unnormalised; the loss's logits are then raw dot products / temperature."""
    catalogue = ItemCatalogue(np.array([str(i) for i in range(1, 31)]), np.arange(30) % 4, np.ones(30, np.int64), 4)
    config = TrainerConfig(query_tower="transformer", strategy="in_batch", embedding_dim=8, history_length=6,
                           candidate_tower="embedding", similarity="dot", temperature=1.0)
    model = TwoTowerModel(config, catalogue, None)
    tower = model.query_tower
    tower(tf.constant(["u"]), tf.constant([["1"]]))
    rng = np.random.default_rng(3)
    for weight in tower.weights:
        weight.assign(rng.normal(scale=0.5, size=weight.shape).astype(np.float32))
    index = np.array([0, 1, 2, 7, 31])  # padding, unknown, catalogue items
    got = model.candidate_tower(tf.constant(index, tf.int64)).numpy()
    item, cluster = tower.item_embedding.embeddings.numpy(), tower.cluster_embedding.embeddings.numpy()
    np.testing.assert_allclose(got, item[index] + cluster[tower.items.cluster_of_index.numpy()[index]], rtol=1e-6)
    assert not model.candidate_tower.weights[2:], "the tied candidate tower has no weights of its own"
    ids = np.array([["3", "9", "", "", "", ""], ["4", "", "", "", "", ""]])
    query = tower(tf.constant(["u", "v"]), tf.constant(ids)).numpy()
    states, unit = numpy_query(tower, tower.items.lookup(tf.constant(ids)).numpy()[:, ::-1])
    raw = states[:, -1] @ tower.output_projection.kernel.numpy() + tower.output_projection.bias.numpy()
    np.testing.assert_allclose(query, raw, rtol=2e-4, atol=2e-5)
    assert not np.allclose(np.linalg.norm(query, axis=1), 1.0)
    with pytest.raises(ValueError, match="'nope'"):
        TrainerConfig(candidate_tower="nope")
    with pytest.raises(ValueError, match="similarity 'cosine', got 'dot'"):
        TrainerConfig(strategy="oob", negative_sharing="per_example", edis_negatives=2, similarity="dot")


def test_transformer_config_errors_name_the_value():
    with pytest.raises(ValueError, match="query_tower must be one of .*'lstm'"):
        TrainerConfig(query_tower="lstm")
    with pytest.raises(ValueError, match="must divide by the heads, got 2 blocks, 3 heads, embedding_dim 64"):
        TrainerConfig(query_tower="transformer", transformer_heads=3)
    with pytest.raises(ValueError, match=r"transformer_dropout must be in \[0, 1\), got 1.0"):
        TrainerConfig(transformer_dropout=1.0)


def test_transformer_tower_trains_exports_and_restores(examples_dir, clusters_dir, tmp_path):
    config = TrainerConfig(query_tower="transformer", strategy="cluster_oob", negative_sharing="shared", batch_size=32,
                           epochs=1, embedding_dim=8, transformer_heads=2, num_negatives=4, history_length=5,
                           shuffle_buffer=1000, log_every_steps=5, seed=1, candidate_tower="embedding",
                           similarity="dot", temperature=1.0)  # SASRec's scoring (cosine: test_sequences)
    summary = run_trainer(config, examples_dir, clusters_dir, str(tmp_path))
    assert np.isfinite(summary["final_metrics"]["loss"]) and summary["user_rows"] == 0
    served = tf.saved_model.load(str(tmp_path / "query_model"))
    users, history = tf.constant(["1", "new-user"]), tf.constant([["3", "4", ""], ["no-such-item", "", ""]])
    out = served(users, history)["embedding"].numpy()
    np.testing.assert_allclose(served(users, history)["embedding"].numpy(), out)  # no dropout at serving
    assert not np.allclose(np.linalg.norm(out, axis=1), 1.0)  # similarity 'dot': raw vectors
    # the SavedModel computes what the checkpointed tower computes
    catalogue = load_catalogue(os.path.join(examples_dir, "items"), os.path.join(clusters_dir, "llm"))
    model = TwoTowerModel(config, catalogue, None)
    checkpoint = tf.train.Checkpoint(query_tower=model.query_tower, candidate_tower=model.candidate_tower)
    checkpoint.restore(tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))).expect_partial()
    np.testing.assert_allclose(model.query_tower(users, history).numpy(), out, rtol=1e-5, atol=1e-6)
