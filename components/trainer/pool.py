"""The cluster-segmented out-of-batch item pool (paper §4, Algorithms 1 and 2)."""

from __future__ import annotations

from collections.abc import Mapping

import tensorflow as tf
import tf_keras

SAMPLINGS = ("filled", "slot")


def allocate_draws(cluster_ids: tf.Tensor, weights: tf.Tensor, budget: int | tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Splits `budget` cluster draws among the distinct clusters of a batch (shared negatives).

    cluster_ids: [B] int64; weights: [B] >= 0 (the label: only rows with weight > 0 count). Returns
    (clusters [U] int64, sorted: the distinct clusters of the rows with weight > 0; draws [U] int64).
    Every cluster gets one draw and the rest, max(budget - U, 0), is split in proportion to the
    clusters' summed weights by largest remainder (ties to the smaller cluster id), so the draws sum to
    max(budget, U): when the clusters outnumber the budget each still gets one (at most B draws).
    """
    cluster_ids = tf.cast(cluster_ids, tf.int64)
    weights = tf.cast(weights, tf.float64)
    positive = weights > 0
    clusters = tf.sort(tf.unique(tf.boolean_mask(cluster_ids, positive)).y)
    mass = tf.math.unsorted_segment_sum(tf.boolean_mask(weights, positive),
                                        tf.searchsorted(clusters, tf.boolean_mask(cluster_ids, positive)),
                                        tf.size(clusters))
    extra = tf.maximum(tf.cast(budget, tf.int64) - tf.size(clusters, out_type=tf.int64), 0)
    share = tf.cast(extra, tf.float64) * tf.math.divide_no_nan(mass, tf.reduce_sum(mass))
    base = tf.floor(share)
    left = extra - tf.cast(tf.reduce_sum(base), tf.int64)  # < U draws of the remainders, largest first
    rank = tf.math.invert_permutation(tf.argsort(base - share, stable=True))  # 0 = largest remainder
    return clusters, 1 + tf.cast(base, tf.int64) + tf.cast(tf.cast(rank, tf.int64) < left, tf.int64)


def last_occurrences(keys: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """keys [N] -> (the distinct keys [U], the position of each one's last occurrence [U]): a batch's
    duplicates resolved deterministically, the last one wins (the pool's slots, the cache's rows)."""
    unique, position = tf.unique(keys)
    return unique, tf.math.unsorted_segment_max(tf.range(tf.size(keys)), position, tf.size(unique))


class ClusterPool(tf_keras.layers.Layer):
    """Out-of-batch item pool of C cluster segments x S slots, updated by scatter, read by gather.

    State (non-trainable `tf.Variable`s, created once in `__init__`, afterwards only assigned):
      `<feature>`: [C*S, *shape] for every stored item feature (e.g. the item's vocabulary
        index); sampled negatives are re-embedded by the current item tower, so the pool holds
        features, never embeddings.
      `item_key`: [C*S] int64, the integer key of the item in the slot (the id itself for integer
        ids, a 63-bit hash for string ids); used to mask samples equal to the positive. With
        `key_feature`, the stored int64 feature of that name is the key (the items are written
        with that feature as their id) and no separate array is kept, read or written.
      `valid`: [C*S] bool, whether the slot has ever been filled.
      `segment_filled` [C*S] int64 and `segment_count` [C] int64: the filled slots of segment c,
        in the order they were first filled, are segment_filled[c*S : c*S + segment_count[c]].
      `pool_filled` [C*S] int64 and `total_filled` [] int64: the same list for the whole pool.
        Slots are never emptied, so both lists only grow; they make a 'filled' draw O(1) (a
        uniform rank into the list) instead of a pass over the segment or the pool.
      a `tf.random.Generator` for sampling.
    All of it is checkpointed with the model (training state) and none of it is part of a
    serving SavedModel. Per step, update and sampling cost O(B log B + B*k), whatever C*S is.

    Under a `tf.distribute` strategy every replica holds a copy of the pool: `update` all-gathers
    the batch's items from every replica and each replica applies the same update, so the copies
    stay identical (variables aggregate ONLY_FIRST_REPLICA); sampling draws differ per replica.

    Update engine (Algorithm 1): item with key x in cluster c goes to slot c*S + x % S. Items
    colliding on a slot overwrite each other (the newest stays: the pool tracks fresh items);
    duplicates within one batch are resolved deterministically, the last occurrence wins.

    Sampling engine (Algorithm 2): for each example, draws from the segment of its cluster.
    `sampling='filled'` draws uniformly among the filled slots of the segment (the paper's
    "an existing item ... is randomly selected"); `sampling='slot'` draws r ~ U[0, S) as in
    Algorithm 2 literally and returns empty slots as invalid. Random out-of-batch draws are
    uniform over the filled slots of the whole pool (or over all slots with 'slot'). `sample_shared`
    draws for a whole batch at once: the random share from the pool, the cluster share split among
    the batch's distinct clusters (`allocate_draws`), O(B + M) per step.
    `draw_probabilities` and `contains` give what a sampled-softmax correction needs: the
    probability that one draw returns a given pooled item, and whether an item is in the pool.
    """

    def __init__(self, num_clusters: int, slots_per_cluster: int,
                 feature_specs: Mapping[str, tuple[tuple[int, ...], str]],
                 sampling: str = "filled", seed: int = 0, key_feature: str = "", **kwargs):
        kwargs.pop("trainable", None)  # the pool is never trainable
        super().__init__(trainable=False, **kwargs)
        if num_clusters < 1:
            raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
        if slots_per_cluster < 1:
            raise ValueError(f"slots_per_cluster must be >= 1, got {slots_per_cluster}")
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if not feature_specs:
            raise ValueError("feature_specs must name at least one stored feature")
        if key_feature and tuple(feature_specs.get(key_feature, ((1,), ""))) != ((), "int64"):
            raise ValueError(f"key_feature must name a stored scalar int64 feature, got {key_feature!r}")
        self.num_clusters = int(num_clusters)
        self.slots_per_cluster = int(slots_per_cluster)
        self.sampling = sampling
        self.seed = int(seed)
        self.key_feature = key_feature
        self.feature_specs = {k: (tuple(v[0]), str(v[1])) for k, v in feature_specs.items()}
        capacity = self.num_clusters * self.slots_per_cluster
        self.capacity = capacity
        state = dict(initializer="zeros", trainable=False, synchronization=tf.VariableSynchronization.ON_WRITE,
                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.stored = {name: self.add_weight(name=name, shape=(capacity, *shape), dtype=dtype, **state)
                       for name, (shape, dtype) in self.feature_specs.items()}
        self.item_key = (self.stored[key_feature] if key_feature else
                         self.add_weight(name="item_key", shape=(capacity,), dtype=tf.int64, **state))
        self.valid = self.add_weight(name="valid", shape=(capacity,), dtype=tf.bool, **state)
        self.segment_filled = self.add_weight(name="segment_filled", shape=(capacity,), dtype=tf.int64, **state)
        self.segment_count = self.add_weight(name="segment_count", shape=(self.num_clusters,), dtype=tf.int64,
                                             **state)
        self.pool_filled = self.add_weight(name="pool_filled", shape=(capacity,), dtype=tf.int64, **state)
        self.total_filled = self.add_weight(name="total_filled", shape=(), dtype=tf.int64, **state)
        self.rng = tf.random.Generator.from_seed(self.seed)

    # -- keys and slots -------------------------------------------------------------------
    @staticmethod
    def keys(item_ids: tf.Tensor) -> tf.Tensor:
        """Integer keys of item ids [...]: the id for integers, a 63-bit hash for strings."""
        if item_ids.dtype == tf.string:
            return tf.strings.to_hash_bucket_fast(item_ids, 2**63 - 1)
        return tf.cast(item_ids, tf.int64)

    def slots(self, item_ids: tf.Tensor, cluster_ids: tf.Tensor) -> tf.Tensor:
        """Slot of each item [B]: cluster_id * S + key % S (int64)."""
        s = tf.constant(self.slots_per_cluster, tf.int64)
        return tf.cast(cluster_ids, tf.int64) * s + tf.math.floormod(self.keys(item_ids), s)

    # -- update engine --------------------------------------------------------------------
    def update(self, item_ids: tf.Tensor, cluster_ids: tf.Tensor, features: Mapping[str, tf.Tensor],
               gathered: bool = False) -> None:
        """Writes a batch of items into their slots.

        item_ids: [B] int or string; cluster_ids: [B] int in [0, C); features[name]: [B, *shape].
        gathered: the items are already every replica's (`gather_replicas`' output, or the caller's
        own all-gather in replica order), so they are not gathered again.
        """
        missing = set(self.feature_specs) - set(features)
        if missing:
            raise ValueError(f"update() is missing stored features {sorted(missing)}")
        cluster_ids = tf.cast(cluster_ids, tf.int64)
        if not gathered:
            item_ids, cluster_ids, features = self.gather_replicas(item_ids, cluster_ids, features)
        tf.debugging.assert_less(cluster_ids, tf.constant(self.num_clusters, tf.int64),
                                 message=f"cluster id out of range [0, {self.num_clusters})")
        tf.debugging.assert_non_negative(cluster_ids, message="negative cluster id")
        slots = self.slots(item_ids, cluster_ids)
        unique_slots, last = last_occurrences(slots)
        self._append_new_slots(unique_slots)
        for name, variable in self.stored.items():
            variable.scatter_update(tf.IndexedSlices(tf.gather(features[name], last), unique_slots))
        if not self.key_feature:
            self.item_key.scatter_update(tf.IndexedSlices(tf.gather(self.keys(item_ids), last), unique_slots))
        self.valid.scatter_update(tf.IndexedSlices(tf.ones_like(unique_slots, dtype=tf.bool), unique_slots))

    def gather_replicas(self, item_ids: tf.Tensor, cluster_ids: tf.Tensor, features: Mapping[str, tf.Tensor]):
        """Every replica's items, in replica order, under a strategy with several replicas (so that every
        replica writes every item and the copies stay identical); the arguments otherwise. The int64
        columns (cluster ids, scalar int64 features, integer item ids unless they are the key feature)
        travel as one [B, n] tensor: one all-gather per step, of 8 bytes per row and column (the
        trainer's pool: cluster and item index, n = 2)."""
        replica = tf.distribute.get_replica_context()
        if replica is None or replica.num_replicas_in_sync == 1:
            return item_ids, cluster_ids, features
        packed = [n for n in self.feature_specs if self.feature_specs[n] == ((), "int64")]
        ids_column = item_ids.dtype == tf.int64 and not self.key_feature
        columns = [cluster_ids] + [features[n] for n in packed] + ([item_ids] if ids_column else [])
        gathered = tf.unstack(replica.all_gather(tf.stack([tf.cast(c, tf.int64) for c in columns], axis=1), 0),
                              len(columns), axis=1)
        features = {n: gathered[1 + packed.index(n)] if n in packed else replica.all_gather(features[n], 0)
                    for n in self.feature_specs}
        if self.key_feature:  # the items are written with the key feature as their id
            item_ids = features[self.key_feature]
        else:
            item_ids = gathered[-1] if ids_column else replica.all_gather(item_ids, 0)
        return item_ids, gathered[0], features

    def _append_new_slots(self, unique_slots: tf.Tensor) -> None:
        """Appends the slots of `unique_slots` [U] that were empty until now to the filled lists."""
        new = tf.sort(tf.boolean_mask(unique_slots, tf.logical_not(tf.gather(self.valid, unique_slots))))
        segment = tf.math.floordiv(new, self.slots_per_cluster)  # sorted, as `new` is
        rank = tf.range(tf.size(new), dtype=tf.int64) - tf.searchsorted(segment, segment, side="left",
                                                                          out_type=tf.int64)
        offset = segment * self.slots_per_cluster + tf.gather(self.segment_count, segment) + rank
        self.segment_filled.scatter_update(tf.IndexedSlices(new, offset))
        self.segment_count.scatter_add(tf.IndexedSlices(tf.ones_like(segment), segment))
        self.pool_filled.scatter_update(tf.IndexedSlices(new, self.total_filled + tf.range(tf.size(new),
                                                                                             dtype=tf.int64)))
        self.total_filled.assign_add(tf.size(new, out_type=tf.int64))

    # -- sampling engine ------------------------------------------------------------------
    def uniform(self, shape, minval=0, maxval=None, dtype=tf.float32) -> tf.Tensor:
        """Uniform random values of `shape` from the pool's generator: the generator makes a seed
        (its state advances by the same amount whatever the shape) for a stateless op. Replicas
        whose batches differ in size (uneven slices of a global batch) therefore keep identical
        generator states, which a checkpoint (the first replica's state) restores exactly; drawing
        `shape` from the generator itself would advance each replica's state by its own amount."""
        seed = self.rng.make_seeds(1)[:, 0]  # per replica: the generator hashes the replica id into the key
        return tf.random.stateless_uniform(shape, seed, minval=minval, maxval=maxval, dtype=dtype)

    def _uniform_rank(self, counts: tf.Tensor, k: int) -> tf.Tensor:
        """k uniform ranks in [0, counts[b]) per example (0 where counts[b] is 0): [B, k] int64."""
        u = self.uniform([tf.shape(counts)[0], k], dtype=tf.float64)
        rank = tf.cast(u * tf.cast(counts[:, None], tf.float64), tf.int64)
        return tf.minimum(rank, tf.maximum(counts[:, None] - 1, 0))

    def _gather(self, slots: tf.Tensor, ok: tf.Tensor) -> dict[str, tf.Tensor]:
        out = {name: tf.gather(variable, slots) for name, variable in self.stored.items()}
        out["item_key"] = out[self.key_feature] if self.key_feature else tf.gather(self.item_key, slots)
        out["valid"] = ok
        return out

    def sample_cluster(self, cluster_ids: tf.Tensor, k: int) -> dict[str, tf.Tensor]:
        """k draws from the segment of each example's cluster.

        cluster_ids: [B]. Returns every stored feature [B, k, *shape], `item_key` [B, k] and
        `valid` [B, k] bool (False: the draw found no item).
        """
        cluster_ids = tf.cast(cluster_ids, tf.int64)
        start = cluster_ids[:, None] * self.slots_per_cluster
        if self.sampling == "slot":
            slots = start + self.uniform([tf.shape(cluster_ids)[0], k], 0, self.slots_per_cluster, tf.int64)
            return self._gather(slots, tf.gather(self.valid, slots))
        counts = tf.gather(self.segment_count, cluster_ids)
        slots = tf.gather(self.segment_filled, start + self._uniform_rank(counts, k))
        return self._gather(slots, tf.broadcast_to(counts[:, None] > 0, tf.shape(slots)))

    def sample_random(self, batch_size: tf.Tensor, k: int) -> dict[str, tf.Tensor]:
        """k draws per example from the whole pool; same outputs as `sample_cluster`."""
        if self.sampling == "slot":
            slots = self.uniform([batch_size, k], 0, self.capacity, tf.int64)
            return self._gather(slots, tf.gather(self.valid, slots))
        counts = tf.fill([batch_size], self.total_filled.read_value())
        slots = tf.gather(self.pool_filled, self._uniform_rank(counts, k))
        return self._gather(slots, tf.broadcast_to(counts[:, None] > 0, tf.shape(slots)))

    def sample_shared(self, cluster_ids: tf.Tensor, weights: tf.Tensor, num_random: int,
                      num_cluster: int) -> dict[str, tf.Tensor]:
        """Draws for a whole batch (shared negatives): `num_random` from the whole pool, then the cluster
        share split among the distinct clusters of the batch's positives (`allocate_draws`).

        cluster_ids, weights: [B]. Returns every stored feature [N, *shape], `item_key` [N], `valid` [N],
        `source` [N] int32 (1 random, 2 cluster: indices into losses.SOURCES), `clusters` [U] and
        `draws` [U] (the allocation; N = num_random + sum(draws))."""
        parts = []
        if num_random:
            parts.append(self.sample_random(1, num_random))
        clusters, draws = allocate_draws(cluster_ids, weights, num_cluster)
        if num_cluster:
            parts.append(self.sample_cluster(tf.repeat(clusters, draws), 1))
        else:
            clusters, draws = clusters[:0], draws[:0]
        if not parts:
            raise ValueError("ask for at least one random or cluster draw")
        out = {name: tf.concat([tf.reshape(p[name], tf.concat([[-1], tf.shape(p[name])[2:]], 0)) for p in parts],
                               axis=0) for name in parts[0]}
        out["source"] = tf.concat([tf.fill([num_random], 1), tf.fill([tf.reduce_sum(tf.cast(draws, tf.int32))], 2)],
                                  axis=0)
        out["clusters"], out["draws"] = clusters, draws
        return out

    def draw_probabilities(self, cluster_ids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Probability that ONE draw returns a given pooled item, per example: (random [B], cluster [B]).

        cluster_ids: [B]. 'filled': 1 / filled slots of the pool, and 1 / filled slots of the
        example's segment for an item of that segment (0 when there is none); 'slot': 1 / (C*S)
        and 1 / S. For the cluster draws it applies only to items of the example's cluster.
        """
        cluster_ids = tf.cast(cluster_ids, tf.int64)
        if self.sampling == "slot":
            batch = tf.shape(cluster_ids)[0]
            return (tf.fill([batch], 1.0 / self.capacity), tf.fill([batch], 1.0 / self.slots_per_cluster))
        filled = tf.cast(tf.gather(self.segment_count, cluster_ids), tf.float32)
        total = tf.cast(self.total_filled, tf.float32)
        inverse = lambda n: tf.math.divide_no_nan(tf.ones_like(n), n)  # noqa: E731
        return inverse(tf.fill(tf.shape(filled), total)), inverse(filled)

    def contains(self, item_ids: tf.Tensor, cluster_ids: tf.Tensor) -> tf.Tensor:
        """Whether each item [...] (with its cluster [...]) is in the pool now: [...] bool."""
        slots = self.slots(item_ids, cluster_ids)
        return tf.logical_and(tf.gather(self.valid, slots), tf.equal(tf.gather(self.item_key, slots),
                                                                     self.keys(item_ids)))

    def fingerprint(self) -> tf.Tensor:
        """An int64 digest of the pool's contents (each filled slot's key, the filled lists): equal on
        copies that hold the same items in the same slots, so replicas can check that theirs agree."""
        weight = 2 * tf.range(self.capacity, dtype=tf.int64) + 1  # int64 products wrap: a digest, not a sum
        keys = tf.where(self.valid, self.item_key, tf.zeros_like(self.item_key))
        return (tf.reduce_sum(keys * weight) + tf.reduce_sum(self.pool_filled * weight)
                + tf.reduce_sum(self.segment_filled * weight) + self.total_filled)

    def fill_rate(self) -> tf.Tensor:
        """Share of filled slots (scalar float32)."""
        return tf.cast(self.total_filled, tf.float32) / self.capacity

    def call(self, cluster_ids: tf.Tensor, num_random: int = 0, num_cluster: int = 0) -> dict[str, tf.Tensor]:
        """Random and cluster draws concatenated along axis 1: [B, num_random + num_cluster, ...]."""
        parts = []
        if num_random:
            parts.append(self.sample_random(tf.shape(cluster_ids)[0], num_random))
        if num_cluster:
            parts.append(self.sample_cluster(cluster_ids, num_cluster))
        if not parts:
            raise ValueError("ask for at least one random or cluster draw")
        return {name: tf.concat([p[name] for p in parts], axis=1) for name in parts[0]}

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(num_clusters=self.num_clusters, slots_per_cluster=self.slots_per_cluster,
                      feature_specs={k: [list(s), d] for k, (s, d) in self.feature_specs.items()},
                      sampling=self.sampling, seed=self.seed, key_feature=self.key_feature)
        return config


class EmbeddingCache(tf_keras.layers.Layer):
    """The candidate tower's output for every vocabulary row as of its last computation: pool draws read
    their embeddings here instead of being re-embedded (`negative_embeddings='cached'`).

    Cross-batch negatives (Wang et al., SIGIR 2021) keep a FIFO of recent batches' embeddings; this keeps
    one row per item instead, so a draw of any pooled item finds its embedding, and the pool's sampling
    distributions (and their logQ correction) are unchanged. A row is written with the item's fresh
    embedding whenever it is a positive, and the trainer re-embeds the rows `next_rows` hands out (the
    vocabulary round-robin) every step, so no row is older than rows / (swept rows a step) steps. Nothing
    flows back into a row: a cached negative's gradient reaches the queries only (tf_keras and TFRS have no
    such table; XBM-style memories in the literature are written by hand as well).

    State (non-trainable, checkpointed, not served): `table` [rows, d] float32, `sweep_at` [] int64, the next
    row of the sweep. Per step: a gather of the draws' rows, a scatter of B + swept rows: O((B x K + R) d)
    whatever the catalogue; memory 4 x d bytes a row. Under a strategy every replica holds a copy; writes of
    positives are all-gathered (as the pool's) and the sweep is the same rows on every replica.
    """

    def __init__(self, rows: int, dim: int, **kwargs):
        kwargs.pop("trainable", None)
        super().__init__(trainable=False, **kwargs)
        if rows < 1 or dim < 1:
            raise ValueError(f"rows and dim must be >= 1, got {rows} and {dim}")
        self.rows, self.dim = int(rows), int(dim)
        state = dict(initializer="zeros", trainable=False, synchronization=tf.VariableSynchronization.ON_WRITE,
                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.table = self.add_weight(name="table", shape=(self.rows, self.dim), dtype=tf.float32, **state)
        self.sweep_at = self.add_weight(name="sweep_at", shape=(), dtype=tf.int64, **state)

    def read(self, index: tf.Tensor) -> tf.Tensor:
        """index [...] int64 rows -> [..., d] (no gradient)."""
        return tf.stop_gradient(tf.gather(self.table, index))

    def write(self, index: tf.Tensor, embeddings: tf.Tensor, gathered: bool = False) -> None:
        """Writes embeddings [B, d] into rows index [B]; a row repeated in the batch takes its last value.
        gathered: the rows are already every replica's (or the same on every replica), so they are not
        gathered again."""
        index, embeddings = tf.cast(index, tf.int64), tf.stop_gradient(tf.cast(embeddings, tf.float32))
        replica = tf.distribute.get_replica_context()
        if not gathered and replica is not None and replica.num_replicas_in_sync > 1:
            index, embeddings = replica.all_gather(index, 0), replica.all_gather(embeddings, 0)
        unique, last = last_occurrences(index)
        self.table.scatter_update(tf.IndexedSlices(tf.gather(embeddings, last), unique))

    def next_rows(self, count: int) -> tf.Tensor:
        """The next `count` rows of the round-robin sweep ([min(count, rows)] int64), and advances it."""
        count = min(int(count), self.rows)
        rows = tf.math.floormod(self.sweep_at + tf.range(count, dtype=tf.int64), self.rows)
        self.sweep_at.assign(tf.math.floormod(self.sweep_at + count, self.rows))
        return rows

    def get_config(self) -> dict:
        return {**super().get_config(), "rows": self.rows, "dim": self.dim}
