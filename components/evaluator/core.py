"""HitRate@K by exact (brute-force) top-K over the whole corpus, streamed in query batches,
and the popularity figures of paper Table 3 from the accumulated top-K lists."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from llm_hardneg.components.common.tables import sorted_lookup


@dataclasses.dataclass(frozen=True)
class EvaluatorConfig:
    """ks: the K of HitRate@K (the largest K sets the top-K lists kept for popularity figures).
    top_popular: size of the 'most popular items' set (paper: top 100).
    min_recommended: N for 'share of the catalogue recommended at least N times'.
    batch_size: queries scored at once, at most; memory_budget_mb caps it so that the [queries,
      items] score matrix and its top-K work stay within the budget whatever the catalogue size
      (HR stays exact: every query is still scored against every item).
    memory_budget_mb: the memory the exact search's [queries, items] scores may take.
    recall_sample: with search 'scann', queries whose top-K is also searched exactly to report recall.
    search: 'exact' (every query against every item) or 'scann' (the exporter's ScaNN index, for
      catalogues where exact scoring is too slow, e.g. 10^7 items: HR and NDCG then count what the
      index retrieves, and `recall@K` against exact search on the first `recall_sample` queries is
      reported beside them).
    exclude_seen: rank each query's target among the items its user has no training interaction with
      (every label), as RecBole, RecTools and SASRec's evaluation do: the user's training items are
      removed from the ranking and the top-K lists before HR and NDCG. A target that is itself one of
      the user's training items is then a miss, counted as `targets_seen_in_training`. Off: every
      catalogue item is ranked (the paper's protocol). The trainer's user -> items lists are held in
      memory (16 bytes per training interaction).
    frequency_buckets: edges of the target-frequency groups that HR and NDCG are also reported for
      (`by_target_frequency`): a target's frequency is its item's training examples, and edges (1, 5)
      give the groups '0' (never trained on), '1-4' and '5+', where the long tail's figures live.
    ties: how a candidate scoring exactly the target's score counts (exact search). 'pessimistic': it
      ranks ahead of the target, so a target that ties with the whole list is a miss; 'optimistic':
      only candidates scoring strictly higher count. Ties are rare between learned rows but certain
      when items share one (every item outside a model's vocabulary is scored with the unknown-item
      row): optimistic ranking then puts a target tied with 10^5 items at the top (Sun et al.,
      RecSys 2020, show such ties inflating published figures). With search 'scann' the rank is the
      target's position in what the index returns, whatever this says."""

    ks: tuple[int, ...] = (50, 100)
    batch_size: int = 4096
    memory_budget_mb: int = 1024
    top_popular: int = 100
    min_recommended: tuple[int, ...] = (1, 10, 100)
    search: str = "exact"
    recall_sample: int = 1000
    exclude_seen: bool = False
    frequency_buckets: tuple[int, ...] = (1, 5)
    ties: str = "pessimistic"

    def __post_init__(self):
        if self.search not in ("exact", "scann"):
            raise ValueError(f"search must be 'exact' or 'scann', got {self.search!r}")
        if self.ties not in ("pessimistic", "optimistic"):
            raise ValueError(f"ties must be 'pessimistic' or 'optimistic', got {self.ties!r}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be positive, got {self.ks}")
        edges = self.frequency_buckets
        if any(e < 1 for e in edges) or list(edges) != sorted(set(edges)):
            raise ValueError(f"frequency_buckets must be increasing edges >= 1, got {edges}")
        if self.batch_size < 1 or self.memory_budget_mb < 1:
            raise ValueError(f"batch_size and memory_budget_mb must be >= 1, got {self.batch_size}, "
                             f"{self.memory_budget_mb}")

    def frequency_groups(self) -> list[str]:
        """The groups' names, e.g. ['0', '1-4', '5+'] for edges (1, 5)."""
        edges = [0, *self.frequency_buckets]
        names = [f"{lo}" if hi - lo == 1 else f"{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:])]
        return [*names, f"{edges[-1]}+"]

    def query_batch(self, num_items: int) -> int:
        """Queries per batch for a catalogue of num_items: the score matrix, the comparison with the
        target and top_k's copy (about 3 float32 [B, V] buffers) fit in memory_budget_mb."""
        if self.search == "scann":  # the index holds no [B, V] scores
            return self.batch_size
        return exact_queries_per_batch(self, num_items)


NO_EXCLUSION = np.zeros([0, 2], np.int64)


# One trace for every batch size and K (a smaller last batch used to retrace and warn).
@tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None, None], tf.float32),
                              tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int64),
                              tf.TensorSpec([], tf.int32), tf.TensorSpec([None, 2], tf.int64),
                              tf.TensorSpec([], tf.bool)])
def _batch_top_k(queries: tf.Tensor, candidates: tf.Tensor, rows: tf.Tensor, targets: tf.Tensor, k: tf.Tensor,
                 excluded: tf.Tensor, pessimistic: tf.Tensor):
    """queries [U, d] (distinct), candidates [V, d], rows [B] the query of each target, targets [B] index,
    excluded [E, 2] (query, item index) pairs left out of the ranking, pessimistic: whether tied candidates
    count ahead of the target -> (rank of each target [B], top-k indices of each query [U, k]).

    The rank is the number of ranked candidates scoring higher than the target (0 = first), read off the
    query's top k + 1 values: when fewer than k + 1 of them score at least the target's score, every
    candidate that does is among them (the target too), so the count is exact; otherwise the target's rank
    is k or more, and k is returned (a miss at every K <= k). An excluded target has rank int32 max.
    """
    scores = tf.matmul(queries, candidates, transpose_b=True)  # [U, V]
    scores = tf.tensor_scatter_nd_update(scores, excluded, tf.fill(tf.shape(excluded)[:1], -np.inf))
    values, indices = tf.math.top_k(scores, k=tf.minimum(k + 1, tf.shape(scores)[1]))  # [U, k + 1]
    target_scores = tf.gather_nd(scores, tf.stack([rows, tf.cast(targets, tf.int32)], axis=1))[:, None]  # [B, 1]
    above = tf.gather(values, rows)  # [B, k + 1]
    higher = tf.reduce_sum(tf.cast(above > target_scores, tf.int32), 1)
    at_least = tf.reduce_sum(tf.cast(above >= target_scores, tf.int32), 1) - 1  # less the target itself
    rank = tf.minimum(tf.where(pessimistic, at_least, higher), k)
    rank = tf.where(tf.math.is_inf(target_scores[:, 0]), tf.int32.max, rank)  # a miss at every K
    return rank, indices[:, :k]


class SeenItems:
    """Each user's training items, for `exclude_seen`: users as sorted 63-bit fingerprints of their id,
    their items (catalogue index) in one array cut by offsets (CSR). users [U] int64, offsets [U + 1],
    items [I] int64, built from (user id, item index) pairs with NumPy."""

    def __init__(self, user_keys: np.ndarray, item_index: np.ndarray):
        """user_keys [I] int64 (`fingerprints` of the user ids), item_index [I] int64 (pairs may repeat;
        negative indices, items not in the catalogue, are left out)."""
        keep = item_index >= 0
        pairs = np.unique(np.stack([user_keys[keep], item_index[keep].astype(np.int64)], axis=1), axis=0)
        self.users, starts = np.unique(pairs[:, 0], return_index=True)
        self.offsets = np.append(starts, len(pairs)).astype(np.int64)
        self.items = pairs[:, 1].copy()

    def pairs(self, user_ids: np.ndarray) -> np.ndarray:
        """user_ids [B] str -> [E, 2] int64 (row in the batch, item index) of every training item of each user."""
        return self.pairs_of_keys(fingerprints(np.asarray(user_ids)))

    def pairs_of_keys(self, keys: np.ndarray) -> np.ndarray:
        """`pairs` of users given by their `fingerprints` [B] int64 (already hashed by the caller)."""
        at, known = sorted_lookup(self.users, keys)
        starts = np.where(known, self.offsets[at], 0)
        counts = np.where(known, self.offsets[np.minimum(at + 1, len(self.offsets) - 1)] - starts, 0)
        rows = np.repeat(np.arange(len(keys), dtype=np.int64), counts)
        first = np.repeat(np.cumsum(counts) - counts, counts)  # each row's first position in the output
        position = np.repeat(starts, counts) + np.arange(int(counts.sum())) - first
        return np.stack([rows, self.items[position]], axis=1)


def fingerprints(user_ids: np.ndarray) -> np.ndarray:
    """[N] str -> [N] int64: TensorFlow's FarmHash fingerprint of each id, in [0, 2^63)."""
    if not len(user_ids):
        return np.zeros([0], np.int64)
    return tf.strings.to_hash_bucket_fast(tf.constant(user_ids.astype(str).tolist()), 2**63 - 1).numpy()


class QueryBatch(NamedTuple):
    """Evaluation examples that share queries. queries: [U, d] distinct query embeddings; targets: [B] target
    item index (-1 = not in the corpus); excluded: [E, 2] (query row, item index) pairs left out of the
    ranking (`SeenItems.pairs`); rows: [B] the query row of each target (None: one query per target, U = B);
    new_users: [B] whether each target's user had no training example (None: not known).
    A plain (queries, targets[, excluded]) tuple is read as one."""

    queries: np.ndarray
    targets: np.ndarray
    excluded: np.ndarray = NO_EXCLUSION
    rows: np.ndarray | None = None
    new_users: np.ndarray | None = None


def evaluate(query_batches: Iterable[tuple], candidates: np.ndarray, config: EvaluatorConfig,
             train_counts: np.ndarray | None = None) -> dict:
    """query_batches: QueryBatch tuples (examples with the same query are scored once: in a time split many
    examples of a user share a history).
    train_counts: [V] training examples per item; with it, `by_target_frequency` holds the queries, HR
    and NDCG of each of config.frequency_groups() (a target outside the corpus counts as frequency 0).
    When the batches say which users are new (QueryBatch.new_users), `by_user` holds the same figures for
    returning users (with training examples) and new ones.

    Returns hit rates and NDCG at every K (one relevant item per query: 1 / log2(rank + 2) when
    rank < K; the rank counts the candidates scoring higher, and with config.ties 'pessimistic' those scoring
    the same too), counts and per-item top-K appearance counts [V].
    A target outside the corpus is a miss (it cannot be retrieved) and is counted apart.
    """
    k_max = min(max(config.ks), len(candidates))
    candidates_t = tf.constant(candidates, tf.float32)
    hits = {k: 0 for k in config.ks}
    gains = {k: 0.0 for k in config.ks}
    appearances = np.zeros(len(candidates), np.int64)
    total = unknown = distinct = 0
    searcher = _scann_searcher(candidates, k_max) if config.search == "scann" else None
    pessimistic = config.ties == "pessimistic"
    overlap, sampled, seen_targets = 0, 0, 0
    groups = config.frequency_groups()
    by_group = {g: [0, {k: 0 for k in config.ks}, {k: 0.0 for k in config.ks}] for g in groups}  # queries, hits, DCG
    by_user = {g: [0, {k: 0 for k in config.ks}, {k: 0.0 for k in config.ks}] for g in ("returning", "new")}
    users_known = False
    for batch in query_batches:
        queries, targets, excluded, rows, new_users = QueryBatch(*batch)
        rows = np.arange(len(targets)) if rows is None else np.asarray(rows)
        known = targets >= 0
        total += len(targets)
        distinct += len(queries)
        unknown += int((~known).sum())
        if len(excluded):
            target_keys = _pair_keys(rows, targets, len(candidates))
            seen_targets += int(np.isin(target_keys[known], _pair_keys(*excluded.T, len(candidates))).sum())
        if searcher is None:
            rank, top = _batch_top_k(tf.constant(queries, tf.float32), candidates_t, tf.constant(rows, tf.int32),
                                     tf.constant(np.where(known, targets, 0), tf.int64), tf.constant(k_max, tf.int32),
                                     tf.constant(excluded, tf.int64), tf.constant(pessimistic))
            rank, top = rank.numpy(), top.numpy()
        else:  # ranks within what the index returns (k_max = not retrieved); recall on the first queries
            top = _scann_top_k(searcher, queries, k_max, excluded, len(candidates))
            need = min(len(queries), config.recall_sample - sampled)
            step = exact_queries_per_batch(config, len(candidates))
            for start in range(0, need, step):
                part = slice(start, min(need, start + step))
                inside = (excluded[:, 0] >= part.start) & (excluded[:, 0] < part.stop)
                _, exact = _batch_top_k(tf.constant(queries[part], tf.float32), candidates_t,
                                        tf.zeros([0], tf.int32), tf.zeros([0], tf.int64), tf.constant(k_max, tf.int32),
                                        tf.constant(excluded[inside] - [part.start, 0], tf.int64),
                                        tf.constant(pessimistic))
                overlap += sum(len(set(a) & set(b)) for a, b in zip(exact.numpy(), top[part]))
            sampled += need
            found = top[rows] == np.where(known, targets, -1)[:, None]
            rank = np.where(found.any(axis=1), found.argmax(axis=1), k_max)
        rank = np.where(known, rank, np.iinfo(np.int32).max)
        for k, (hit, gain) in rank_metrics(rank, config.ks).items():
            hits[k] += hit
            gains[k] += gain
        if train_counts is not None:
            frequency = np.where(known, train_counts[np.where(known, targets, 0)], 0)
            group = np.searchsorted(np.asarray(config.frequency_buckets), frequency, side="right")
            for g, name in enumerate(groups):
                acc = by_group[name]
                acc[0] += int((group == g).sum())
                for k, (hit, gain) in rank_metrics(rank[group == g], config.ks).items():
                    acc[1][k] += hit
                    acc[2][k] += gain
        if new_users is not None:
            users_known = True
            for name, members in (("returning", ~new_users), ("new", new_users)):
                acc = by_user[name]
                acc[0] += int(members.sum())
                for k, (hit, gain) in rank_metrics(rank[members], config.ks).items():
                    acc[1][k] += hit
                    acc[2][k] += gain
        appearances += np.bincount(top[rows].ravel(), minlength=len(candidates))  # every example's list
    if total == 0:
        raise ValueError("no positive evaluation examples to score")
    metrics = {f"hit_rate@{k}": hits[k] / total for k in config.ks}
    metrics.update({f"ndcg@{k}": gains[k] / total for k in config.ks})
    metrics.update(num_queries=total, distinct_queries=distinct, targets_not_in_corpus=unknown,
                   corpus_size=len(candidates), search=config.search,
                   exclude_seen=config.exclude_seen, targets_seen_in_training=seen_targets, ties=config.ties)
    if train_counts is not None:
        metrics["by_target_frequency"] = {
            name: {"queries": n, **{f"hit_rate@{k}": h[k] / max(1, n) for k in config.ks},
                   **{f"ndcg@{k}": g[k] / max(1, n) for k in config.ks}} for name, (n, h, g) in by_group.items()}
    if users_known:
        metrics["by_user"] = {
            name: {"queries": n, **{f"hit_rate@{k}": h[k] / max(1, n) for k in config.ks},
                   **{f"ndcg@{k}": g[k] / max(1, n) for k in config.ks}} for name, (n, h, g) in by_user.items()}
    if searcher is not None:
        metrics[f"recall@{k_max}"] = overlap / max(1, sampled * k_max)
        metrics["recall_queries"] = sampled
    return {"metrics": metrics, "appearances": appearances, "k": k_max}


def rank_metrics(rank: np.ndarray, ks: Iterable[int]) -> dict[int, tuple[int, float]]:
    """rank [N] of each query's target (0 = first; anything >= K is a miss at K) -> {K: (hits, summed DCG)}:
    one relevant item per query, so DCG@K = 1 / log2(rank + 2) when rank < K. (HR@K = hits / N, NDCG@K =
    DCG / N; benchmarks.peers scores a peer library's top-K lists with it.)"""
    rank = np.asarray(rank, np.float64)
    return {k: (int((rank < k).sum()), float((1.0 / np.log2(rank[rank < k] + 2.0)).sum())) for k in ks}


def exact_queries_per_batch(config: EvaluatorConfig, num_items: int) -> int:
    """Queries scored exactly at once within the memory budget (the exact path of query_batch)."""
    return max(1, min(config.batch_size, config.memory_budget_mb * 2**20 // (3 * 4 * max(1, num_items))))


def _pair_keys(rows: np.ndarray, items: np.ndarray, num_items: int) -> np.ndarray:
    """(query row, item index) pairs of any broadcastable shapes -> one int64 key each, for set tests."""
    return np.asarray(rows, np.int64) * num_items + items


def _scann_top_k(searcher, queries: np.ndarray, k: int, excluded: np.ndarray, num_items: int) -> np.ndarray:
    """The index's top-k [B, k] with the excluded (row, item) pairs left out: it is asked for k plus the
    most any row excludes, and each row keeps its first k others (the index's order)."""
    extra = int(np.bincount(excluded[:, 0], minlength=len(queries)).max()) if len(excluded) else 0
    fetch = min(num_items, k + extra)
    top = np.asarray(searcher.search_batched(np.asarray(queries, np.float32), final_num_neighbors=fetch)[0], np.int64)
    if not extra:
        return top[:, :k]
    drop = np.isin(_pair_keys(np.arange(len(queries))[:, None], top, num_items), _pair_keys(*excluded.T, num_items))
    keep = np.argsort(drop, axis=1, kind="stable")[:, :k]  # the first k not dropped, in the index's order
    return np.take_along_axis(top, keep, axis=1)


def _scann_searcher(candidates: np.ndarray, k: int):
    from llm_hardneg.components.exporter.core import ExporterConfig, build_scann_index

    return build_scann_index(candidates, ExporterConfig(k=k))


def popularity_figures(appearances: np.ndarray, train_counts: np.ndarray, k: int, config: EvaluatorConfig) -> dict:
    """Paper Table 3 figures from top-K appearance counts [V] and training counts [V]."""
    top = np.argsort(-train_counts, kind="stable")[:config.top_popular]
    slots = max(1, int(appearances.sum()))
    figures = {
        f"top{config.top_popular}_popular_share_of_top{k}": float(appearances[top].sum() / slots),
        f"distinct_items_in_top{k}": int((appearances > 0).sum()),
    }
    for n in config.min_recommended:
        figures[f"share_of_catalogue_recommended_at_least_{n}x"] = float((appearances >= n).mean())
    return figures
