"""The training loss: sampled softmax over in-batch and per-example out-of-batch negatives.

TFRS `tasks.Retrieval` scores every query against one shared candidate set; pool negatives
are drawn per example and must be scored only against their own query, so the logits are
built here, reusing TFRS's logQ correction and accidental-hit removal for the in-batch part.
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow_recommenders.layers import loss as tfrs_loss

MASKED_LOGIT = -1e9


def mixed_negatives_loss(
    query: tf.Tensor,
    positive: tf.Tensor,
    positive_ids: tf.Tensor,
    temperature: float,
    positive_sampling_probability: tf.Tensor | None = None,
    negatives: tf.Tensor | None = None,
    negative_ids: tf.Tensor | None = None,
    negative_valid: tf.Tensor | None = None,
    negative_log_q: tf.Tensor | None = None,
    sample_weight: tf.Tensor | None = None,
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """Weighted softmax cross-entropy of each positive against its negatives.

    query: [B, d] query embeddings. positive: [B, d] embeddings of the positive items.
    positive_ids: [B] item ids (in-batch accidental hits: other rows with the same item).
    positive_sampling_probability: [B] probability that each in-batch item is sampled (logQ);
      None disables the in-batch correction.
    negatives: [B, K, d] per-example out-of-batch negatives; negative_ids: [B, K];
    negative_valid: [B, K] bool, False for draws that found no item.
    negative_log_q: [B, K] log sampling probability of each negative; None = no correction.
    sample_weight: [B] the label r_i (paper §3.1); None = all ones.

    Logits are s / temperature; masked entries get MASKED_LOGIT. Negatives equal to the
    positive are masked too. Returns (loss = sum_i w_i * CE_i / B, stats) where stats has
    `negative_masked_rate` and `negative_hit_rate` (share of draws equal to the positive).
    """
    batch = tf.shape(query)[0]
    logits = tf.matmul(query, positive, transpose_b=True) / temperature  # [B, B]
    labels = tf.eye(batch, dtype=logits.dtype)
    if positive_sampling_probability is not None:
        logits = tfrs_loss.SamplingProbablityCorrection()(logits, positive_sampling_probability)
    logits = tfrs_loss.RemoveAccidentalHits()(labels, logits, positive_ids)
    stats = {}
    if negatives is not None:
        if negative_ids is None or negative_valid is None:
            raise ValueError("negatives need negative_ids and negative_valid")
        neg_logits = tf.einsum("bd,bkd->bk", query, negatives) / temperature  # [B, K]
        if negative_log_q is not None:
            neg_logits -= negative_log_q
        hit = tf.equal(negative_ids, tf.expand_dims(positive_ids, 1))
        keep = tf.logical_and(negative_valid, tf.logical_not(hit))
        neg_logits = tf.where(keep, neg_logits, tf.fill(tf.shape(neg_logits), MASKED_LOGIT))
        logits = tf.concat([logits, neg_logits], axis=1)
        labels = tf.concat([labels, tf.zeros_like(neg_logits)], axis=1)
        stats["negative_masked_rate"] = 1.0 - tf.reduce_mean(tf.cast(keep, tf.float32))
        stats["negative_hit_rate"] = tf.reduce_mean(tf.cast(tf.logical_and(hit, negative_valid), tf.float32))
    per_example = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    if sample_weight is not None:
        per_example *= tf.cast(sample_weight, per_example.dtype)
    loss = tf.reduce_sum(per_example) / tf.cast(batch, per_example.dtype)
    return loss, stats
