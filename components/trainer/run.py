"""run_trainer: train the two-tower model and export the query and candidate towers.

Outputs under output_dir:
  checkpoints/      model, optimizer, pool state, epoch and step (resume restarts where the last one was written);
                    with early stopping validation.json (the scores) and best/ (the best epoch's towers)
  logs/             TensorBoard scalars: loss, pool fill, masked-sample and hit rates
  query_model/      SavedModel: (user_id [B], history_item_ids [B, N]) -> embedding [B, d]
  candidate_model/  SavedModel: item_id [B] -> embedding [B, d]
  vocabulary/       items.txt (the item of each item row from row 2), users.txt (each user row's from row 1)
  train_summary.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import tensorflow as tf
import tf_keras

from llm_hardneg.components.common import fileio
from llm_hardneg.components.trainer.config import POOL_STRATEGIES, TrainerConfig
from llm_hardneg.components.trainer.data import example_files, load_catalogue, user_positive_keys
from llm_hardneg.components.trainer.distribute import (
    epoch_batches,
    is_chief,
    make_strategy,
    replica_values,
    write_location,
)
from llm_hardneg.components.trainer.model import CandidateTower, TwoTowerModel
from llm_hardneg.components.trainer.optimizer import make_optimizer
from llm_hardneg.components.trainer.validation import EarlyStopping
from llm_hardneg.components.trainer.warm_start import (
    grown_users,
    item_vocabulary,
    new_items,
    pool_new_item_share,
    preload_items,
    warm_start,
    write_vocabulary,
)


class _Progress(tf_keras.callbacks.Callback):
    """Prints step, loss and examples/s every `every` steps, and a line per epoch."""

    def __init__(self, every: int, batch_size: int, steps_per_epoch: int, epochs: int, unit: str = "examples"):
        super().__init__()
        self.every, self.batch_size, self.steps_per_epoch, self.epochs = every, batch_size, steps_per_epoch, epochs
        self.unit = unit
        self.examples_per_second: list[float] = []
        self.offset = 0  # steps of this epoch done before a resumption

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.t0, self.tick, self.tick_step = epoch, time.monotonic(), time.monotonic(), self.offset

    def on_train_batch_end(self, batch, logs=None):
        step = self.offset + batch + 1
        if step % self.every == 0:
            now = time.monotonic()
            rate = (step - self.tick_step) * self.batch_size / max(now - self.tick, 1e-9)
            self.tick, self.tick_step = now, step
            extras = ", ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items())
            print(f"[trainer] epoch {self.epoch + 1}/{self.epochs} step {step}/{self.steps_per_epoch} "
                  f"{extras}; {rate:,.0f} {self.unit}/s", flush=True)

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.monotonic() - self.t0
        rate = (self.steps_per_epoch - self.offset) * self.batch_size / max(seconds, 1e-9)
        self.examples_per_second.append(rate)
        extras = ", ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items())
        print(f"[trainer] epoch {epoch + 1}/{self.epochs} done in {seconds:.0f}s: {extras}; {rate:,.0f} {self.unit}/s",
              flush=True)


class _Checkpoints(tf_keras.callbacks.Callback):
    """Writes a checkpoint at every epoch end and, inside an epoch, every `every_steps` steps and/or
    `every_minutes` minutes; `epoch` and `step` (done in the current epoch) say where to resume."""

    def __init__(self, manager: tf.train.CheckpointManager, epoch: tf.Variable, step: tf.Variable,
                 steps_per_epoch: int, every_steps: int, every_minutes: float):
        super().__init__()
        self.manager, self.epoch_var, self.step_var = manager, epoch, step
        self.steps_per_epoch, self.every_steps, self.every_seconds = steps_per_epoch, every_steps, 60 * every_minutes
        self.offset, self.last_save = 0, time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        step = self.offset + batch + 1
        due = ((self.every_steps and step % self.every_steps == 0)
               or (self.every_seconds and time.monotonic() - self.last_save >= self.every_seconds))
        if due and step < self.steps_per_epoch:  # the epoch's last step is saved as the epoch's end
            self._save(self.epoch, step)

    def on_epoch_end(self, epoch, logs=None):
        self._save(epoch + 1, 0)

    def _save(self, epoch: int, step: int) -> None:
        self.epoch_var.assign(epoch)
        self.step_var.assign(step)
        self.manager.save(checkpoint_number=epoch * self.steps_per_epoch + step)
        self.last_save = time.monotonic()


class QueryServing(tf.Module):
    """Serving wrapper of the query tower (no pool, no optimizer state)."""

    def __init__(self, tower: tf_keras.Model):
        super().__init__()
        self.tower = tower

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id"),
                                  tf.TensorSpec([None, None], tf.string, name="history_item_ids")])
    def __call__(self, user_id, history_item_ids):
        return {"embedding": self.tower(user_id, history_item_ids)}


class CandidateServing(tf.Module):
    """Serving wrapper of the candidate tower."""

    def __init__(self, tower: CandidateTower):
        super().__init__()
        self.tower = tower

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="item_id")])
    def __call__(self, item_id):
        return {"embedding": self.tower.embed_ids(item_id)}


def count_lines(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def config_record(config: TrainerConfig) -> dict:
    """The config as it is written to (and read back from) train_summary.json and the checkpoints' config.json."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


# what may change between a run and its resumption (deduplicate_candidates: the same loss to float tolerance)
RESUMABLE_CHANGES = ("epochs", "early_stopping_patience", "log_every_steps", "checkpoint_every_steps",
                     "checkpoint_every_minutes", "deduplicate_candidates", "full_softmax_memory_mb")
# Fields added after runs were recorded, with the value that reproduces what those runs did (a
# field whose default changed the behaviour, such as logq_correction, is not listed: such runs differ).
ADDED_FIELDS = {"mask_user_positives": False, "optimizer": "adam", "user_id_buckets": 0,
                "global_in_batch_negatives": False, "negative_sharing": "per_example", "shared_negatives": 0,
                "query_tower": "pooled", "transformer_blocks": 2, "transformer_heads": 1, "transformer_dropout": 0.2,
                "sequence_training": False, "sequence_batch_size": 64, "candidate_tower": "mlp",
                "similarity": "cosine", "negative_embeddings": "recompute", "cache_refresh_rows": 1024,
                "warm_start_from": "", "item_vocabulary": "catalogue", "evict_idle_windows": 0,
                "preload_new_items": True, "mask_same_user_in_batch": False, "early_stopping_patience": 0,
                "validation_k": 10, "validation_exclude_seen": True}


SHARING_WORDS = {"shared": "shared by each step", "per_cluster": "per example, shared by the examples of a cluster",
                 "per_example": "per example"}


# fields that only the out-of-batch pool reads: between two configs without a pool they change nothing
POOL_FIELDS = ("num_negatives", "negative_sharing", "negative_embeddings", "cache_refresh_rows", "shared_negatives",
               "random_ratio", "cluster_ratio",
               "slots_per_cluster", "pool_sampling", "mask_history_negatives", "mask_user_positives", "edis_negatives",
               "edis_max_weight")


def config_changes(old: dict, config: TrainerConfig) -> list[str]:
    """How `config` differs from a recorded config ('field: old -> new'), ignoring RESUMABLE_CHANGES, and the
    settings neither reads: POOL_FIELDS when neither uses the pool (an in_batch run is the same run whatever
    its pool settings), M or K when neither draws shared or per-example negatives."""
    old, new = {**ADDED_FIELDS, **old}, config_record(config)
    ignored = set(RESUMABLE_CHANGES)
    if not config.uses_pool and old.get("strategy") not in POOL_STRATEGIES:
        ignored |= set(POOL_FIELDS)
    if "shared" not in (old.get("negative_sharing"), config.negative_sharing):  # M: read by shared draws alone
        ignored.add("shared_negatives")
    if old.get("negative_sharing") == config.negative_sharing == "shared":  # K: read by the other two alone
        ignored.add("num_negatives")
    if "cached" not in (old.get("negative_embeddings"), config.negative_embeddings):  # R: read by the cache alone
        ignored.add("cache_refresh_rows")
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if k not in ignored and old.get(k) != new.get(k)]


def checkpoint_config_changes(output_dir: str, config: TrainerConfig) -> list[str] | None:
    """How `config` differs from the config that wrote output_dir's checkpoints ('field: old -> new'),
    ignoring RESUMABLE_CHANGES; None when there is no checkpoint."""
    directory = os.path.join(output_dir, "checkpoints")
    if not tf.train.latest_checkpoint(directory):
        return None
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        return ["config.json: missing (checkpoints of an unknown config)"]
    with open(path, encoding="utf-8") as f:
        return config_changes(json.load(f), config)


def run_trainer(config: TrainerConfig, examples_dir: str, clusters_dir: str, output_dir: str) -> dict:
    """Trains on examples_dir/train with clusters_dir/<cluster_source>; returns the summary.

    Under distribute 'multi_worker' every worker runs this; the chief writes output_dir and the
    others write to scratch directories that are removed."""
    strategy = make_strategy(config.distribute)  # first: a multi-worker strategy must precede other ops
    with write_location(output_dir, is_chief(strategy)) as write_dir:
        return _train(config, strategy, examples_dir, clusters_dir, output_dir, write_dir)


def _train(config: TrainerConfig, strategy: tf.distribute.Strategy, examples_dir: str, clusters_dir: str,
           output_dir: str, write_dir: str) -> dict:
    chief = write_dir == output_dir
    tf_keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    catalogue = load_catalogue(os.path.join(examples_dir, "items"), os.path.join(clusters_dir, config.cluster_source))
    catalogue, vocabulary = item_vocabulary(catalogue, config)
    # warm-started: which vocabulary items the base has no row for (the preload and the summary's pool share)
    is_new = new_items(config.warm_start_from, catalogue.item_ids) if config.warm_start_from else None
    users_path = os.path.join(examples_dir, "users.txt")
    # hashed ids and the transformer tower (no user embedding) need no vocabulary
    users = None if config.user_id_buckets or config.query_tower == "transformer" else fileio.read_lines(users_path)
    training_users, users_evicted = users, 0
    if users is not None and config.warm_start_from:  # known users keep their rows (warm_start.grown_users)
        users, users_evicted = grown_users(config.warm_start_from, users, config.evict_idle_windows)
        vocabulary["users_evicted"] = users_evicted
    row_bytes = 3 * 4 * config.embedding_dim  # a row and Adam's two moments, float32
    vocabulary["evicted_bytes"] = row_bytes * (vocabulary.get("evicted", 0) + users_evicted)
    with open(os.path.join(examples_dir, "summary.json"), encoding="utf-8") as f:
        examples_summary = json.load(f)
    train_examples = examples_summary["train_examples"]
    batch_size = config.step_rows
    if config.sequence_training:
        written = examples_summary.get("sequence_length", 0)
        if not written or written > config.history_length:
            raise ValueError(f"sequence_training needs example_gen's sequence records of at most history_length "
                             f"{config.history_length} items of history: {examples_dir} has "
                             + (f"sequence_length {written}" if written else
                                "none (set --example_gen.sequence_length)"))
        train_examples = examples_summary["train_sequences"]  # a step is sequence_batch_size sequence chunks
    steps_per_epoch = -(-train_examples // batch_size)

    files = example_files(examples_dir, "train_sequences" if config.sequence_training else "train")
    # the (user, item) training positives come from the per-interaction examples, which sequence records summarise
    positive_keys = user_positive_keys(example_files(examples_dir, "train")) if config.mask_user_positives else None
    with strategy.scope():
        model = TwoTowerModel(config, catalogue, users, positive_keys)
        model.compile(optimizer=make_optimizer(config.optimizer, config.learning_rate))
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
    # The training state only: towers, pool (with its random generator), optimizer, epoch and step. Metric
    # trackers are left out (they restart each epoch), so adding a metric never invalidates earlier checkpoints.
    checkpoint = tf.train.Checkpoint(query_tower=model.query_tower, candidate_tower=model.candidate_tower,
                                     optimizer=model.optimizer, epoch=epoch, step_in_epoch=step,
                                     **({"pool": model.pool} if model.pool is not None else {}),
                                     **({"negative_cache": model.cache} if model.cache is not None else {}))
    # every worker resumes from the chief's checkpoints; only the chief's are kept
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(write_dir, "checkpoints"), max_to_keep=2)
    changes = checkpoint_config_changes(output_dir, config)
    if changes:
        raise ValueError(f"{output_dir} holds checkpoints of a different trainer config ({'; '.join(changes)}): "
                         "resuming needs the same config; use another output directory or delete it")
    latest = tf.train.latest_checkpoint(os.path.join(output_dir, "checkpoints"))
    warm = None
    if latest:
        try:
            checkpoint.restore(latest).assert_existing_objects_matched()
        except AssertionError as error:  # the state's layout changed (a checkpoint of an older version)
            raise ValueError(f"{latest} does not hold this version's training state "
                             f"({str(error).splitlines()[0][:200]}): it was written by an older llm-hardneg; "
                             "use another output directory or delete it") from None
        where = f"epoch {int(epoch.numpy())}" + (f", step {int(step.numpy())}/{steps_per_epoch} of the next"
                                                 if int(step.numpy()) else "")
        print(f"[trainer] resumed from {latest} ({where})", flush=True)
    else:
        with strategy.scope():  # the warm start and the cache's preload build the towers: the strategy's variables
            if config.warm_start_from:
                warm = warm_start(model, config, catalogue, users)
                print(f"[trainer] warm start from {warm['base_checkpoint']}: "
                      + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in warm.items() if isinstance(v, int))
                      + "; optimizer reset", flush=True)
            model.preload_pool(preload_items(catalogue, config, is_new))
        if chief:
            os.makedirs(manager.directory, exist_ok=True)
            with open(os.path.join(manager.directory, "config.json"), "w", encoding="utf-8") as f:
                json.dump(config_record(config), f, indent=2)
    if model.pool is not None:
        print(f"[trainer] pool: {model.pool.num_clusters} clusters x {model.pool.slots_per_cluster} slots, "
              f"{float(model.pool.fill_rate()):.1%} filled; negatives "
              f"{SHARING_WORDS[config.negative_sharing]}: "
              f"{model.num_random} random + {model.num_cluster} cluster"
              + (f", embeddings cached ({model.cache.rows:,} rows, {config.cache_refresh_rows} re-embedded a step)"
                 if model.cache is not None else ""), flush=True)

    unit = "sequence chunks" if config.sequence_training else "examples"
    progress = _Progress(config.log_every_steps, batch_size, steps_per_epoch, config.epochs, unit)
    checkpoints = _Checkpoints(manager, epoch, step, steps_per_epoch, config.checkpoint_every_steps,
                               config.checkpoint_every_minutes)
    callbacks = [progress, checkpoints,
                 tf_keras.callbacks.TensorBoard(os.path.join(write_dir, "logs"), update_freq=config.log_every_steps)]
    stopping = EarlyStopping(config, examples_dir, model, os.path.join(output_dir, "checkpoints"), write_dir) \
        if config.early_stopping_patience else None
    started = time.monotonic()
    first, skip = int(epoch.numpy()), int(step.numpy())
    if stopping is not None and not skip and stopping.scored_epochs < first:  # killed before scoring its last epoch
        stopping.after_epoch(first)
    for e in range(first, config.epochs):
        if stopping is not None and stopping.stopped:
            break
        # One fit per epoch with an epoch-specific shuffle seed: the order of epoch e is the same
        # whether or not the run was interrupted and resumed before it, so a run resumed at step s of
        # an epoch skips that epoch's first s batches and trains on exactly the batches it had not.
        progress.offset = checkpoints.offset = skip if e == first else 0
        batches = epoch_batches(strategy, files, config, seed=config.seed * 100_003 + e, skip=progress.offset)
        model.fit(batches, epochs=e + 1, initial_epoch=e, steps_per_epoch=steps_per_epoch - progress.offset,
                  verbose=0, callbacks=callbacks)
        if stopping is not None:
            stopping.after_epoch(e + 1)
    train_seconds = time.monotonic() - started
    exported_epoch = int(epoch.numpy()) if stopping is None else stopping.restore_best(int(epoch.numpy()))
    if model.pool is not None and strategy.num_replicas_in_sync > 1:
        digests = replica_values(strategy, model.pool.fingerprint)
        if len(set(digests)) != 1:
            raise RuntimeError(f"the pool copies of the {len(digests)} replicas differ (fingerprints {digests})")
        print(f"[trainer] pool copies identical on {len(digests)} replicas (fingerprint {digests[0]})", flush=True)

    # what a later run's warm start maps rows by, with each id's idle count (eviction)
    write_vocabulary(write_dir, catalogue, users, config.warm_start_from, training_users)
    tf.saved_model.save(QueryServing(model.query_tower), os.path.join(write_dir, "query_model"))
    tf.saved_model.save(CandidateServing(model.candidate_tower), os.path.join(write_dir, "candidate_model"))
    summary = {
        "config": config_record(config),
        "train_examples_per_epoch": train_examples,
        "steps_per_epoch": steps_per_epoch,
        "replicas": strategy.num_replicas_in_sync,
        "items": len(catalogue.item_ids),
        "users": len(users) if users is not None else count_lines(users_path),
        "user_rows": 0 if config.query_tower == "transformer" else config.user_id_buckets or len(users) + 1,
        "num_clusters": catalogue.num_clusters,
        "train_seconds": train_seconds,
        "examples_per_second": progress.examples_per_second,  # sequences per second with sequence_training
        # training targets (positives) per second: with sequence_training every target of the epoch's sequences
        "targets_per_second": [r * (examples_summary["train_sequence_targets"] if config.sequence_training else
                                    examples_summary["train_positives"]) / (steps_per_epoch * batch_size)
                               for r in progress.examples_per_second],
        "pool": None if model.pool is None else {
            "clusters": model.pool.num_clusters, "slots_per_cluster": model.pool.slots_per_cluster,
            "fill_rate": float(model.pool.fill_rate()),
            # warm-started: how much of the pool the items new to the base hold at the end (they enter at step 1)
            **({"new_item_share": pool_new_item_share(model.pool, is_new)} if is_new is not None else {}),
        },
        "final_metrics": {k: float(v.result()) for k, v in model.trackers.items()},
        "epochs_trained": int(epoch.numpy()),
        "early_stopping": None if stopping is None else stopping.summary(exported_epoch),
        "warm_start": warm,
        "item_vocabulary": vocabulary,
    }
    with open(os.path.join(write_dir, "train_summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    where = output_dir if chief else f"scratch (removed; the chief writes {output_dir})"
    print(f"[trainer] {train_examples:,} training {unit} in (x {int(epoch.numpy())} epochs, {config.strategy}) -> "
          f"query and candidate models in {where} after {train_seconds:.0f}s; dropped 0 (every batch is "
          f"trained, the last one smaller)", flush=True)
    return summary
