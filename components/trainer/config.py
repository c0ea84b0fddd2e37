"""Configuration of the trainer."""

from __future__ import annotations

import dataclasses

STRATEGIES = ("in_batch", "oob", "cluster_oob", "full")
POOL_STRATEGIES = ("oob", "cluster_oob")  # the strategies that draw from the out-of-batch pool
NEGATIVE_SHARING = ("per_example", "per_cluster", "shared")  # see model.TwoTowerModel and losses.py
NEGATIVE_EMBEDDINGS = ("recompute", "cached")  # see model.TwoTowerModel and pool.EmbeddingCache
HISTORY_POOLING = ("mean", "position")
QUERY_TOWERS = ("pooled", "transformer")  # see model.QueryTower and model.TransformerQueryTower
CANDIDATE_TOWERS = ("mlp", "embedding")  # see model.CandidateTower
SIMILARITIES = ("cosine", "dot")
CLUSTER_SOURCES = ("llm", "category", "behavioural")  # tables of item_clusterer's output
ITEM_VOCABULARIES = ("catalogue", "trained", "base")  # which items get rows (warm_start.item_vocabulary)
LOGQ_CORRECTIONS = ("mixture", "in_batch", "none")  # see losses.py
OPTIMIZERS = ("lazy_adam", "adam")  # see optimizer.py
DISTRIBUTE = ("none", "mirrored", "multi_worker")  # see distribute.py


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """Two-tower model, negatives and optimisation (defaults: paper §5.1, ML-1M).

    strategy: 'in_batch' (logQ-corrected in-batch negatives with accidental-hit masking),
      'oob' (+ `num_negatives` random pool negatives per example) or 'cluster_oob' (+ pool
      negatives split random:cluster by `random_ratio`:`cluster_ratio`, cluster draws from the
      positive's cluster segment) or 'full' (the exact softmax over every catalogue item each step:
      the ceiling every sampler estimates; its step cost grows with the catalogue, so it is refused
      above `full_softmax_memory_mb`).
    negative_sharing: how the pool draws of a step are made (cost and quality of each:
      docs/negatives.md and docs/results.md). 'per_example' (default): each example draws its own `num_negatives`
      (B x K draws a step, each distinct one embedded by the candidate tower). 'per_cluster': each
      distinct cluster of the batch draws K (random:cluster as per example, the cluster share from its
      segment) and every example of that cluster takes them, so each example's negatives follow the
      per-example distribution (the same correction) while the tower embeds at most U x K draws, U the
      batch's distinct clusters. 'shared': the step draws `shared_negatives` pool items once for the
      whole batch, the cluster share split among the distinct clusters of the batch's positives, and
      every query is scored against all of them (see losses.py for the correction).
    negative_embeddings: how pool draws are embedded. 'recompute' (default): the candidate tower embeds every
      distinct draw each step, with gradients (its cost: B x K tower rows forward, backward and optimizer
      update). 'cached': a draw takes its item's row of an embedding cache ([items + 2, d] float32, written
      with each positive's fresh embedding every step and by a sweep of `cache_refresh_rows` rows a step
      through the catalogue, forward only); no gradient flows into a cached row, the queries' gradients are
      exact (cross-batch negatives, Wang et al. SIGIR 2021). Step cost: a [B, K, d] gather instead of the
      tower over the draws; memory: 4 x d bytes per item (plus the same in checkpoints).
    cache_refresh_rows: R, the catalogue rows the cache re-embeds each step with 'cached' (round-robin,
      forward only; every item is at most items / R steps stale besides its own appearances as a positive).
    num_negatives: K, the pool draws of each example with 'per_example' and 'per_cluster'.
    shared_negatives: M, the pool draws of a step with 'shared' (0 = the batch size). The default, 256,
      a quarter of the default batch, keeps the step at in_batch's cost on CPU (the [B, B + M] logits
      cost as much as the extra tower rows) at the HR of M = 1,024; scale it with the batch.
    deduplicate_candidates: embed each distinct item of a step (positives and pool draws) once and
      gather its rows (same loss to float tolerance; less work when items repeat).
    full_softmax_memory_mb: the memory 'full' may take for its [batch, items] logits and the tower
      pass over the catalogue (estimated before training; a larger catalogue is refused).
    cluster_source: which cluster table ('llm', 'category' or 'behavioural': k-means of a trained
      model's item embeddings) feeds the cluster-id features and the pool segments.
    slots_per_cluster: S; 0 = the next power of two >= 2 * items / clusters (at least 16).
    pool_sampling: 'filled' (uniform over filled slots) or 'slot' (Algorithm 2 literally).
    logq_correction: 'mixture' (every column, in-batch and pool, corrected by the log of the item's
      expected count among the query's negatives summed over the sources; see losses.py),
      'in_batch' (only in-batch columns, by log p_j: pool negatives stay raw and carry ~0% of the
      softmax mass; the earlier default) or 'none'.
    mask_history_negatives: also mask pool draws that are in the user's history (likely false negatives).
    mask_user_positives: also mask pool draws that are any training positive of the same user,
      earlier or later (the measured source of false negatives); the trainer keeps the set of
      (user, item) training positives in memory (8 bytes a pair, in a hash table).
    mask_same_user_in_batch: also mask the in-batch columns whose positive is the same user's (a
      [B, M] comparison of 64-bit user id hashes a step). A batch of sequence chunks holds every target
      of a chunk, so each query's in-batch negatives include its own user's earlier and later positives;
      a shuffled batch of per-interaction examples almost never does. Reported as
      `in_batch_same_user_rate` (the share of a query's other in-batch columns masked so).
    edis_negatives: per example, this many virtual negatives (ESANS's EDIS) interpolated in
      embedding space between the positive and pool negatives: normalize((1 - a) n + a p) with
      a ~ U[0, edis_max_weight) (0 = off).
    query_tower: 'pooled' (user id embedding + pooled history, see `history_pooling`, through an MLP) or
      'transformer' (SASRec-style causal self-attention over the history's item and cluster embeddings
      with learned positions; the state at the most recent position is the query; no user id
      embedding, so new users are served as well as training ones). Its per-step cost grows with
      batch x history_length^2 (attention) and batch x history_length x d^2 (the blocks), not with the
      catalogue; example_gen's `history_length` must be at least the trainer's for long histories.
    sequence_training: train on example_gen's sequence records (its `sequence_length` must be set, and
      at most history_length): every target of a user's sequence chunk in one pass of the transformer
      tower (causal attention), the query of a target being the state at the last position whose
      timestamp is strictly earlier than the target's. A batch is `sequence_batch_size` chunks; the
      in-batch negatives of a target are the batch's other targets (logQ-corrected as always), pool
      draws are made for the targets as for a batch of examples. Needs query_tower 'transformer'.
    sequence_batch_size: sequence chunks per step with `sequence_training` (targets per step: up to
      this x history_length; the in-batch logits are [targets, targets]).
    candidate_tower: 'mlp' (item and cluster embeddings concatenated through a two-layer MLP) or
      'embedding' (the item embedding plus its cluster embedding, no layers: the transformer tower's
      input token for that item, so input and output embeddings are tied as in SASRec).
    similarity: 'cosine' (both towers' outputs L2-normalised, logits = cosine / temperature) or 'dot'
      (raw outputs, logits = dot product / temperature, as SASRec scores; use temperature 1). Serving
      (brute force and ScaNN) ranks by the dot product of the exported towers' outputs either way.
    transformer_blocks, transformer_heads, transformer_dropout: the transformer tower's blocks
      (pre-norm self-attention + feed-forward), attention heads (embedding_dim must divide by them)
      and dropout rate (on the inputs, attention and block outputs; training only).
    history_pooling: 'position' (a learned weight per history position, most recent first) or 'mean'
      (every history item alike), see QueryTower; the pooled tower only.
    embedding_dim: d, the width of the embeddings and of both towers' outputs.
    temperature: logits are similarity / temperature (0.05 for cosine; use 1 with 'dot').
    batch_size: examples per step (the global batch under a distribution strategy); B - 1 in-batch negatives.
    epochs, learning_rate: passes over the training examples, and the optimizer's step size.
    random_ratio, cluster_ratio: how the pool draws split into random and cluster ones (1:15, the paper's
      MovieLens ratio; 1:31 its Amazon one).
    edis_max_weight: the largest weight of the positive in an EDIS virtual negative.
    history_length: history items the query tower reads (at most example_gen's `history_length`).
    shuffle_buffer: training examples shuffled together (held in memory).
    seed: every random choice of the run (initialisation, shuffling, pool draws, dropout).
    log_every_steps: steps between progress lines (and TensorBoard points).
    optimizer: 'lazy_adam' (Adam; embedding rows change only in steps that look them up, so a step
      costs the same whatever the table sizes; see optimizer.py) or 'adam' (tf_keras' Adam, which
      updates every row of every table each step: the earlier default).
    user_id_buckets: 0 = one embedding row per training user (exact vocabulary, users.txt read
      into memory); N > 0 = user ids hashed into N rows, for user counts a table cannot hold
      (users sharing a row share its embedding; the history part of the tower is per example).
    distribute: 'none' (default device), 'mirrored' (tf.distribute.MirroredStrategy over all local
      devices) or 'multi_worker' (tf.distribute.MultiWorkerMirroredStrategy over the workers that
      TF_CONFIG names, as Vertex AI custom jobs and Kubeflow TFJobs set it; see distribute.py).
      batch_size is the global batch: replica r trains on slice r of every global batch.
    global_in_batch_negatives: under 'mirrored' or 'multi_worker', every query's in-batch negatives
      are the whole global batch (candidate embeddings, ids and corrections all-gathered across
      replicas, gradients flowing back to the replica that embedded each) instead of its replica's
      slice of it.
    warm_start_from: '' (train from scratch) or a previous trainer output directory whose towers this run
      starts from (see warm_start.py): item and user rows carried by id, new items at their cluster's mean
      row, new users at the mean user row, other weights as they are, the optimizer reset. Its towers must
      have this run's shape (embedding_dim, tower kinds, history, clusters), or the run stops naming the
      mismatch. Ignored when the output directory holds checkpoints (the run resumes from those).
    item_vocabulary: which items of the item table get an embedding row (and pool slots). 'catalogue'
      (default): every item, also those without training examples yet (a catalogue feed that runs
      ahead of interactions). 'trained': the items with training examples in this run and, warm-started,
      the base's items: the vocabulary grows window by window as the user vocabulary does, a new item
      gets its row (at its cluster's mean) in the first model trained on it. 'base' (warm start only):
      the base's items, frozen: an item new since then falls back to the shared unknown-item row (the
      out-of-vocabulary baseline that 'trained' is measured against). An item outside the vocabulary
      is still scored in evaluation and serving, with the unknown-item row and the unknown cluster.
    preload_new_items: warm-started, the pool is preloaded with every item of the vocabulary, so items new
      to the base are drawn as negatives from step 1 (the paper's pre-loading); false: with the base's items
      only, a new item entering the pool when it first appears in a batch (for comparison).
    evict_idle_windows: warm-started, drop the rows of users (and, with item_vocabulary 'trained', of
      items) that have had no training example for this many runs of the chain in a row, this one
      included (0: never). The trainer output's vocabulary/*_idle.txt holds each id's count. An
      evicted id falls back to the unknown row; a row costs 3 x 4 x embedding_dim bytes with Adam's
      two moments.
    checkpoint_every_steps, checkpoint_every_minutes: also write a checkpoint inside an epoch every
      N steps and/or M minutes (0 = at epoch ends only). A restarted run resumes at the step of the
      last checkpoint (model, optimizer, pool, random state, input position): a preempted worker
      loses at most that many steps. Each checkpoint writes the towers, their optimizer moments
      and the pool, so keep N to minutes of training.
    early_stopping_patience: P > 0 trains at most `epochs` epochs, scoring the examples' validation fold
      (example_gen `validation_share`: held-out users' last training positive) after each; it stops once
      P epochs pass without a higher HR@`validation_k`, and exports the best epoch's towers (see
      validation.py; the scores are in train_summary.json). 0 = every epoch, no validation.
    validation_k: the K of the validation HR@K.
    validation_exclude_seen: rank each validation target among the items its user has no training
      example of (as the evaluator's `exclude_seen`); false: every item.
    """

    strategy: str = "cluster_oob"
    cluster_source: str = "llm"
    embedding_dim: int = 64
    temperature: float = 0.05
    batch_size: int = 1024
    epochs: int = 3
    learning_rate: float = 1e-3
    optimizer: str = "lazy_adam"
    num_negatives: int = 16
    negative_sharing: str = "per_example"
    negative_embeddings: str = "recompute"
    cache_refresh_rows: int = 1024
    shared_negatives: int = 256
    deduplicate_candidates: bool = True
    full_softmax_memory_mb: int = 8192
    random_ratio: int = 1
    cluster_ratio: int = 15
    slots_per_cluster: int = 0
    pool_sampling: str = "filled"
    logq_correction: str = "mixture"
    mask_history_negatives: bool = False
    mask_user_positives: bool = False
    mask_same_user_in_batch: bool = False
    edis_negatives: int = 0
    edis_max_weight: float = 0.5
    distribute: str = "none"
    global_in_batch_negatives: bool = False
    user_id_buckets: int = 0
    history_length: int = 20
    query_tower: str = "pooled"
    candidate_tower: str = "mlp"
    similarity: str = "cosine"
    transformer_blocks: int = 2
    transformer_heads: int = 1
    transformer_dropout: float = 0.2
    sequence_training: bool = False
    sequence_batch_size: int = 64
    history_pooling: str = "position"
    shuffle_buffer: int = 1_000_000
    seed: int = 0
    log_every_steps: int = 100
    warm_start_from: str = ""
    item_vocabulary: str = "catalogue"
    evict_idle_windows: int = 0
    preload_new_items: bool = True
    checkpoint_every_steps: int = 0
    checkpoint_every_minutes: float = 0.0
    early_stopping_patience: int = 0
    validation_k: int = 10
    validation_exclude_seen: bool = True

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.evict_idle_windows < 0:
            raise ValueError(f"evict_idle_windows must be >= 0 (0: never evict), got {self.evict_idle_windows}")
        if self.item_vocabulary not in ITEM_VOCABULARIES:
            raise ValueError(f"item_vocabulary must be one of {ITEM_VOCABULARIES}, got {self.item_vocabulary!r}")
        if self.cluster_source not in CLUSTER_SOURCES:
            raise ValueError(f"cluster_source must be one of {CLUSTER_SOURCES}, got {self.cluster_source!r}")
        for name in ("embedding_dim", "batch_size", "epochs", "history_length", "log_every_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.early_stopping_patience < 0 or self.validation_k < 1:
            raise ValueError(f"early_stopping_patience must be >= 0 (0 = off) and validation_k >= 1, got "
                             f"{self.early_stopping_patience} and {self.validation_k}")
        if self.checkpoint_every_steps < 0 or self.checkpoint_every_minutes < 0:
            raise ValueError(f"checkpoint_every_steps and checkpoint_every_minutes must be >= 0 (0 = at epoch ends "
                             f"only), got {self.checkpoint_every_steps} and {self.checkpoint_every_minutes}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.uses_pool and self.num_negatives < 1:
            raise ValueError(f"strategy {self.strategy!r} needs num_negatives >= 1, got {self.num_negatives}")
        if self.negative_sharing not in NEGATIVE_SHARING:
            raise ValueError(f"negative_sharing must be one of {NEGATIVE_SHARING}, got {self.negative_sharing!r}")
        if self.negative_embeddings not in NEGATIVE_EMBEDDINGS:
            raise ValueError(f"negative_embeddings must be one of {NEGATIVE_EMBEDDINGS}, got "
                             f"{self.negative_embeddings!r}")
        if self.cache_refresh_rows < 0:
            raise ValueError(f"cache_refresh_rows must be >= 0 (0 = positives only), got {self.cache_refresh_rows}")
        if self.shared_negatives < 0:
            raise ValueError(f"shared_negatives must be >= 0 (0 = the batch size), got {self.shared_negatives}")
        if self.full_softmax_memory_mb < 1:
            raise ValueError(f"full_softmax_memory_mb must be >= 1, got {self.full_softmax_memory_mb}")
        if self.strategy == "full" and (self.mask_history_negatives or self.mask_user_positives
                                        or self.mask_same_user_in_batch):
            raise ValueError("mask_history_negatives, mask_user_positives and mask_same_user_in_batch mask sampled "
                             "negatives: strategy 'full' has none (every catalogue item is a column once)")
        if self.edis_negatives and self.negative_sharing == "shared":
            raise ValueError("edis_negatives interpolates each example's own pool negatives: use negative_sharing "
                             "'per_example' or 'per_cluster'")
        if self.logq_correction not in LOGQ_CORRECTIONS:
            raise ValueError(f"logq_correction must be one of {LOGQ_CORRECTIONS}, got {self.logq_correction!r}")
        if self.query_tower not in QUERY_TOWERS:
            raise ValueError(f"query_tower must be one of {QUERY_TOWERS}, got {self.query_tower!r}")
        if self.candidate_tower not in CANDIDATE_TOWERS:
            raise ValueError(f"candidate_tower must be one of {CANDIDATE_TOWERS}, got {self.candidate_tower!r}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        if self.edis_negatives and self.similarity != "cosine":
            raise ValueError("edis_negatives interpolates on the unit sphere: it needs similarity 'cosine', got "
                             f"{self.similarity!r}")
        if self.transformer_blocks < 1 or self.transformer_heads < 1 or self.embedding_dim % self.transformer_heads:
            raise ValueError(f"transformer_blocks and transformer_heads must be >= 1 and embedding_dim must divide by "
                             f"the heads, got {self.transformer_blocks} blocks, {self.transformer_heads} heads, "
                             f"embedding_dim {self.embedding_dim}")
        if self.sequence_training:
            if self.query_tower != "transformer":
                raise ValueError(f"sequence_training trains every position of a sequence with causal attention: it "
                                 f"needs query_tower 'transformer', got {self.query_tower!r}")
            if self.mask_history_negatives:
                raise ValueError("sequence_training does not support mask_history_negatives yet (a target's history "
                                 "is its chunk's earlier positions): train on per-interaction examples for it")
            if self.sequence_batch_size < 1:
                raise ValueError(f"sequence_batch_size must be >= 1, got {self.sequence_batch_size}")
        if not 0.0 <= self.transformer_dropout < 1.0:
            raise ValueError(f"transformer_dropout must be in [0, 1), got {self.transformer_dropout}")
        if self.history_pooling not in HISTORY_POOLING:
            raise ValueError(f"history_pooling must be one of {HISTORY_POOLING}, got {self.history_pooling!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.user_id_buckets < 0:
            raise ValueError(f"user_id_buckets must be >= 0 (0 = exact vocabulary), got {self.user_id_buckets}")
        if self.distribute not in DISTRIBUTE:
            raise ValueError(f"distribute must be one of {DISTRIBUTE}, got {self.distribute!r}")
        if self.global_in_batch_negatives and self.distribute == "none":
            raise ValueError("global_in_batch_negatives gathers the batches of several replicas: use distribute "
                             "'mirrored' or 'multi_worker'")
        if self.edis_negatives < 0 or not 0.0 <= self.edis_max_weight < 1.0:
            raise ValueError(f"edis_negatives must be >= 0 and edis_max_weight in [0, 1), got "
                             f"{self.edis_negatives}, {self.edis_max_weight}")
        if self.edis_negatives and not self.uses_pool:
            raise ValueError("edis_negatives interpolates pool negatives: use strategy 'oob' or 'cluster_oob'")
        if self.random_ratio < 0 or self.cluster_ratio < 0 or self.random_ratio + self.cluster_ratio == 0:
            raise ValueError(f"bad random:cluster ratio {self.random_ratio}:{self.cluster_ratio}")

    @property
    def uses_pool(self) -> bool:
        return self.strategy in POOL_STRATEGIES

    @property
    def caches_negatives(self) -> bool:
        return self.uses_pool and self.negative_embeddings == "cached"

    @property
    def shares_negatives(self) -> bool:
        return self.uses_pool and self.negative_sharing == "shared"

    def negative_split(self) -> tuple[int, int]:
        """(random, cluster) pool draws: per example, or with 'shared' per step (`shared_budget`)."""
        if not self.uses_pool:
            return 0, 0
        total = self.shared_budget() if self.shares_negatives else self.num_negatives
        if self.strategy == "oob":
            return total, 0
        cluster = round(total * self.cluster_ratio / (self.random_ratio + self.cluster_ratio))
        return total - cluster, cluster

    @property
    def step_rows(self) -> int:
        """Records a training step reads: sequence chunks with `sequence_training`, else examples."""
        return self.sequence_batch_size if self.sequence_training else self.batch_size

    def shared_budget(self) -> int:
        """M, the shared pool draws of a step (the cluster share may grow to one draw per distinct cluster)."""
        return self.shared_negatives or self.batch_size

    def slots_for(self, num_items: int, num_clusters: int) -> int:
        if self.slots_per_cluster:
            return self.slots_per_cluster
        target, slots = 2 * max(1, num_items) / max(1, num_clusters), 16
        while slots < target:
            slots *= 2
        return slots
