"""The training loss: sampled softmax over in-batch and per-example out-of-batch negatives, with one
logQ correction for every source of negatives.

The correction (`logq_correction='mixture'`, the default). Query i is scored against its positive
and a multiset N_i of negatives drawn from several sources s (the other B-1 items of the batch,
n_r uniform draws from the whole pool, n_c uniform draws from the positive's cluster segment),
each with its own distribution Q_s(j | i). For any f, E[sum_{d in N_i} f(j_d)] = sum_j c_i(j) f(j)
with

    c_i(j) = sum_s n_s Q_s(j | i)   (the expected number of times item j is among i's negatives)
           = (B - 1) p_j                                   in-batch: p_j = j's share of training rows
           + [j in pool] n_r / F                           random pool draws, F filled slots
           + [j in pool, cluster(j) = cluster(i)] n_c / F_c   cluster draws, F_c filled slots of the segment

so sum_{d in N_i} exp(s_ij_d - log c_i(j_d)) estimates the full softmax denominator sum_j exp(s_ij)
without bias whatever the mixture. Every column, the positive's included, is therefore corrected
by the log of the item's expected count summed over every source that can produce it (the
"mixture" or balance-heuristic form of Mixed Negative Sampling, Yang et al. 2020), not by the
probability of the one source that happened to draw it. In-batch alone this is TFRS's -log p_j up
to the per-query constant log(B - 1), which the softmax ignores. With `pool_sampling='slot'`, F and
F_c are the slot counts C*S and S.

Shared draws (`negative_sharing='shared'`). The step draws M pool items once for the whole batch:
m_r uniformly from the pool and, for each distinct cluster u among the batch's positives, a_u from
u's segment (a_u >= 1, the rest of the cluster share m_c split in proportion to u's positives, so
sum_u a_u = max(m_c, U)). Every query is scored against all of them: its own cluster's draws are
its hard negatives, the others' are extra negatives. Given the batch, the draws do not depend on
the query, so the expected count of item j among any query's negatives is

    c(j) = (B - 1) p_j + [j in pool] (m_r / F + a_cluster(j) / F_cluster(j))    (a_u = 0 for a
                                                                               cluster not in the batch)

the same for every query: one correction row [1, M_in_batch + M] for the step. Accidental hits
(a draw equal to the query's positive) and the false-negative masks (history, user positives)
stay per query ([B, M] masks).

Other modes: 'in_batch' corrects only the in-batch columns by -log p_j and leaves pool columns raw
(what TFRS's Retrieval task does with extra candidates; it leaves pool negatives with ~0% of the
softmax mass, kept to reproduce earlier results); 'none' corrects nothing (the setting in which
the paper's Table 1 ordering appears on ML-1M).

Why it is written here: TFRS's `SamplingProbablityCorrection` subtracts one log-probability per
candidate column, shared by every query, and `tasks.Retrieval` scores every query against one
candidate set; here pool negatives belong to one query and the count depends on the query's
cluster. Merlin refuses logQ with more than one sampler (TFRS issue #635 asks for it). Accidental
hits are removed as TFRS's `RemoveAccidentalHits` does, but in the same pass that masks empty and
false-negative draws, with the positive's logit kept apart (fewer passes over the [B, M + K] logits).
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

MASKED_LOGIT = -1e9
SOURCES = ("in_batch", "random", "cluster", "edis")  # where a negative column comes from
_MIN_COUNT = 1e-30
# the softmax-mass shares (a diagnostic) are averaged over the batch's first MASS_ROWS rows: the rows are
# shuffled, so this estimates the batch's mean without bias at a fraction of a pass over [B, M + K]
MASS_ROWS = 256


def expected_counts(in_batch_draws: tf.Tensor, item_probability: tf.Tensor, in_pool: tf.Tensor,
                    same_cluster: tf.Tensor, random_rate: tf.Tensor, cluster_rate: tf.Tensor) -> tf.Tensor:
    """c_i(j) of the module docstring, for candidate columns j of queries i; all arguments broadcast to [B, M].

    in_batch_draws: scalar, B - 1. item_probability: p_j, the item's share of training rows.
    in_pool: whether j is in the pool. same_cluster: whether j's cluster is query i's (its positive's).
    random_rate: n_r / F, per query [B, 1]; cluster_rate: n_c / F_c, per query [B, 1].
    """
    pool = tf.cast(in_pool, tf.float32) * (random_rate + tf.cast(same_cluster, tf.float32) * cluster_rate)
    return tf.cast(in_batch_draws, tf.float32) * item_probability + pool


def log_count(counts: tf.Tensor) -> tf.Tensor:
    return tf.math.log(tf.maximum(counts, _MIN_COUNT))


def global_rows(rows: tf.Tensor) -> tf.Tensor:
    """Rows of the global batch: the sum of every replica's rows under a distribution strategy (replica
    batches may differ by a row, and the epoch's last batch is smaller), `rows` otherwise."""
    replica = tf.distribute.get_replica_context()
    if replica is None or replica.num_replicas_in_sync == 1:
        return rows
    return replica.all_reduce(tf.distribute.ReduceOp.SUM, rows)


def mixed_negatives_loss(
    query: tf.Tensor,
    candidates: tf.Tensor,
    candidate_ids: tf.Tensor,
    temperature: float,
    in_batch_log_count: tf.Tensor | None = None,
    negatives: tf.Tensor | None = None,
    negative_ids: tf.Tensor | None = None,
    negative_valid: tf.Tensor | None = None,
    negative_log_count: tf.Tensor | None = None,
    negative_sources: Sequence[str] | tf.Tensor = (),
    sample_weight: tf.Tensor | None = None,
    first_row: int | tf.Tensor = 0,
    in_batch_excluded: tf.Tensor | None = None,
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """Weighted softmax cross-entropy of each positive against its in-batch and pool negatives.

    query: [B, d] query embeddings. candidates: [M, d] the in-batch candidates, M >= B: the
    embeddings of the batch's positives, or with global in-batch negatives those of every replica's
    batch, query i's positive being candidates[first_row + i]. candidate_ids: [M] item ids (in-batch
    accidental hits: other columns with the positive's item).
    in_batch_log_count: [B, M] (or broadcastable, e.g. [1, M]) log correction of the in-batch
      columns, the positive's included; None = no correction.
    negatives: [B, K, d] per-example out-of-batch negatives, or [K, d] shared by every query;
    negative_ids: [B, K] (shared: [K]); negative_valid: [B, K] bool (shared: [B, K] or [K]), False
    for draws that found no item or are masked for that query.
    negative_log_count: [B, K] (or broadcastable, e.g. [1, K]) log correction of the pool columns;
      None = no correction.
    negative_sources: K names from SOURCES, or a [K] int tensor of indices into SOURCES (shared draws,
      whose count K is known only at run time), where each pool column comes from.
    sample_weight: [B] the label r_i (paper §3.1); None = all ones.
    in_batch_excluded: [B, M] bool, in-batch columns masked for that query besides its accidental hits
      (e.g. the other targets of the query's own user); None = none.

    Logits are s / temperature - log count; masked entries get MASKED_LOGIT. Negatives equal to
    the positive are masked too. Returns (loss, stats). loss = sum_i w_i * CE_i / G, G the rows of
    the global batch (`global_rows`): without a distribution strategy the batch mean, under one
    this replica's share of the global batch's mean, so that the replicas' gradients sum to the
    global batch's (as tf.nn.compute_average_loss, but with G all-reduced, since replica batches
    may be uneven). stats has `mass_<source>`, the share of the negatives' softmax mass each source
    carries (mean over the first MASS_ROWS rows, weighted by w), and with negatives `negative_masked_rate` and
    `negative_hit_rate` (share of draws equal to the positive).
    """
    batch, num_candidates = tf.shape(query)[0], tf.shape(candidates)[0]
    rows = first_row + tf.range(batch)
    positive_ids = tf.gather(candidate_ids, rows)
    query = query / temperature  # [B, d]: 1/T once on the queries, not on the [B, M + K] logits
    # the positive's logit apart; then every column equal to the positive (its own included) is masked, so
    # one pass masks accidental hits, empty draws and false negatives alike
    positive = tf.reduce_sum(query * tf.gather(candidates, rows), axis=1)  # [B]
    if in_batch_log_count is not None:
        own_row = tf.minimum(tf.range(batch), tf.shape(in_batch_log_count)[0] - 1)  # [1, M] or [B, M]
        positive -= tf.gather_nd(in_batch_log_count, tf.stack([own_row, rows], axis=1))
    stats, sources = {}, ["in_batch"]
    column_source = tf.zeros([0], tf.int32)
    if negatives is None:
        logits = tf.matmul(query, candidates, transpose_b=True)  # [B, M]
        if in_batch_log_count is not None:
            logits -= in_batch_log_count
        parts = [(logits, _in_batch_mask(candidate_ids, positive_ids, in_batch_excluded))]
    else:
        if negative_ids is None or negative_valid is None:
            raise ValueError("negatives need negative_ids and negative_valid")
        if isinstance(negative_sources, tf.Tensor):
            column_source = tf.cast(negative_sources, tf.int32)
            sources += ["random", "cluster"]  # what shared draws are made of
        else:
            unknown = sorted(set(negative_sources) - set(SOURCES))
            if len(negative_sources) != negatives.shape[-2] or unknown:
                raise ValueError(f"negative_sources must name the source ({SOURCES}) of each of the "
                                 f"{negatives.shape[-2]} negatives, got {list(negative_sources)}")
            column_source = tf.constant([SOURCES.index(s) for s in negative_sources], tf.int32)
            sources += [s for s in SOURCES[1:] if s in negative_sources]
        num_negatives = tf.shape(negatives)[-2]
        if negatives.shape.rank == 2:  # shared: scored by every query, one matmul over all columns
            correction = _columns(in_batch_log_count, negative_log_count, num_candidates, num_negatives, batch)
            if negative_valid.shape.rank == 1:  # draws valid for every query: masked in the one correction row
                # (+1e9 on an empty draw's column), so no [B, M + K] mask pass is needed for them
                correction = tf.zeros([1, num_candidates + num_negatives]) if correction is None else correction
                empty = tf.concat([tf.zeros([num_candidates], tf.bool), tf.logical_not(negative_valid)], axis=0)
                correction = tf.where(empty[None, :], -MASKED_LOGIT, correction)
            logits = tf.matmul(query, tf.concat([candidates, negatives], 0), transpose_b=True)
            if correction is not None:
                logits -= correction
            masked = tf.equal(tf.concat([candidate_ids, negative_ids], 0)[None, :], positive_ids[:, None])
            hit = masked[:, num_candidates:]  # [B, K]
            if in_batch_excluded is not None:
                masked = tf.logical_or(masked, tf.pad(in_batch_excluded, [[0, 0], [0, num_negatives]]))
            if negative_valid.shape.rank == 2:  # per query: into the mask
                masked = tf.logical_or(masked, tf.concat([tf.zeros([batch, num_candidates], tf.bool),
                                                          tf.logical_not(negative_valid)], axis=1))
            parts = [(logits, masked)]
        else:  # per example: the in-batch [B, M] and pool [B, K] columns apart (no [B, M + K] concatenations)
            in_batch = tf.matmul(query, candidates, transpose_b=True)
            pool = tf.einsum("bd,bkd->bk", query, negatives)
            if in_batch_log_count is not None:
                in_batch -= in_batch_log_count
            if negative_log_count is not None:
                pool -= negative_log_count
            hit = tf.equal(negative_ids, positive_ids[:, None])  # [B, K]
            parts = [(in_batch, _in_batch_mask(candidate_ids, positive_ids, in_batch_excluded)),
                     (pool, tf.logical_or(hit, tf.logical_not(negative_valid)))]
        valid = tf.broadcast_to(negative_valid, tf.shape(hit))
        draws = tf.cast(tf.size(hit), tf.float32)
        hits = tf.cast(tf.math.count_nonzero(tf.logical_and(hit, valid)), tf.float32)
        stats["negative_masked_rate"] = 1.0 - (tf.cast(tf.math.count_nonzero(valid), tf.float32) - hits) / draws
        stats["negative_hit_rate"] = hits / draws
    # masked columns (the positive's among them) get MASKED_LOGIT; each part's log-sum-exp, then theirs
    parts = [tf.where(masked, tf.constant(MASKED_LOGIT, logits.dtype), logits) for logits, masked in parts]
    lse = [tf.reduce_logsumexp(p, axis=1) for p in parts]
    negative_lse = lse[0] if len(lse) == 1 else tf.reduce_logsumexp(tf.stack(lse, axis=1), axis=1)
    top = tf.maximum(positive, negative_lse)
    total = top + tf.math.log(tf.exp(positive - top) + tf.exp(negative_lse - top))  # log-sum-exp of every column
    per_example = total - positive
    weight = tf.ones_like(per_example) if sample_weight is None else tf.cast(sample_weight, per_example.dtype)
    logits = tf.concat([p[:MASS_ROWS] for p in parts], axis=1)  # [MASS_ROWS, M + K]
    stats.update(_mass_shares(logits, total[:MASS_ROWS], column_source, sources, weight[:MASS_ROWS]))
    loss = tf.nn.compute_average_loss(per_example, sample_weight=weight, global_batch_size=global_rows(batch))
    return loss, stats


def _in_batch_mask(candidate_ids: tf.Tensor, positive_ids: tf.Tensor, excluded: tf.Tensor | None) -> tf.Tensor:
    """[B, M]: the in-batch columns masked for each query, its accidental hits and `excluded` ones."""
    masked = tf.equal(candidate_ids[None, :], positive_ids[:, None])
    return masked if excluded is None else tf.logical_or(masked, excluded)


def _columns(in_batch: tf.Tensor | None, pool: tf.Tensor | None, m: tf.Tensor, k: tf.Tensor,
             batch: tf.Tensor) -> tf.Tensor | None:
    """The corrections of the in-batch [1 or B, M] and pool [1 or B, K] columns side by side (None = 0)."""
    if in_batch is None and pool is None:
        return None
    in_batch = tf.zeros([1, m]) if in_batch is None else in_batch
    pool = tf.zeros([1, k]) if pool is None else pool
    if in_batch.shape[0] == 1 and pool.shape[0] == 1:  # shared draws: one row for every query
        return tf.concat([in_batch, pool], axis=1)
    return tf.concat([tf.broadcast_to(in_batch, [batch, m]), tf.broadcast_to(pool, [batch, k])], axis=1)


def _mass_shares(logits: tf.Tensor, total: tf.Tensor, negative_source: tf.Tensor, sources: list[str],
                 weight: tf.Tensor) -> dict[str, tf.Tensor]:
    """Share of the negatives' softmax mass per source (`mass_<source>`), weighted mean over rows.
    logits: [B, M + K], the positive's column masked; total: [B] log-sum-exp of every column, the positive's
    included; negative_source: [K] indices into SOURCES of the last K columns (the others are in-batch)."""
    probs = tf.exp(tf.stop_gradient(logits - total[:, None]))  # [B, M + K], the positive left out
    column_source = tf.concat([tf.zeros([tf.shape(logits)[1] - tf.size(negative_source)], tf.int32),
                               negative_source], axis=0)
    mass = tf.matmul(probs, tf.one_hot(column_source, len(SOURCES)))  # [B, sources]
    share = tf.math.divide_no_nan(mass, tf.reduce_sum(mass, axis=1, keepdims=True))
    mean = tf.math.divide_no_nan(tf.reduce_sum(share * weight[:, None], axis=0), tf.reduce_sum(weight))
    return {f"mass_{s}": mean[SOURCES.index(s)] for s in sources}


def full_softmax_loss(query: tf.Tensor, catalogue: tf.Tensor, positive_column: tf.Tensor, temperature: float,
                      sample_weight: tf.Tensor | None = None) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """The exact softmax over the catalogue (no sampling, so no correction and no accidental hits).

    query: [B, d]; catalogue: [V, d] every catalogue item's embedding; positive_column: [B] int, the
    positive's row of `catalogue`; sample_weight: [B] (None = ones). Returns (loss, {}), the loss
    reduced as in `mixed_negatives_loss`.
    """
    logits = tf.matmul(query, catalogue, transpose_b=True) / temperature  # [B, V]
    per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=positive_column, logits=logits)
    weight = tf.ones_like(per_example) if sample_weight is None else tf.cast(sample_weight, per_example.dtype)
    loss = tf.nn.compute_average_loss(per_example, sample_weight=weight,
                                      global_batch_size=global_rows(tf.shape(query)[0]))
    return loss, {}
