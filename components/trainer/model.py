"""The two-tower model, its training step with mixed negatives, and the serving towers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tf_keras

from llm_hardneg.components.trainer.config import TrainerConfig
from llm_hardneg.components.trainer.data import ItemCatalogue, pair_keys
from llm_hardneg.components.trainer.losses import expected_counts, full_softmax_loss, log_count, mixed_negatives_loss
from llm_hardneg.components.trainer.pool import ClusterPool, EmbeddingCache


def in_history(ids: tf.Tensor, history: tf.Tensor) -> tf.Tensor:
    """ids [B, K] item indices, history [B, N] item indices (0 = padding) -> [B, K] bool:
    whether each draw is one of its own user's history items."""
    same = tf.equal(ids[:, :, None], history[:, None, :])
    return tf.reduce_any(tf.logical_and(same, history[:, None, :] > 0), axis=-1)


def full_softmax_bytes(items: int, batch: int, dim: int) -> int:
    """Estimated float32 bytes of one 'full' step: the [batch, items] logits with their softmax and gradient
    (3 x batch per item) and the candidate tower's activations over the catalogue with their gradients
    (about 20 x dim per item: embeddings, MLP layers, normalisation, forward and backward)."""
    return 4 * items * (3 * batch + 20 * dim)


def index_table(keys: Sequence[str], first: int, default: int) -> tf.lookup.StaticHashTable:
    """keys[i] -> first + i, anything else -> default. A C++ hash table, not a Keras StringLookup:
    for 10^6 keys it builds in 0.6 s (StringLookup: 11 s) and an eager lookup of 65k ids takes
    25 ms (StringLookup: 1.7 s), which decides the set-up time of a 10^7-item trainer."""
    keys = tf.constant(np.asarray(keys, dtype=object).astype(str) if len(keys) else np.zeros([0], str), tf.string)
    values = tf.range(first, first + tf.size(keys, out_type=tf.int64), dtype=tf.int64)
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), default_value=default)


class ItemFeatures(tf_keras.layers.Layer):
    """Item id -> vocabulary index and cluster id, from the catalogue (a lookup in the model, so
    cluster tables can be swapped without rewriting examples).

    Index 0 is padding (''), 1 is an unknown item, 2.. the catalogue in order; the cluster of
    padding and unknown items is `num_clusters` (an extra cluster embedding row).
    """

    def __init__(self, catalogue: ItemCatalogue, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.table = index_table(catalogue.item_ids, first=2, default=1)
        self.num_clusters = catalogue.num_clusters
        self.vocabulary_size = len(catalogue.item_ids) + 2
        unknown = [catalogue.num_clusters, catalogue.num_clusters]
        self.cluster_of_index = tf.constant(np.concatenate([unknown, catalogue.cluster_ids]), tf.int64)
        self.probability_of_index = tf.constant(
            np.concatenate([[0.0, 0.0], catalogue.sampling_probability]), tf.float32)

    def call(self, item_ids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """item_ids: [...] string -> (index [...] int64, cluster [...] int64)."""
        index = self.lookup(item_ids)
        return index, tf.gather(self.cluster_of_index, index)

    def lookup(self, item_ids: tf.Tensor) -> tf.Tensor:
        """item_ids: [...] string -> vocabulary index [...] int64 (0 = '' padding, 1 = unknown)."""
        return tf.where(tf.equal(item_ids, ""), tf.constant(0, tf.int64), self.table.lookup(item_ids))


def _output(x: tf.Tensor, normalize: bool) -> tf.Tensor:
    """A tower's output: L2-normalised for similarity 'cosine', as is for 'dot'."""
    return tf.math.l2_normalize(x, axis=-1) if normalize else x


def _mlp(dim: int, name: str) -> tf_keras.Sequential:
    return tf_keras.Sequential([tf_keras.layers.Dense(2 * dim, activation="relu"), tf_keras.layers.Dense(dim)],
                               name=name)


class CandidateTower(tf_keras.Model):
    """Item tower: (item index, cluster id) embeddings -> MLP -> L2-normalised [.., d].

    mlp=False: the item embedding plus the cluster embedding, no layers (the transformer tower's input
    token of the item: input and output embeddings tied, as SASRec's); normalize=False: raw outputs
    (similarity 'dot').
    """

    def __init__(self, items: ItemFeatures, item_embedding, cluster_embedding, dim: int, mlp: bool = True,
                 normalize: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.items, self.item_embedding, self.cluster_embedding = items, item_embedding, cluster_embedding
        self.mlp = _mlp(dim, "candidate_mlp") if mlp else None
        self.normalize = normalize

    def call(self, item_index: tf.Tensor, lookups: tf.Tensor | None = None) -> tf.Tensor:
        """item_index: [B] int64 vocabulary index -> [B, d]. lookups: look up this many (>= B) embedding
        rows, item_index padded with 0 (their gradients are zero), to fix the sparse gradients' length."""
        padded = item_index if lookups is None else tf.pad(item_index, [[0, lookups - tf.size(item_index)]])
        cluster = tf.gather(self.items.cluster_of_index, padded)
        item, cluster = self.item_embedding(padded), self.cluster_embedding(cluster)
        if self.mlp is None:
            return _output((item + cluster)[:tf.size(item_index)], self.normalize)
        return _output(self.mlp(tf.concat([item, cluster], axis=-1)[:tf.size(item_index)]), self.normalize)

    def embed_ids(self, item_ids: tf.Tensor) -> tf.Tensor:
        """item_ids: [B] string -> [B, d]; unknown ids share the unknown-item embedding."""
        return self(self.items.lookup(item_ids))


class QueryTower(tf_keras.Model):
    """User tower: user id + pooled history item and history cluster embeddings -> MLP -> [B, d].

    history_pooling: 'mean' (every history item alike) or 'position' (a learned weight per
    history position, softmax over the filled positions; history is most recent first, so the
    tower can weight recent items up). 'position' starts equal to 'mean' (zero logits).
    """

    def __init__(self, user_ids: Sequence[str] | None, items: ItemFeatures, item_embedding, cluster_embedding,
                 dim: int, history_pooling: str, history_length: int, user_id_buckets: int = 0,
                 normalize: bool = True, **kwargs):
        """user_ids: the training users (one row each, plus one for unknown users), or None with
        user_id_buckets > 0: ids hashed (FarmHash fingerprint) into that many rows."""
        super().__init__(**kwargs)
        if user_id_buckets:
            self.user_lookup = tf_keras.layers.Hashing(num_bins=user_id_buckets, name="user_hashing")
            rows = user_id_buckets
        else:
            self.user_table = index_table(user_ids, first=1, default=0)  # 0: users not seen in training
            self.user_lookup = self.user_table.lookup
            rows = len(user_ids) + 1
        self.user_embedding = tf_keras.layers.Embedding(rows, dim, name="user_embedding")
        self.items, self.item_embedding, self.cluster_embedding = items, item_embedding, cluster_embedding
        self.history_pooling, self.history_length = history_pooling, history_length
        if history_pooling == "position":
            self.position_logits = self.add_weight(name="position_logits", shape=[history_length],
                                                   initializer="zeros")
        self.mlp = _mlp(dim, "query_mlp")
        self.normalize = normalize

    def _weights(self, index: tf.Tensor) -> tf.Tensor:
        """index [B, N] (0 = padding) -> pooling weights [B, N, 1] summing to 1 over filled positions (0 if none)."""
        mask = tf.cast(index > 0, tf.float32)
        logits = self.position_logits[None, :] if self.history_pooling == "position" else 0.0  # mean: equal logits
        return (tf.nn.softmax(logits - 1e9 * (1.0 - mask), axis=1) * mask)[..., None]

    def call(self, user_id: tf.Tensor, history_item_ids: tf.Tensor, training=None) -> tf.Tensor:
        """user_id: [B] string; history_item_ids: [B, N] string, most recent first, '' = padding -> [B, d].

        Unknown users share the out-of-vocabulary user embedding; unknown history items the
        unknown-item embedding. With 'position' pooling only the first `history_length` items count.
        """
        if self.history_pooling == "position":
            history_item_ids = history_item_ids[:, :self.history_length]
            pad = self.history_length - tf.shape(history_item_ids)[1]
            history_item_ids = tf.pad(history_item_ids, [[0, 0], [0, pad]])
        index, cluster = self.items(history_item_ids)  # [B, N]
        weights = self._weights(index)
        history = tf.reduce_sum(self.item_embedding(index) * weights, axis=1)
        clusters = tf.reduce_sum(self.cluster_embedding(cluster) * weights, axis=1)
        x = tf.concat([self.user_embedding(self.user_lookup(user_id)), history, clusters], axis=-1)
        return _output(self.mlp(x), self.normalize)


class _Block(tf_keras.layers.Layer):
    """One pre-norm transformer block: x + attention(norm(x)), then x + feed-forward(norm(x)).
    (tf_keras has MultiHeadAttention but no encoder block; keras-hub's TransformerEncoder needs Keras 3.)"""

    def __init__(self, dim: int, heads: int, dropout: float, **kwargs):
        super().__init__(**kwargs)
        self.attention_norm = tf_keras.layers.LayerNormalization(epsilon=1e-6)
        self.attention = tf_keras.layers.MultiHeadAttention(heads, dim // heads, dropout=dropout)
        self.feed_forward_norm = tf_keras.layers.LayerNormalization(epsilon=1e-6)
        self.feed_forward = tf_keras.Sequential([tf_keras.layers.Dense(dim, activation="gelu"),
                                                 tf_keras.layers.Dense(dim)])
        self.dropout = tf_keras.layers.Dropout(dropout)

    def call(self, x: tf.Tensor, attention_mask: tf.Tensor, training=None, last_only: bool = False) -> tf.Tensor:
        """x [B, N, d], attention_mask [B, N, N] bool (query, key) -> [B, N, d]; with last_only the last
        position's output alone, [B, 1, d] (every position is still a key: 1/N of the queries' work)."""
        y = self.attention_norm(x)
        query = y[:, -1:] if last_only else y
        if last_only:
            x, attention_mask = x[:, -1:], attention_mask[:, -1:]
        x = x + self.dropout(self.attention(query, y, attention_mask=attention_mask, training=training),
                             training=training)
        return x + self.dropout(self.feed_forward(self.feed_forward_norm(x)), training=training)


class TransformerQueryTower(tf_keras.Model):
    """User tower of SASRec's kind: causal self-attention over the history -> [B, d].

    The history (most recent first in the examples) is laid out oldest first and left-padded to
    `history_length` positions, as SASRec does; each position's input is its item embedding plus its
    cluster embedding (both shared with the candidate tower) plus a learned position embedding.
    Position i attends to the filled positions j <= i (causal; a padding position to itself alone),
    so the state at every position depends only on that item and earlier ones; the query is the state
    at the last (most recent) position, normalised and projected. The user id is accepted (the
    serving signature of every query tower) but not used. State: the position embedding [history_length, d], the blocks'
    attention, normalisation and feed-forward weights, the output projection [d, d]; all are
    checkpointed and exported in the query SavedModel.
    """

    def __init__(self, items: ItemFeatures, item_embedding, cluster_embedding, dim: int, history_length: int,
                 blocks: int, heads: int, dropout: float, normalize: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.items, self.item_embedding, self.cluster_embedding = items, item_embedding, cluster_embedding
        self.history_length, self.normalize = history_length, normalize
        self.position_embedding = tf_keras.layers.Embedding(history_length, dim, name="position_embedding")
        self.input_norm = tf_keras.layers.LayerNormalization(epsilon=1e-6)
        self.input_dropout = tf_keras.layers.Dropout(dropout)
        self.blocks = [_Block(dim, heads, dropout, name=f"block_{i}") for i in range(blocks)]
        self.output_norm = tf_keras.layers.LayerNormalization(epsilon=1e-6)
        self.output_projection = tf_keras.layers.Dense(dim, name="output_projection")

    def sequence_states(self, index: tf.Tensor, training=None, last_only: bool = False) -> tf.Tensor:
        """index [B, N] vocabulary indices, oldest first, 0 = padding -> states [B, N, d] (each position's
        from itself and earlier filled positions only); with last_only the last position's, [B, 1, d] (the
        last block then attends from that position alone: the same values, for about half the work)."""
        length = tf.shape(index)[1]
        filled = index > 0
        positions = tf.range(length)
        causal = positions[None, :] <= positions[:, None]  # [query i, key j]: j <= i
        itself = tf.equal(positions[None, :], positions[:, None])  # a padding position attends to itself alone
        mask = tf.logical_and(causal[None], tf.logical_or(filled[:, None, :], itself[None]))
        x = (self.item_embedding(index) + self.cluster_embedding(tf.gather(self.items.cluster_of_index, index))
             + self.position_embedding(tf.range(length))[None])
        x = self.input_dropout(self.input_norm(x), training=training)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, training=training, last_only=last_only and i == len(self.blocks) - 1)
        return self.output_norm(x)

    def call(self, user_id: tf.Tensor, history_item_ids: tf.Tensor, training=None) -> tf.Tensor:
        """user_id: [B] string (unused); history_item_ids: [B, N] string, most recent first, '' = padding ->
        [B, d]. Only the first `history_length` items count."""
        del user_id
        history = history_item_ids[:, :self.history_length]
        history = tf.pad(history, [[0, 0], [0, self.history_length - tf.shape(history)[1]]])
        index = tf.reverse(self.items.lookup(history), axis=[1])  # oldest first, padding on the left
        return self.project(self.sequence_states(index, training=training, last_only=True)[:, -1])

    def project(self, state: tf.Tensor) -> tf.Tensor:
        """states [..., d] -> queries [..., d]: the output projection (L2-normalised for 'cosine')."""
        return _output(self.output_projection(state), self.normalize)


def make_query_tower(config: TrainerConfig, user_ids: Sequence[str] | None, items: ItemFeatures, item_embedding,
                     cluster_embedding) -> tf_keras.Model:
    """The query tower that `config.query_tower` names."""
    normalize = config.similarity == "cosine"
    if config.query_tower == "transformer":
        return TransformerQueryTower(items, item_embedding, cluster_embedding, config.embedding_dim,
                                     config.history_length, config.transformer_blocks, config.transformer_heads,
                                     config.transformer_dropout, normalize=normalize, name="query")
    return QueryTower(user_ids, items, item_embedding, cluster_embedding, config.embedding_dim,
                      config.history_pooling, config.history_length, config.user_id_buckets, normalize=normalize,
                      name="query")


class TwoTowerModel(tf_keras.Model):
    """Training model: the towers, the optional out-of-batch pool and the mixed-negatives loss.

    A training batch is the dict of `data.parse_batch`. Per step: pool draws for the batch's
    positives (before the batch is written, so a positive is never drawn from its own update):
    K per example (with `negative_sharing='per_cluster'` the same K for the examples of a cluster), or with
    'shared' M for the whole batch, scored by every query;
    the candidate tower over the step's distinct items (positives and draws; with
    `negative_embeddings='cached'` the positives alone, the draws' rows read from the EmbeddingCache), loss
    and gradients, then the batch's items are written into the pool (and their embeddings into the cache).
    Strategy 'full' scores every query against the whole catalogue instead (no pool).
    """

    def __init__(self, config: TrainerConfig, catalogue: ItemCatalogue, user_ids: Sequence[str] | None,
                 user_positive_keys: np.ndarray | None = None, **kwargs):
        """user_positive_keys: data.user_positive_keys of the training data, needed by `mask_user_positives`."""
        super().__init__(**kwargs)
        self.config = config
        dim = config.embedding_dim
        self.items = ItemFeatures(catalogue, name="item_features")
        item_embedding = tf_keras.layers.Embedding(self.items.vocabulary_size, dim, name="item_embedding")
        cluster_embedding = tf_keras.layers.Embedding(catalogue.num_clusters + 1, dim, name="cluster_embedding")
        self.query_tower = make_query_tower(config, user_ids, self.items, item_embedding, cluster_embedding)
        self.candidate_tower = CandidateTower(self.items, item_embedding, cluster_embedding, dim,
                                              mlp=config.candidate_tower == "mlp",
                                              normalize=config.similarity == "cosine", name="candidate")
        self.num_random, self.num_cluster = config.negative_split()
        if config.strategy == "full":
            need = full_softmax_bytes(len(catalogue.item_ids), config.batch_size, dim)
            if need > config.full_softmax_memory_mb * 2**20:
                raise ValueError(
                    f"strategy 'full' over {len(catalogue.item_ids):,} items with batch {config.batch_size} needs "
                    f"about {need / 2**20:,.0f} MB a step ([batch, items] logits and the tower over the catalogue), "
                    f"more than full_softmax_memory_mb={config.full_softmax_memory_mb}: raise it if the machine has "
                    "the memory, or use a sampled strategy")
        self.pool = None
        if config.uses_pool:
            slots = config.slots_for(len(catalogue.item_ids), catalogue.num_clusters)
            # A vocabulary that leaves items out (item_vocabulary 'trained' or 'base') has training targets on
            # the unknown-item row, whose cluster is the extra one, C: it gets a segment of its own (holding only
            # that row, so such an example's cluster draws find nothing but its own positive, which is masked)
            segments = catalogue.num_clusters + (config.item_vocabulary != "catalogue")
            self.pool = ClusterPool(segments, slots, {"item_index": ((), "int64")},
                                    sampling=config.pool_sampling, seed=config.seed, key_feature="item_index",
                                    name="pool")
        # negative_embeddings 'cached': pool draws read their rows here instead of through the tower
        self.cache = EmbeddingCache(self.items.vocabulary_size, dim, name="negative_cache") \
            if config.caches_negatives else None
        self.user_positives = None
        if config.mask_user_positives:
            if user_positive_keys is None:
                raise ValueError("mask_user_positives needs the training data's user_positive_keys")
            keys = tf.constant(user_positive_keys, tf.int64)
            self.user_positives = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(keys, tf.ones_like(keys, dtype=tf.int64)), default_value=0)
            self.item_id_of_index = tf.constant(np.concatenate([["", ""], catalogue.item_ids]).astype(str))
        # every replica's trackers see the same, global, figures (_across_replicas): report the first's
        # (Keras' default sums the replicas' results)
        self.distribute_reduction_method = "first"
        self.trackers = {name: tf_keras.metrics.Mean(name=name) for name in
                         ("loss", "mass_in_batch", "mass_random", "mass_cluster", "mass_edis", "negative_masked_rate",
                          "negative_hit_rate", "negative_history_rate", "negative_user_positive_rate", "pool_fill",
                          "pool_draws", "embedded_rows", "targets_per_step", "targets_skipped_rate",
                          "in_batch_same_user_rate")}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def preload_pool(self, catalogue: ItemCatalogue, chunk: int = 65536) -> None:
        """Fills the pool from the item table before step 1 (paper: pre-loading), and with 'cached' negative
        embeddings the cache with the initial tower's output for every vocabulary row (O(items), once)."""
        if self.pool is None:
            return
        for start in range(0, len(catalogue.item_ids), chunk):
            index, cluster = self.items(tf.constant(catalogue.item_ids[start:start + chunk].tolist()))
            self.pool.update(index, cluster, {"item_index": index})
        if self.cache is not None:
            for start in range(0, self.cache.rows, chunk):
                rows = tf.range(start, min(start + chunk, self.cache.rows), dtype=tf.int64)
                self.cache.write(rows, self.candidate_tower(rows))

    def is_user_positive(self, user_id: tf.Tensor, item_index: tf.Tensor) -> tf.Tensor:
        """user_id [B] string, item_index [B, K] vocabulary indices -> [B, K] bool: is the item a
        training positive of the user (needs `mask_user_positives`)."""
        keys = pair_keys(tf.broadcast_to(user_id[:, None], tf.shape(item_index)),
                         tf.gather(self.item_id_of_index, item_index))
        return self.user_positives.lookup(keys) > 0

    def _edis(self, positive: tf.Tensor, negatives: tf.Tensor, valid: tf.Tensor):
        """ESANS EDIS: virtual negatives between the positive [B, d] and pool negatives [B, K, d].

        Returns (virtual [B, E, d], valid [B, E], source [B, E]: the pool column each was made from)."""
        batch, k, e = tf.shape(negatives)[0], tf.shape(negatives)[1], self.config.edis_negatives
        source = self.pool.uniform([batch, e], 0, k, dtype=tf.int32)
        weight = self.pool.uniform([batch, e, 1], 0.0, self.config.edis_max_weight)
        mixed = (1.0 - weight) * tf.gather(negatives, source, batch_dims=1) + weight * positive[:, None, :]
        return tf.math.l2_normalize(mixed, axis=-1), tf.gather(valid, source, batch_dims=1), source

    def _log_counts(self, index: tf.Tensor, cluster: tf.Tensor, samples: dict[str, tf.Tensor] | None,
                    columns: tuple[tf.Tensor, tf.Tensor] | None = None):
        """The logQ correction of the in-batch columns [B, M] (or [1, M]) and the pool columns [B, K]
        (shared draws: [1, K]) (losses module docstring); (None, None) without correction. index,
        cluster: [B] the batch's items; samples: the pool's draws (`item_index` [B, K] or, shared, [K]
        with the allocation), or None; columns: (index, cluster) [M] of the in-batch candidates when
        they are not the batch's own (global in-batch negatives), whose M - 1 other rows are each
        query's in-batch draws. Call before the pool update."""
        mode = self.config.logq_correction
        probability = self.items.probability_of_index
        column_index, column_cluster = columns if columns is not None else (index, cluster)
        if mode == "none":
            return None, None
        if mode == "in_batch":
            return log_count(tf.gather(probability, column_index))[None, :], None
        in_batch_draws = tf.cast(tf.shape(column_index)[0] - 1, tf.float32)
        if self.pool is None:
            return log_count(in_batch_draws * tf.gather(probability, column_index))[None, :], None
        drawn = samples["item_index"]
        drawn_cluster = tf.gather(self.items.cluster_of_index, drawn)
        in_pool = self.pool.contains(column_index, column_cluster)[None, :]
        if self.config.shares_negatives:  # one row for every query: the rate of an item's own cluster
            def rate(item_cluster):  # [N] -> [1, N]: m_r / F + a_cluster / F_cluster
                # a draw that found no item (an empty segment or pool) has the padding row's cluster, C: it is
                # masked out of the loss, and any in-range id keeps the lookup valid
                item_cluster = tf.where(item_cluster < self.pool.num_clusters, item_cluster, 0)
                q_random, q_cluster = self.pool.draw_probabilities(item_cluster)
                return (self.num_random * q_random + self._allocated(samples, item_cluster) * q_cluster)[None, :]
            in_batch = expected_counts(in_batch_draws, tf.gather(probability, column_index)[None, :], in_pool, True,
                                       rate(column_cluster), 0.0)
            pool = expected_counts(in_batch_draws, tf.gather(probability, drawn)[None, :], True, True,
                                   rate(drawn_cluster), 0.0)
            return log_count(in_batch), log_count(pool)
        q_random, q_cluster = self.pool.draw_probabilities(cluster)
        random_rate, cluster_rate = (self.num_random * q_random)[:, None], (self.num_cluster * q_cluster)[:, None]
        # a query's cluster draws reach column j only when j is of the query's cluster, and then at the rate of
        # j's own segment: c_i(j) is one of two [M] rows, chosen per query by the cluster (two [B, M] passes,
        # equal and where, instead of building c_i(j) over [B, M])
        column_random, column_cluster_rate = self.pool.draw_probabilities(column_cluster)
        other = expected_counts(in_batch_draws, tf.gather(probability, column_index), in_pool[0], False,
                                self.num_random * column_random, 0.0)
        own = other + tf.cast(in_pool[0], tf.float32) * self.num_cluster * column_cluster_rate  # + its cluster draws
        in_batch = tf.where(tf.equal(cluster[:, None], column_cluster[None, :]), log_count(own)[None, :],
                            log_count(other)[None, :])
        pool = expected_counts(in_batch_draws, tf.gather(probability, drawn), True,
                               tf.equal(drawn_cluster, cluster[:, None]), random_rate, cluster_rate)
        return in_batch, log_count(pool)

    @staticmethod
    def _allocated(samples: dict[str, tf.Tensor], item_cluster: tf.Tensor) -> tf.Tensor:
        """Shared cluster draws of each item's cluster this step ([N] float32; 0 for a cluster without any)."""
        clusters = tf.concat([[-1], samples["clusters"]], 0)  # a sentinel first: never empty, still sorted
        draws = tf.concat([[0], samples["draws"]], 0)
        at = tf.minimum(tf.searchsorted(clusters, item_cluster), tf.size(clusters) - 1)
        return tf.cast(tf.where(tf.equal(tf.gather(clusters, at), item_cluster), tf.gather(draws, at), 0), tf.float32)

    def _all_replicas(self) -> tf.distribute.ReplicaContext | None:
        """The replica context when in-batch negatives span every replica's batch, else None."""
        replica = tf.distribute.get_replica_context()
        if self.config.global_in_batch_negatives and replica is not None and replica.num_replicas_in_sync > 1:
            return replica
        return None

    @staticmethod
    def _across_replicas(stats: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """The step's figures for the global batch, equal on every replica (one all-reduce): the loss
        summed over the replicas (each holds its share of the global mean), the rates averaged."""
        replica = tf.distribute.get_replica_context()
        if replica is None or replica.num_replicas_in_sync == 1:
            return stats
        names = sorted(stats)
        total = replica.all_reduce(tf.distribute.ReduceOp.SUM, tf.stack([tf.cast(stats[n], tf.float32) for n in names]))
        return {n: total[i] if n == "loss" else total[i] / replica.num_replicas_in_sync for i, n in enumerate(names)}

    def _embed(self, *groups: tf.Tensor) -> tuple[list[tf.Tensor], tf.Tensor]:
        """Candidate embeddings [*shape, d] of groups of vocabulary indices [*shape] in one step, and the
        rows the tower embedded (float32 scalar). With `deduplicate_candidates` the tower embeds each
        distinct index of all groups once and the rows are gathered (the gradient of a repeated item
        sums over its uses, as without it)."""
        dim = [self.config.embedding_dim]
        flat = [tf.reshape(g, [-1]) for g in groups]
        if not self.config.deduplicate_candidates:
            rows = [self.candidate_tower(f) for f in flat]
            embedded = tf.add_n([tf.size(f) for f in flat])
        else:
            unique, position = tf.unique(tf.concat(flat, 0))
            embedded = tf.size(unique)
            replica = tf.distribute.get_replica_context()
            # under several replicas the embedding gradients keep the length they have without deduplication
            # (the strategy's all-reduce of sparse gradients then pairs the replicas' collectives as before)
            lookups = tf.size(position) if replica is not None and replica.num_replicas_in_sync > 1 else None
            rows = tf.split(tf.gather(self.candidate_tower(unique, lookups=lookups), position),
                            tf.stack([tf.size(f) for f in flat]))
        return [tf.reshape(r, tf.concat([tf.shape(g), dim], 0)) for r, g in zip(rows, groups)], tf.cast(embedded,
                                                                                                          tf.float32)

    def _draw(self, batch: dict[str, tf.Tensor], cluster: tf.Tensor) -> dict[str, tf.Tensor] | None:
        """The step's pool draws: per example ([B, K]; 'per_cluster': equal rows for the examples of a cluster) or
        shared by the batch ([N]); None without a pool."""
        if self.pool is None:
            return None
        if self.config.shares_negatives:
            return self.pool.sample_shared(cluster, batch["label"], self.num_random, self.num_cluster)
        if self.config.negative_sharing == "per_cluster":
            # one set of K draws per distinct cluster of the batch, taken by every example of that cluster: each
            # example's negatives keep the per-example distribution (and correction), and the candidate tower
            # embeds at most (distinct clusters) x K draws instead of B x K
            distinct, group = tf.unique(cluster)
            drawn = self.pool(distinct, self.num_random, self.num_cluster)
            return {name: tf.gather(value, group) for name, value in drawn.items()}
        return self.pool(cluster, self.num_random, self.num_cluster)

    def _pool_negatives(self, batch: dict[str, tf.Tensor], samples: dict[str, tf.Tensor], negatives: tf.Tensor,
                        positive: tf.Tensor, pool_log_count: tf.Tensor | None, stats: dict) -> dict:
        """mixed_negatives_loss's pool arguments: masks of likely false negatives (per query), EDIS."""
        ids, valid = samples["item_index"], samples["valid"]
        sources = (samples["source"] if self.config.shares_negatives else
                   ["random"] * self.num_random + ["cluster"] * self.num_cluster)
        per_query_ids = ids  # [B, K]: a shared draw is masked per query
        if self.config.shares_negatives and (self.config.mask_history_negatives or self.user_positives is not None):
            per_query_ids = tf.broadcast_to(ids[None, :], [tf.shape(batch["label"])[0], tf.size(ids)])
            valid = tf.broadcast_to(valid[None, :], tf.shape(per_query_ids))
        if self.config.mask_history_negatives:
            history, _ = self.items(batch["history_item_ids"])
            seen = tf.logical_and(valid, in_history(per_query_ids, history))
            stats["negative_history_rate"] = tf.reduce_mean(tf.cast(seen, tf.float32))
            valid = tf.logical_and(valid, tf.logical_not(seen))
        if self.user_positives is not None:
            liked = tf.logical_and(valid, self.is_user_positive(batch["user_id"], per_query_ids))
            stats["negative_user_positive_rate"] = tf.reduce_mean(tf.cast(liked, tf.float32))
            valid = tf.logical_and(valid, tf.logical_not(liked))
        if self.config.edis_negatives:
            # a virtual negative takes the correction of the pool draw it was made from
            virtual, virtual_valid, source = self._edis(positive, negatives, valid)
            negatives = tf.concat([negatives, virtual], axis=1)
            ids = tf.concat([ids, -tf.ones_like(virtual_valid, dtype=ids.dtype)], axis=1)  # never a hit
            valid = tf.concat([valid, virtual_valid], axis=1)
            sources += ["edis"] * self.config.edis_negatives
            if pool_log_count is not None:
                pool_log_count = tf.concat([pool_log_count, tf.gather(pool_log_count, source, batch_dims=1)], axis=1)
        return dict(negatives=negatives, negative_ids=ids, negative_valid=valid, negative_log_count=pool_log_count,
                    negative_sources=sources)

    def _sequence_targets(self, batch: dict[str, tf.Tensor]) -> tuple[dict[str, tf.Tensor], tuple, dict]:
        """A batch of sequence chunks (data.parse_sequences) -> (the targets as a flat batch: item_id,
        label [M], user_id [M]; (the tower's inputs [S, L], oldest first and left-padded, the [M, 2] (row,
        position) of each target's query state); figures). Target j of a chunk (target_from <= j < length)
        is queried at the last position i < j whose timestamp is strictly earlier (the chunk's timestamps
        are in order), so a target never sees an item of its own time or later; one without such a
        position is skipped and counted (`targets_skipped_rate`)."""
        ids, stamps = batch["sequence_item_ids"], batch["sequence_timestamps"]  # [S, W], W = L + 1
        length, window = batch["sequence_length"], tf.shape(ids, out_type=tf.int64)[1]
        position = tf.range(window)[None, :]
        earlier = tf.searchsorted(stamps, stamps, side="left", out_type=tf.int64) - 1  # last strictly earlier
        target = tf.logical_and(position < length[:, None], position >= batch["target_from"][:, None])
        valid = tf.logical_and(target, earlier >= 0)
        shift = window - length  # item j of a chunk sits at input column shift + j (left padding to L = W - 1)
        source = tf.range(window - 1)[None, :] - shift[:, None]  # [S, L]: the chunk position of each column
        inputs = tf.where(source >= 0, tf.gather(self.items.lookup(ids), tf.maximum(source, 0), batch_dims=1), 0)
        rows = tf.broadcast_to(tf.range(tf.shape(ids, out_type=tf.int64)[0])[:, None], tf.shape(ids, tf.int64))
        at = tf.stack([tf.boolean_mask(rows, valid), tf.boolean_mask(shift[:, None] + earlier, valid)], axis=1)
        item_id = tf.boolean_mask(ids, valid)
        flat = {"item_id": item_id, "label": tf.ones_like(item_id, tf.float32),
                "user_id": tf.boolean_mask(tf.broadcast_to(batch["user_id"][:, None], tf.shape(ids)), valid)}
        targets = tf.reduce_sum(tf.cast(target, tf.float32))
        stats = {"targets_per_step": tf.cast(tf.size(item_id), tf.float32),
                 "targets_skipped_rate": tf.math.divide_no_nan(targets - tf.cast(tf.size(item_id), tf.float32),
                                                               targets)}
        return flat, (inputs, at), stats

    def _query(self, batch: dict[str, tf.Tensor], sequence: tuple | None) -> tf.Tensor:
        """The training queries [B, d]: the query tower on each example, or with sequence training the
        tower's states over the chunks gathered at each target's query position."""
        if sequence is None:
            return self.query_tower(batch["user_id"], batch["history_item_ids"], training=True)
        inputs, at = sequence
        return self.query_tower.project(tf.gather_nd(self.query_tower.sequence_states(inputs, training=True), at))

    def _full_softmax(self, query: tf.Tensor, batch: dict[str, tf.Tensor], index: tf.Tensor) -> tuple[tf.Tensor, dict]:
        """strategy 'full': the exact softmax over the catalogue (vocabulary rows 2..V-1)."""
        tf.debugging.assert_greater_equal(index, tf.constant(2, tf.int64),
                                          message="strategy 'full': a training positive is not in the catalogue")
        catalogue = self.candidate_tower(tf.range(2, self.items.vocabulary_size, dtype=tf.int64))
        loss, stats = full_softmax_loss(query, catalogue, index - 2, self.config.temperature, batch["label"])
        return loss, {**stats, "embedded_rows": tf.cast(tf.shape(catalogue)[0], tf.float32)}

    def train_step(self, batch):
        sequence, sequence_stats = None, {}
        if self.config.sequence_training:  # from here on, the batch is the sequences' targets
            batch, sequence, sequence_stats = self._sequence_targets(batch)
        index, cluster = self.items(batch["item_id"])
        if self.config.strategy == "full":
            with tf.GradientTape() as tape:
                loss, stats = self._full_softmax(self._query(batch, sequence), batch, index)
            return self._apply(tape, loss, {**stats, **sequence_stats}, index, cluster, None)
        samples = self._draw(batch, cluster)
        replicas, columns, first_row = self._all_replicas(), None, 0
        if replicas is not None:  # global in-batch negatives: every replica's positives are candidates
            columns = replicas.all_gather(index, 0), replicas.all_gather(cluster, 0)
            rows = replicas.all_gather(tf.shape(index)[:1], 0)  # [replicas], in replica order
            first_row = tf.reduce_sum(rows[:replicas.replica_id_in_sync_group])
        in_batch_log_count, pool_log_count = self._log_counts(index, cluster, samples, columns)
        with tf.GradientTape() as tape:
            query = self._query(batch, sequence)
            kwargs, stats = {}, dict(sequence_stats)
            if samples is None or self.cache is not None:  # cached draws: only the positives through the tower
                (positive,), stats["embedded_rows"] = self._embed(index)
            else:
                (positive, negatives), stats["embedded_rows"] = self._embed(index, samples["item_index"])
            if samples is not None:
                if self.cache is not None:
                    negatives = self.cache.read(samples["item_index"])
                kwargs = self._pool_negatives(batch, samples, negatives, positive, pool_log_count, stats)
                stats["pool_draws"] = tf.cast(tf.size(samples["item_index"]), tf.float32)
            candidates, candidate_ids = positive, index
            excluded = self._same_user(batch, replicas)
            if excluded is not None:  # share of the other in-batch columns that are the query's own user's
                queries, width = tf.shape(excluded)[0], tf.shape(excluded)[1]
                stats["in_batch_same_user_rate"] = tf.math.divide_no_nan(
                    tf.cast(tf.math.count_nonzero(excluded, dtype=tf.int32) - queries, tf.float32),
                    tf.cast(queries * (width - 1), tf.float32))
            if replicas is not None:  # the gradient of a gathered row flows back to the replica that embedded it
                candidates, candidate_ids = replicas.all_gather(positive, 0), columns[0]
            # this replica's share of the global batch's mean loss: the replicas' gradients sum to the global one
            loss, loss_stats = mixed_negatives_loss(query, candidates, candidate_ids, self.config.temperature,
                                                    in_batch_log_count=in_batch_log_count,
                                                    sample_weight=batch["label"], first_row=first_row,
                                                    in_batch_excluded=excluded, **kwargs)
            stats.update(loss_stats)
        return self._apply(tape, loss, stats, index, cluster, columns, positive)

    def _same_user(self, batch: dict[str, tf.Tensor], replicas) -> tf.Tensor | None:
        """`mask_same_user_in_batch`: [B, M] whether in-batch column j's positive is query i's user's (by 64-bit
        user id hashes, every replica's columns with global in-batch negatives); None when off."""
        if not self.config.mask_same_user_in_batch:
            return None
        key = tf.strings.to_hash_bucket_fast(batch["user_id"], 2**63 - 1)
        columns = key if replicas is None else replicas.all_gather(key, 0)
        return tf.equal(key[:, None], columns[None, :])

    def _apply(self, tape: tf.GradientTape, loss: tf.Tensor, stats: dict, index: tf.Tensor, cluster: tf.Tensor,
               columns: tuple[tf.Tensor, tf.Tensor] | None, positive: tf.Tensor | None = None) -> dict:
        """Gradients, the pool update with the batch's items (and the cache's with their embeddings
        `positive` [B, d] and its sweep), the step's figures into the trackers."""
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        if self.pool is not None:
            if columns is not None:  # every replica's items, gathered above for the in-batch columns
                self.pool.update(columns[0], columns[1], {"item_index": columns[0]}, gathered=True)
            else:
                self.pool.update(index, cluster, {"item_index": index})
            stats["pool_fill"] = self.pool.fill_rate()
        if self.cache is not None:
            self.cache.write(index, positive)
            if self.config.cache_refresh_rows:  # the same rows on every replica, embedded with the updated towers
                rows = self.cache.next_rows(self.config.cache_refresh_rows)
                self.cache.write(rows, self.candidate_tower(rows), gathered=True)
        stats["loss"] = loss
        stats = self._across_replicas(stats)
        for name, value in stats.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items() if name in stats}
