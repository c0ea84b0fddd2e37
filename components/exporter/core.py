"""Serving artefacts: a brute-force top-K SavedModel over the candidate embeddings, and a
ScaNN index of the same embeddings."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class ExporterConfig:
    """k: items returned per request. ScaNN: a partitioning tree with about sqrt(n) leaves
    (searching `leaves_to_search_fraction` of them), asymmetric hashing and exact re-ordering of
    `reorder` candidates; below `brute_force_below` items the index is exact brute force."""

    k: int = 100
    leaves_to_search_fraction: float = 0.1
    reorder: int = 500
    brute_force_below: int = 2000

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")


class TopKServing(tf.Module):
    """Serving model: raw request features -> top-K item ids and scores by exact dot product.

    Stock TF ops only (loads in any TF Serving). Unknown users and history items fall back to
    the model's out-of-vocabulary embeddings.
    """

    def __init__(self, query_model, item_ids: np.ndarray, candidates: np.ndarray, k: int):
        super().__init__()
        self.query_model = query_model
        self.item_ids = tf.constant(np.asarray(item_ids).tolist(), tf.string)
        self.candidates = tf.constant(candidates, tf.float32)
        self.k = min(k, len(item_ids))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id"),
                                  tf.TensorSpec([None, None], tf.string, name="history_item_ids")])
    def __call__(self, user_id, history_item_ids):
        query = self.query_model(user_id, history_item_ids)["embedding"]
        scores, indices = tf.math.top_k(tf.matmul(query, self.candidates, transpose_b=True), k=self.k)
        return {"item_ids": tf.gather(self.item_ids, indices), "scores": scores}


def build_scann_index(candidates: np.ndarray, config: ExporterConfig):
    """A ScaNN searcher over L2-normalised candidates [V, d] (dot product)."""
    try:
        from scann.scann_ops.py import scann_ops_pybind
    except ImportError as error:  # pragma: no cover - scann is in the pinned stack
        raise ImportError("ScaNN export needs `pip install scann[tf]==1.4.2`") from error
    n = len(candidates)
    k = min(config.k, n)
    builder = scann_ops_pybind.builder(np.asarray(candidates, np.float32), k, "dot_product")
    if n < config.brute_force_below:
        return builder.score_brute_force().build()
    leaves = max(2, int(math.sqrt(n)))
    to_search = max(1, int(leaves * config.leaves_to_search_fraction))
    return (builder.tree(num_leaves=leaves, num_leaves_to_search=to_search, training_sample_size=min(n, 250_000))
            .score_ah(2, anisotropic_quantization_threshold=0.2)
            .reorder(max(k, config.reorder))
            .build())
