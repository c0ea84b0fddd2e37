"""The cluster-segmented out-of-batch item pool (paper §4, Algorithms 1 and 2)."""

from __future__ import annotations

from collections.abc import Mapping

import tensorflow as tf
import tf_keras

SAMPLINGS = ("filled", "slot")


class ClusterPool(tf_keras.layers.Layer):
    """Out-of-batch item pool of C cluster segments x S slots, updated by scatter, read by gather.

    State (non-trainable `tf.Variable`s, created once in `__init__`, afterwards only assigned):
      `<feature>`: [C*S, *shape] for every stored item feature (e.g. the item's vocabulary
        index); sampled negatives are re-embedded by the current item tower, so the pool holds
        features, never embeddings.
      `item_key`: [C*S] int64, the integer key of the item in the slot (the id itself for integer
        ids, a 63-bit hash for string ids); used to mask samples equal to the positive.
      `valid`: [C*S] bool, whether the slot has ever been filled.
      a `tf.random.Generator` for sampling.
    All of it is checkpointed with the model (training state) and none of it is part of a
    serving SavedModel.

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
    uniform over the filled slots of the whole pool (or over all slots with 'slot').
    `draw_probabilities` and `contains` give what a sampled-softmax correction needs: the
    probability that one draw returns a given pooled item, and whether an item is in the pool.
    """

    def __init__(self, num_clusters: int, slots_per_cluster: int,
                 feature_specs: Mapping[str, tuple[tuple[int, ...], str]],
                 sampling: str = "filled", seed: int = 0, **kwargs):
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
        self.num_clusters = int(num_clusters)
        self.slots_per_cluster = int(slots_per_cluster)
        self.sampling = sampling
        self.seed = int(seed)
        self.feature_specs = {k: (tuple(v[0]), str(v[1])) for k, v in feature_specs.items()}
        capacity = self.num_clusters * self.slots_per_cluster
        self.capacity = capacity
        state = dict(initializer="zeros", trainable=False, synchronization=tf.VariableSynchronization.ON_WRITE,
                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.stored = {name: self.add_weight(name=name, shape=(capacity, *shape), dtype=dtype, **state)
                       for name, (shape, dtype) in self.feature_specs.items()}
        self.item_key = self.add_weight(name="item_key", shape=(capacity,), dtype=tf.int64, **state)
        self.valid = self.add_weight(name="valid", shape=(capacity,), dtype=tf.bool, **state)
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
    def update(self, item_ids: tf.Tensor, cluster_ids: tf.Tensor, features: Mapping[str, tf.Tensor]) -> None:
        """Writes a batch of items into their slots.

        item_ids: [B] int or string; cluster_ids: [B] int in [0, C); features[name]: [B, *shape].
        """
        missing = set(self.feature_specs) - set(features)
        if missing:
            raise ValueError(f"update() is missing stored features {sorted(missing)}")
        cluster_ids = tf.cast(cluster_ids, tf.int64)
        replica = tf.distribute.get_replica_context()
        if replica is not None and replica.num_replicas_in_sync > 1:  # every replica writes every item
            item_ids, cluster_ids = replica.all_gather(item_ids, 0), replica.all_gather(cluster_ids, 0)
            features = {name: replica.all_gather(features[name], 0) for name in self.feature_specs}
        tf.debugging.assert_less(cluster_ids, tf.constant(self.num_clusters, tf.int64),
                                 message=f"cluster id out of range [0, {self.num_clusters})")
        tf.debugging.assert_non_negative(cluster_ids, message="negative cluster id")
        slots = self.slots(item_ids, cluster_ids)
        unique_slots, position = tf.unique(slots)
        last = tf.math.unsorted_segment_max(tf.range(tf.size(slots)), position, tf.size(unique_slots))
        for name, variable in self.stored.items():
            variable.scatter_update(tf.IndexedSlices(tf.gather(features[name], last), unique_slots))
        self.item_key.scatter_update(tf.IndexedSlices(tf.gather(self.keys(item_ids), last), unique_slots))
        self.valid.scatter_update(tf.IndexedSlices(tf.ones_like(unique_slots, dtype=tf.bool), unique_slots))

    # -- sampling engine ------------------------------------------------------------------
    def _draw(self, valid_rows: tf.Tensor, rows: tf.Tensor, k: int) -> tuple[tf.Tensor, tf.Tensor]:
        """k draws for each example from its row of valid_rows [R, W] (rows: [B] row per example).

        Returns (position in the row [B, k] int32, found [B, k] bool).
        'filled' orders each row's filled positions first once (an argsort of R x W, not B x W)
        and picks the rank-th filled position for a uniform rank.
        """
        batch, width = tf.shape(rows)[0], tf.shape(valid_rows)[1]
        rows = tf.cast(rows, tf.int32)
        if self.sampling == "slot":
            position = self.rng.uniform([batch, k], 0, width, dtype=tf.int32)
            ok = tf.gather_nd(valid_rows, tf.stack([tf.broadcast_to(rows[:, None], [batch, k]), position], -1))
            return position, ok
        filled_first = tf.argsort(tf.cast(tf.logical_not(valid_rows), tf.int32), axis=1, stable=True)  # [R, W]
        filled = tf.gather(tf.reduce_sum(tf.cast(valid_rows, tf.int32), axis=1), rows)[:, None]  # [B, 1]
        u = self.rng.uniform([batch, k], dtype=tf.float32)
        rank = tf.minimum(tf.cast(u * tf.cast(filled, tf.float32), tf.int32), tf.maximum(filled - 1, 0))
        position = tf.gather_nd(filled_first, tf.stack([tf.broadcast_to(rows[:, None], [batch, k]), rank], -1))
        return position, tf.broadcast_to(filled > 0, [batch, k])

    def _gather(self, slots: tf.Tensor, ok: tf.Tensor) -> dict[str, tf.Tensor]:
        out = {name: tf.gather(variable, slots) for name, variable in self.stored.items()}
        out["item_key"] = tf.gather(self.item_key, slots)
        out["valid"] = ok
        return out

    def sample_cluster(self, cluster_ids: tf.Tensor, k: int) -> dict[str, tf.Tensor]:
        """k draws from the segment of each example's cluster.

        cluster_ids: [B]. Returns every stored feature [B, k, *shape], `item_key` [B, k] and
        `valid` [B, k] bool (False: the draw found no item).
        """
        cluster_ids = tf.cast(cluster_ids, tf.int64)
        segments = tf.reshape(self.valid, [self.num_clusters, self.slots_per_cluster])
        position, ok = self._draw(segments, cluster_ids, k)
        slots = cluster_ids[:, None] * self.slots_per_cluster + tf.cast(position, tf.int64)
        return self._gather(slots, ok)

    def sample_random(self, batch_size: tf.Tensor, k: int) -> dict[str, tf.Tensor]:
        """k draws per example from the whole pool; same outputs as `sample_cluster`."""
        position, ok = self._draw(self.valid[None, :], tf.zeros([batch_size], tf.int64), k)
        return self._gather(tf.cast(position, tf.int64), ok)

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
        per_segment = tf.reduce_sum(tf.cast(tf.reshape(self.valid, [self.num_clusters, -1]), tf.float32), axis=1)
        filled = tf.gather(per_segment, cluster_ids)
        total = tf.reduce_sum(per_segment)
        inverse = lambda n: tf.math.divide_no_nan(tf.ones_like(n), n)  # noqa: E731
        return inverse(tf.fill(tf.shape(filled), total)), inverse(filled)

    def contains(self, item_ids: tf.Tensor, cluster_ids: tf.Tensor) -> tf.Tensor:
        """Whether each item [...] (with its cluster [...]) is in the pool now: [...] bool."""
        slots = self.slots(item_ids, cluster_ids)
        return tf.logical_and(tf.gather(self.valid, slots), tf.equal(tf.gather(self.item_key, slots),
                                                                     self.keys(item_ids)))

    def fill_rate(self) -> tf.Tensor:
        """Share of filled slots (scalar float32)."""
        return tf.reduce_mean(tf.cast(self.valid, tf.float32))

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
                      sampling=self.sampling, seed=self.seed)
        return config
