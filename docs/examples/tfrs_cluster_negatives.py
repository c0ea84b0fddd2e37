"""Cluster hard negatives in a plain TFRS two-tower model: the pool layer and the loss, nothing else.

    .venv/bin/python docs/examples/tfrs_cluster_negatives.py

A `tfrs.Model` whose `compute_loss` draws, for each positive, 1 random and 7 same-cluster items from a
`ClusterPool` (tf.Variables: scatter to update, gather to sample), embeds them with the item tower and
scores every query against the in-batch candidates plus its own draws, each column corrected by the log
of its expected count among the query's negatives (`expected_counts`: docs/negatives.md). Synthetic
data: users like items of one cluster. Run by tests/test_docs.py.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # TFRS needs Keras 2: set before TensorFlow is imported

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402
import tf_keras  # noqa: E402

from llm_hardneg.components.trainer import ClusterPool, expected_counts, log_count, mixed_negatives_loss  # noqa: E402

NUM_RANDOM, NUM_CLUSTER = 1, 7


class TwoTower(tfrs.Model):
    def __init__(self, num_users: int, item_cluster: np.ndarray, item_probability: np.ndarray, dim: int = 16):
        super().__init__()
        num_clusters = int(item_cluster.max()) + 1
        self.user_tower = tf_keras.layers.Embedding(num_users, dim)
        self.item_tower = tf_keras.layers.Embedding(len(item_cluster), dim)
        self.item_cluster = tf.constant(item_cluster, tf.int64)
        self.item_probability = tf.constant(item_probability, tf.float32)  # share of training rows (in-batch logQ)
        # one segment of 32 slots per cluster; the item id is its own key
        self.pool = ClusterPool(num_clusters, 32, {"item": ((), "int64")}, key_feature="item", seed=0)
        self.mass_cluster = tf_keras.metrics.Mean(name="mass_cluster")

    def compute_loss(self, features, training=False):
        item, user = features["item"], features["user"]
        cluster = tf.gather(self.item_cluster, item)
        query = tf.math.l2_normalize(self.user_tower(user), axis=-1)
        positive = tf.math.l2_normalize(self.item_tower(item), axis=-1)
        draws = self.pool(cluster, NUM_RANDOM, NUM_CLUSTER)  # [B, 8] items, `valid` False where a segment is empty
        negatives = tf.math.l2_normalize(self.item_tower(draws["item"]), axis=-1)
        # expected count of each column among a query's negatives: B - 1 in-batch draws plus the pool's
        b = tf.cast(tf.shape(item)[0] - 1, tf.float32)
        q_random, q_cluster = self.pool.draw_probabilities(cluster)
        random_rate, cluster_rate = NUM_RANDOM * q_random[:, None], NUM_CLUSTER * q_cluster[:, None]
        in_batch = expected_counts(b, tf.gather(self.item_probability, item)[None, :],
                                   self.pool.contains(item, cluster)[None, :],
                                   tf.equal(cluster[:, None], cluster[None, :]), random_rate, cluster_rate)
        drawn = expected_counts(b, tf.gather(self.item_probability, draws["item"]), True,
                                tf.equal(tf.gather(self.item_cluster, draws["item"]), cluster[:, None]),
                                random_rate, cluster_rate)
        loss, stats = mixed_negatives_loss(
            query, positive, item, temperature=0.1, in_batch_log_count=log_count(in_batch), negatives=negatives,
            negative_ids=draws["item"], negative_valid=draws["valid"], negative_log_count=log_count(drawn),
            negative_sources=["random"] * NUM_RANDOM + ["cluster"] * NUM_CLUSTER)
        self.pool.update(item, cluster, {"item": item})  # after sampling: a positive is never its own draw
        self.mass_cluster.update_state(stats["mass_cluster"])
        return loss


def synthetic(seed: int = 0, users: int = 200, items: int = 400, clusters: int = 8, rows: int = 8192):
    """Users who like the items of one cluster (item i is in cluster i % clusters)."""
    rng = np.random.default_rng(seed)
    item_cluster = np.arange(items) % clusters
    user = rng.integers(0, users, rows)
    item = (user % clusters) + clusters * rng.integers(0, items // clusters, rows)
    probability = np.bincount(item, minlength=items) / rows
    return {"user": user.astype(np.int64), "item": item.astype(np.int64)}, item_cluster, probability


def main(epochs: int = 3) -> dict:
    tf_keras.utils.set_random_seed(0)
    data, item_cluster, probability = synthetic()
    model = TwoTower(200, item_cluster, probability)
    model.compile(optimizer=tf_keras.optimizers.Adam(0.05))
    batches = tf.data.Dataset.from_tensor_slices(data).shuffle(8192, seed=0).batch(256, drop_remainder=True)
    history = model.fit(batches, epochs=epochs, verbose=0).history
    print({k: [round(v, 4) for v in vs] for k, vs in history.items()})
    return history


if __name__ == "__main__":
    main()
