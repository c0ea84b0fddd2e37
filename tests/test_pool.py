import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from scipy import stats

from llm_hardneg.components.trainer.pool import ClusterPool, EmbeddingCache

SPEC = {"item_index": ((), "int64"), "dense": ((3,), "float32")}


def make_pool(c=4, s=8, sampling="filled", seed=0):
    return ClusterPool(c, s, SPEC, sampling=sampling, seed=seed)


def numpy_update(c, s, ids, clusters):
    """Oracle of Algorithm 1 with 'last occurrence wins': {slot: item id}."""
    state = {}
    for i, cl in zip(ids, clusters):
        state[cl * s + i % s] = i
    return state


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("c,s", [(1, 4), (5, 8), (16, 3)])
def test_update_matches_numpy_oracle(seed, c, s):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 50, size=64)
    clusters = rng.integers(0, c, size=64)
    pool = make_pool(c, s)
    pool.update(tf.constant(ids), tf.constant(clusters),
                {"item_index": tf.constant(ids), "dense": tf.constant(np.repeat(ids[:, None], 3, 1), tf.float32)})
    expected = numpy_update(c, s, ids, clusters)
    np.testing.assert_array_equal(np.flatnonzero(pool.valid.numpy()), sorted(expected))
    for slot, item in expected.items():
        assert pool.stored["item_index"].numpy()[slot] == item == pool.item_key.numpy()[slot]
        np.testing.assert_array_equal(pool.stored["dense"].numpy()[slot], [item] * 3)


def test_string_ids_are_hashed_into_their_segment():
    pool = make_pool(3, 16)
    ids = tf.constant(["a", "b", "c", "d"])
    slots = pool.slots(ids, tf.constant([0, 1, 2, 2])).numpy()
    keys = tf.strings.to_hash_bucket_fast(ids, 2**63 - 1).numpy()
    np.testing.assert_array_equal(slots, np.array([0, 1, 2, 2]) * 16 + keys % 16)


def _filled_pool(seed=0, c=4, s=8, n=20):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 1000, size=n)
    clusters = rng.integers(0, c, size=n)
    pool = make_pool(c, s, seed=seed)
    pool.update(tf.constant(ids), tf.constant(clusters),
                {"item_index": tf.constant(ids), "dense": tf.zeros([n, 3])})
    return pool, numpy_update(c, s, ids, clusters)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cluster_draws_stay_in_segment_and_hit_only_filled_slots(seed):
    pool, state = _filled_pool(seed)
    queries = tf.constant([0, 1, 2, 3] * 50, tf.int64)
    out = pool.sample_cluster(queries, 16)
    for q, items, valid in zip(queries.numpy(), out["item_index"].numpy(), out["valid"].numpy()):
        segment = {item for slot, item in state.items() if slot // 8 == q}
        assert valid.all() == bool(segment)
        if segment:
            assert set(items) <= segment


def test_cluster_draws_are_uniform_over_filled_slots():
    pool, state = _filled_pool(0, c=2, s=32, n=40)
    segment = sorted(slot for slot in state if slot // 32 == 0)
    out = pool.sample_cluster(tf.zeros([2000], tf.int64), 8)["item_index"].numpy().ravel()
    counts = np.array([(out == state[slot]).sum() for slot in segment])
    assert counts.sum() == out.size
    assert stats.chisquare(counts).pvalue > 1e-3


def test_random_draws_are_uniform_over_the_whole_pool():
    pool, state = _filled_pool(1, c=4, s=8, n=25)
    out = pool.sample_random(tf.constant(1000), 10)
    items = out["item_index"].numpy().ravel()
    counts = np.array([(items == state[slot]).sum() for slot in sorted(state)])
    assert counts.sum() == items.size and stats.chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_filled_lists_hold_each_filled_slot_once_over_many_updates(seed):
    """segment_filled / pool_filled (what makes a draw O(1)) always list exactly the filled slots,
    each once, whatever repeats and overwrites the updates carry; checked against the oracle."""
    c, s = 5, 6
    rng = np.random.default_rng(seed)
    pool, state = make_pool(c, s), {}
    for _ in range(6):
        ids, clusters = rng.integers(0, 60, size=12), rng.integers(0, c, size=12)
        features = {"item_index": tf.constant(ids), "dense": tf.zeros([12, 3])}
        pool.update(tf.constant(ids), tf.constant(clusters), features)
        state.update(numpy_update(c, s, ids, clusters))
        counts, lists = pool.segment_count.numpy(), pool.segment_filled.numpy()
        for segment in range(c):
            listed = lists[segment * s: segment * s + counts[segment]]
            assert sorted(listed) == sorted(slot for slot in state if slot // s == segment)
        total = int(pool.total_filled.numpy())
        assert sorted(pool.pool_filled.numpy()[:total]) == sorted(state)
        assert float(pool.fill_rate()) == pytest.approx(len(state) / (c * s))


def test_filled_draw_ranks_are_exact_for_huge_segments():
    """Ranks come from a float64 uniform: a float32 one (24 bits) times 2^26 filled slots would give
    only multiples of 4, so three quarters of the items could never be drawn."""
    rank = make_pool()._uniform_rank(tf.constant([2**26], tf.int64), 20_000).numpy().ravel()
    assert rank.min() >= 0 and rank.max() < 2**26
    np.testing.assert_array_equal(np.unique(rank % 4), [0, 1, 2, 3])
    assert stats.kstest(rank / 2**26, "uniform").pvalue > 1e-3


@pytest.mark.parametrize("sampling", ["filled", "slot"])
def test_draw_probabilities_and_membership(sampling):
    c, s = 4, 8
    rng = np.random.default_rng(3)
    ids, clusters = rng.integers(0, 1000, size=20), rng.integers(0, c, size=20)
    pool = make_pool(c, s, sampling=sampling)
    pool.update(tf.constant(ids), tf.constant(clusters), {"item_index": tf.constant(ids), "dense": tf.zeros([20, 3])})
    state = numpy_update(c, s, ids, clusters)
    queries = np.arange(c)
    q_random, q_cluster = pool.draw_probabilities(tf.constant(queries))
    if sampling == "filled":
        per_segment = np.array([sum(slot // s == q for slot in state) for q in queries])
        np.testing.assert_allclose(q_random.numpy(), 1 / len(state), rtol=1e-6)
        np.testing.assert_allclose(q_cluster.numpy(), np.divide(1, per_segment, out=np.zeros(c),
                                                                where=per_segment > 0), rtol=1e-6)
    else:
        np.testing.assert_allclose(q_random.numpy(), 1 / (c * s), rtol=1e-6)
        np.testing.assert_allclose(q_cluster.numpy(), 1 / s, rtol=1e-6)
    stored = set(state.values())
    # items overwritten by a later item on their slot are no longer in the pool; an unseen id is not either
    expected = [i in stored and state[cl * s + i % s] == i for i, cl in zip(ids, clusters)] + [False]
    got = pool.contains(tf.constant([*ids, 5000]), tf.constant([*clusters, 0]))
    np.testing.assert_array_equal(got.numpy(), expected)


def test_slot_sampling_marks_empty_slots_invalid():
    pool = make_pool(2, 8, sampling="slot")
    pool.update(tf.constant([0, 1], tf.int64), tf.constant([0, 0], tf.int64),
                {"item_index": tf.constant([0, 1], tf.int64), "dense": tf.zeros([2, 3])})
    out = pool.sample_cluster(tf.zeros([500], tf.int64), 4)
    valid, items = out["valid"].numpy(), out["item_index"].numpy()
    assert 0.15 < valid.mean() < 0.35  # 2 of 8 slots filled
    assert set(items[valid]) <= {0, 1}


def test_empty_pool_gives_invalid_draws():
    out = make_pool().sample_cluster(tf.constant([0, 3], tf.int64), 5)
    assert not out["valid"].numpy().any()


def test_out_of_range_cluster_is_an_error():
    with pytest.raises(tf.errors.InvalidArgumentError, match="cluster id out of range"):
        make_pool(2, 4).update(tf.constant([1], tf.int64), tf.constant([2], tf.int64),
                               {"item_index": tf.constant([1], tf.int64), "dense": tf.zeros([1, 3])})


def test_bad_construction_names_value():
    with pytest.raises(ValueError, match="slots_per_cluster must be >= 1, got 0"):
        ClusterPool(2, 0, SPEC)
    with pytest.raises(ValueError, match="sampling"):
        ClusterPool(2, 2, SPEC, sampling="bogus")


# -- the four layer tests ---------------------------------------------------------------------
def test_call_shapes_and_tf_function():
    pool, _ = _filled_pool(0)
    sample = tf.function(lambda c: pool(c, num_random=2, num_cluster=3))
    out = sample(tf.constant([0, 1, 2], tf.int64))
    assert out["item_index"].shape == (3, 5) and out["dense"].shape == (3, 5, 3)
    assert out["valid"].dtype == tf.bool and out["item_key"].shape == (3, 5)


def test_inside_a_model_fit_updates_and_samples():
    class Model(tf_keras.Model):
        def __init__(self):
            super().__init__()
            self.pool = ClusterPool(2, 4, {"item_index": ((), "int64")})
            self.w = tf.Variable(1.0)

        def train_step(self, batch):
            ids, clusters = batch
            drawn = self.pool(clusters, num_cluster=2)
            self.pool.update(ids, clusters, {"item_index": ids})
            loss = self.w * tf.reduce_mean(tf.cast(drawn["valid"], tf.float32))
            return {"loss": loss, "fill": self.pool.fill_rate()}

    model = Model()
    model.compile(optimizer="sgd")
    data = tf.data.Dataset.from_tensor_slices((tf.range(8, dtype=tf.int64), tf.range(8, dtype=tf.int64) // 4))
    history = model.fit(data.batch(4), epochs=2, verbose=0)
    assert history.history["fill"][-1] == 1.0  # ids 0..7 fill both 4-slot segments exactly
    assert history.history["loss"][-1] == 1.0  # every draw of epoch 2 finds an item


def test_config_round_trip():
    pool = make_pool(3, 5, sampling="slot", seed=7)
    clone = ClusterPool.from_config(pool.get_config())
    assert (clone.num_clusters, clone.slots_per_cluster, clone.sampling, clone.seed) == (3, 5, "slot", 7)
    assert clone.feature_specs == pool.feature_specs


def test_checkpoint_and_savedmodel_round_trip(tmp_path):
    pool, _ = _filled_pool(2)
    checkpoint = tf.train.Checkpoint(pool=pool)
    path = checkpoint.save(str(tmp_path / "ckpt"))
    restored = make_pool(seed=2)
    tf.train.Checkpoint(pool=restored).restore(path).assert_existing_objects_matched()
    for a, b in zip(pool.weights, restored.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # the random generator state travels too: both draw the same samples next
    np.testing.assert_array_equal(pool.sample_cluster(tf.constant([0, 1]), 4)["item_index"].numpy(),
                                  restored.sample_cluster(tf.constant([0, 1]), 4)["item_index"].numpy())

    module = tf.Module()
    module.pool = pool
    module.slots = tf.function(lambda ids, c: pool.slots(ids, c),
                               input_signature=[tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.int64)])
    tf.saved_model.save(module, str(tmp_path / "sm"))
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    ids, clusters = tf.constant([3, 9, 14], tf.int64), tf.constant([0, 3, 1], tf.int64)
    np.testing.assert_array_equal(loaded.slots(ids, clusters).numpy(), pool.slots(ids, clusters).numpy())
    assert os.path.isdir(tmp_path / "sm" / "variables")


def test_key_feature_pool_behaves_like_one_with_a_key_array():
    """key_feature='item_index' (the trainer's pool) keeps no item_key array and draws, masks and
    answers membership exactly like a pool that keeps one."""
    rng = np.random.default_rng(5)
    ids, clusters = rng.integers(0, 500, size=60), rng.integers(0, 4, size=60)
    features = {"item_index": tf.constant(ids), "dense": tf.zeros([60, 3])}
    plain, keyed = make_pool(4, 8, seed=9), ClusterPool(4, 8, SPEC, seed=9, key_feature="item_index")
    for pool in (plain, keyed):
        pool.update(tf.constant(ids), tf.constant(clusters), features)
    assert "item_key" in {v.name.split("/")[-1].split(":")[0] for v in plain.weights}
    assert "item_key" not in {v.name.split("/")[-1].split(":")[0] for v in keyed.weights}
    a, b = plain(tf.constant([0, 1, 2, 3] * 5), 2, 6), keyed(tf.constant([0, 1, 2, 3] * 5), 2, 6)
    for name in ("item_index", "item_key", "valid"):
        np.testing.assert_array_equal(a[name].numpy(), b[name].numpy())
    query = tf.constant([*ids[:10], 999]), tf.constant([*clusters[:10], 0])
    np.testing.assert_array_equal(plain.contains(*query).numpy(), keyed.contains(*query).numpy())
    with pytest.raises(ValueError, match="key_feature must name a stored scalar int64 feature, got 'dense'"):
        ClusterPool(4, 8, SPEC, key_feature="dense")


def numpy_allocation(clusters, weights, budget):
    """allocate_draws by its definition: one draw each, the rest by largest remainder (ties: smaller id)."""
    ids = sorted({c for c, w in zip(clusters, weights) if w > 0})
    mass = np.array([sum(w for c, w in zip(clusters, weights) if c == u) for u in ids], np.float64)
    extra = max(budget - len(ids), 0)
    share = extra * mass / mass.sum() if len(ids) else mass
    base = np.floor(share)
    order = sorted(range(len(ids)), key=lambda u: (-(share[u] - base[u]), u))
    draws = 1 + base.astype(np.int64)
    for u in order[:extra - int(base.sum())]:
        draws[u] += 1
    return np.array(ids, np.int64), draws


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("budget", [0, 3, 16, 101])
def test_allocate_draws_matches_numpy_oracle(seed, budget):
    from llm_hardneg.components.trainer.pool import allocate_draws

    rng = np.random.default_rng(seed)
    clusters = rng.integers(0, 9, size=40)
    weights = rng.integers(0, 3, size=40).astype(np.float32)  # label-0 rows ask for nothing
    got_clusters, got_draws = allocate_draws(tf.constant(clusters), tf.constant(weights), budget)
    want_clusters, want_draws = numpy_allocation(clusters, weights, budget)
    np.testing.assert_array_equal(got_clusters.numpy(), want_clusters)
    np.testing.assert_array_equal(got_draws.numpy(), want_draws)
    assert got_draws.numpy().sum() == max(budget, len(want_clusters))
    assert got_draws.numpy().min() >= 1


def test_allocate_draws_of_a_batch_without_positives_is_empty():
    from llm_hardneg.components.trainer.pool import allocate_draws

    clusters, draws = allocate_draws(tf.constant([1, 2, 2]), tf.zeros([3]), 10)
    assert clusters.shape == (0,) and draws.shape == (0,)


@pytest.mark.parametrize("sampling", ["filled", "slot"])
def test_shared_draws_come_from_their_allocated_segments(sampling):
    pool = make_pool(4, 8, sampling=sampling, seed=1)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 1000, size=30)
    clusters = rng.integers(0, 4, size=30)
    pool.update(tf.constant(ids), tf.constant(clusters), {"item_index": tf.constant(ids), "dense": tf.zeros([30, 3])})
    state = numpy_update(4, 8, ids, clusters)
    batch = tf.constant([0, 0, 0, 2, 2, 3])
    out = pool.sample_shared(batch, tf.constant([1.0, 1, 1, 1, 1, 0]), 3, 10)
    np.testing.assert_array_equal(out["clusters"].numpy(), [0, 2])
    np.testing.assert_array_equal(out["draws"].numpy(), [6, 4])  # 1 + 8 * 3/5 -> 5.8, 1 + 8 * 2/5 -> 4.2
    assert out["item_index"].shape == (13,) and out["valid"].shape == (13,)
    np.testing.assert_array_equal(out["source"].numpy(), [1] * 3 + [2] * 10)
    cluster_of = {item: slot // 8 for slot, item in state.items()}
    drawn, valid = out["item_index"].numpy(), out["valid"].numpy()
    segment = np.repeat([0, 2], [6, 4])
    for item, ok, want in zip(drawn[3:], valid[3:], segment):
        if ok:
            assert cluster_of[item] == want
    for item, ok in zip(drawn[:3], valid[:3]):
        if ok:
            assert item in cluster_of
    if sampling == "filled":
        assert valid.all()


@pytest.mark.parametrize("seed", [0, 1])
def test_embedding_cache_matches_numpy_oracle(seed):
    """Writes land in their rows, the last of a repeated row wins, reads carry no gradient; the sweep goes
    round-robin over every row and wraps."""
    rng = np.random.default_rng(seed)
    cache = EmbeddingCache(7, 3)
    want = np.zeros((7, 3), np.float32)
    for _ in range(4):
        index = rng.integers(0, 7, size=5)
        values = rng.normal(size=(5, 3)).astype(np.float32)
        cache.write(tf.constant(index, tf.int64), tf.constant(values))
        for i, v in zip(index, values):  # in order: the last occurrence of a row stays
            want[i] = v
        np.testing.assert_array_equal(cache.table.numpy(), want)
    index = tf.constant([[6, 0], [2, 2]], tf.int64)
    with tf.GradientTape() as tape:
        tape.watch(cache.table)
        read = cache.read(index)
    np.testing.assert_array_equal(read.numpy(), want[[[6, 0], [2, 2]]])
    assert tape.gradient(read, cache.table) is None
    swept = [cache.next_rows(3).numpy().tolist() for _ in range(3)]
    assert swept == [[0, 1, 2], [3, 4, 5], [6, 0, 1]] and int(cache.sweep_at.numpy()) == 2
    assert cache.next_rows(100).numpy().tolist() == [2, 3, 4, 5, 6, 0, 1]  # at most every row once a call
    with pytest.raises(ValueError, match="rows and dim must be >= 1, got 0 and 3"):
        EmbeddingCache(0, 3)
