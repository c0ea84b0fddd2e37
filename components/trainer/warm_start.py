"""Warm start: a run that starts from a previous trainer output's towers on a changed catalogue and user set.

Every trainer output holds its vocabularies (`vocabulary/items.txt`: the item of each embedding row from
row 2 on; `vocabulary/users.txt`: the user of each user row from row 1 on, when the tower has a user
vocabulary). A run with `--trainer.warm_start_from BASE` builds its model for its own catalogue and
users, restores BASE's towers from its last checkpoint into a model of BASE's vocabularies, and copies:

- item embedding rows by item id; the padding and unknown-item rows as they are. An item new to this
  run starts at the mean of the carried rows of its cluster (its cluster as this run's table says; the
  layer's random initialisation when no carried item shares it), so it starts where its neighbours are;
- user embedding rows by user id; a new user starts at the mean of the carried user rows (the
  unknown-user row is carried as it is). The user vocabulary grows: it is the base's users plus this
  run's training users (`grown_users`), so a user absent from one window's data keeps their row (no
  eviction yet: a user row costs 4 x embedding_dim bytes). Hashed user ids (`user_id_buckets`) keep their rows;
- every other weight (cluster embeddings, MLPs, position weights, transformer blocks) as it is.

The optimizer starts afresh (Adam's moments and step count are reset: moments of rows that moved to
new positions, or of new rows, have no meaning, and TFX's warm start and tf_keras'
`warmstart_embedding_matrix` carry weights only). The pool is preloaded with this run's catalogue, so new
items are in their cluster segments from step 1. A base whose towers do not fit (another embedding
width, tower kind, history length or cluster count) stops the run with the mismatch named.
Memory: the item and user tables of both models are held at once, twice (variables and a NumPy copy).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from llm_hardneg.components.common import fileio
from llm_hardneg.components.common.tables import is_in, sorted_lookup
from llm_hardneg.components.trainer.config import TrainerConfig
from llm_hardneg.components.trainer.data import ItemCatalogue

# settings that shape the towers' weights: a base must have the same
SHAPING_FIELDS = ("embedding_dim", "query_tower", "candidate_tower", "history_pooling", "history_length",
                  "transformer_blocks", "transformer_heads", "user_id_buckets")
VOCABULARY = "vocabulary"


def write_vocabulary(output_dir: str, catalogue: ItemCatalogue, users: list[str] | None, base_dir: str = "",
                     training_users: list[str] | None = None) -> None:
    """The item of each item row (from row 2) and the user of each user row (from row 1) of this run, and
    beside them each id's idle count (`idle_counts`: 0 when it has training examples in this run)."""
    items_idle = idle_counts(base_dir, "items", catalogue.item_ids, catalogue.train_counts > 0)
    fileio.write_text(fileio.join(output_dir, VOCABULARY, "items.txt"), "".join(f"{i}\n" for i in catalogue.item_ids))
    fileio.write_text(fileio.join(output_dir, VOCABULARY, "items_idle.txt"), "".join(f"{n}\n" for n in items_idle))
    if users is not None:
        trained = is_in(users, training_users or users)
        users_idle = idle_counts(base_dir, "users", np.asarray(users, dtype=object), trained)
        fileio.write_text(fileio.join(output_dir, VOCABULARY, "users.txt"), "".join(f"{u}\n" for u in users))
        fileio.write_text(fileio.join(output_dir, VOCABULARY, "users_idle.txt"), "".join(f"{n}\n" for n in users_idle))


def idle_counts(base_dir: str, name: str, ids: np.ndarray, trained: np.ndarray) -> np.ndarray:
    """Per id of `ids`: how many runs of the warm-start chain in a row it has had no training example in,
    this one included: 0 when `trained`, else the base's count + 1 (1 for an id the base has no row for).
    name: 'items' or 'users' (the base's vocabulary/<name>.txt and <name>_idle.txt; a base written before
    the idle counts counts 0 for each of its ids)."""
    idle = np.where(trained, 0, 1).astype(np.int64)
    path = fileio.join(base_dir, VOCABULARY, f"{name}.txt") if base_dir else ""
    if not path or not fileio.exists(path):
        return idle
    base_ids = np.asarray(fileio.read_lines(path), dtype=str)
    idle_path = fileio.join(base_dir, VOCABULARY, f"{name}_idle.txt")
    base_idle = (np.asarray(fileio.read_lines(idle_path), np.int64) if fileio.exists(idle_path)
                 else np.zeros(len(base_ids), np.int64))
    at, in_base = _mapped_rows(np.asarray(ids, dtype=str), base_ids)
    carried = in_base & ~np.asarray(trained, bool)
    idle[carried] = base_idle[at[carried]] + 1
    return idle


def grown_users(base_dir: str, users: list[str], evict_idle_windows: int = 0) -> tuple[list[str], int]:
    """This run's user vocabulary when warm-started: the base's users and this run's, sorted, less the base's
    users that have gone `evict_idle_windows` runs without a training example (0: none evicted); and how many
    were evicted."""
    path = fileio.join(base_dir, VOCABULARY, "users.txt")
    if not fileio.exists(path):
        return users, 0
    grown = np.asarray(sorted(set(users).union(fileio.read_lines(path))), dtype=object)
    if not evict_idle_windows:
        return grown.tolist(), 0
    idle = idle_counts(base_dir, "users", grown, is_in(grown, users))
    keep = idle < evict_idle_windows
    return grown[keep].tolist(), int((~keep).sum())


def new_items(base_dir: str, item_ids: np.ndarray) -> np.ndarray:
    """[V] bool: which of `item_ids` have no row in the base run `base_dir` (its vocabulary/items.txt)."""
    path = fileio.join(base_dir, VOCABULARY, "items.txt")
    if not fileio.exists(path):
        raise _not_a_base(base_dir)
    return ~is_in(item_ids, fileio.read_lines(path))


def _not_a_base(base_dir: str) -> ValueError:
    return ValueError(f"--trainer.warm_start_from {base_dir!r}: not a finished trainer output (it needs "
                      f"train_summary.json and {VOCABULARY}/items.txt)")


def pool_new_item_share(pool, is_new: np.ndarray) -> float:
    """Share of the pool's filled slots that hold an item new to the base: `is_new` [V] by catalogue
    position (vocabulary index - 2); the padding and unknown rows count as not new."""
    index = pool.stored["item_index"].numpy()[pool.valid.numpy()]
    if not len(index):
        return 0.0
    return float(np.concatenate([[False, False], is_new])[index].mean())


def preload_items(catalogue: ItemCatalogue, config: TrainerConfig, is_new: np.ndarray | None = None) -> ItemCatalogue:
    """The items the pool is preloaded with before step 1: the whole vocabulary, or warm-started with
    `preload_new_items` false the base's items only (a new item then enters with its first batch).
    is_new: `new_items` of the catalogue, when the caller has it already."""
    if not config.warm_start_from or config.preload_new_items:
        return catalogue
    return catalogue.subset(~(new_items(config.warm_start_from, catalogue.item_ids) if is_new is None else is_new))


def item_vocabulary(catalogue: ItemCatalogue, config: TrainerConfig) -> tuple[ItemCatalogue, dict]:
    """The items of `catalogue` that get rows under `config.item_vocabulary` (see TrainerConfig), and a
    report: how many of the table's items, how many new to the base, how many left to the unknown row."""
    total = len(catalogue.item_ids)
    report = {"kind": config.item_vocabulary, "catalogue_items": total}
    if config.item_vocabulary == "catalogue":
        return catalogue, {**report, "items": total, "outside": 0}
    if config.item_vocabulary == "base" and not config.warm_start_from:
        raise ValueError("item_vocabulary 'base' keeps a base model's items: it needs warm_start_from "
                         "(or --base-model)")
    keep = catalogue.train_counts > 0 if config.item_vocabulary == "trained" else np.zeros(total, bool)
    if config.warm_start_from:
        in_base = ~new_items(config.warm_start_from, catalogue.item_ids)
        report["new_items"] = int((keep & ~in_base).sum())
        keep |= in_base
        if config.evict_idle_windows and config.item_vocabulary == "trained":
            idle = idle_counts(config.warm_start_from, "items", catalogue.item_ids, catalogue.train_counts > 0)
            evicted = keep & (idle >= config.evict_idle_windows)
            report["evicted"] = int(evicted.sum())
            keep &= ~evicted
    if not keep.any():
        raise ValueError(f"item_vocabulary {config.item_vocabulary!r}: none of the {total:,} items of the item "
                         "table has training examples" + (" or a row in the base" if config.warm_start_from else ""))
    selected = catalogue.subset(keep)
    report.update(items=int(keep.sum()), outside=int(total - keep.sum()))
    print(f"[trainer] item vocabulary {config.item_vocabulary!r}: {report['items']:,} of {total:,} items get rows"
          + (f" ({report['new_items']:,} new to the base)" if "new_items" in report else "")
          + (f", {report['evicted']:,} evicted (idle for {config.evict_idle_windows} runs)" if "evicted" in report
             else "")
          + f"; {report['outside']:,} fall back to the unknown-item row", flush=True)
    return selected, report


def _base(base_dir: str, config: TrainerConfig, num_clusters: int) -> tuple[dict, str]:
    """The base run's summary and last checkpoint, after checking that its towers fit this config."""
    summary_path = fileio.join(base_dir, "train_summary.json")
    if not fileio.exists(summary_path) or not fileio.exists(fileio.join(base_dir, VOCABULARY, "items.txt")):
        raise _not_a_base(base_dir)
    summary = fileio.read_json(summary_path)
    old = summary["config"]
    mismatches = [f"{name}: base {old.get(name)!r}, this run {getattr(config, name)!r}" for name in SHAPING_FIELDS
                  if old.get(name) != getattr(config, name)]
    if summary["num_clusters"] != num_clusters:
        mismatches.append(f"clusters: base {summary['num_clusters']}, this run {num_clusters}")
    if mismatches:
        raise ValueError(f"--trainer.warm_start_from {base_dir!r}: the base model's towers do not fit this run ("
                         + "; ".join(mismatches) + ")")
    latest = tf.train.latest_checkpoint(fileio.join(base_dir, "checkpoints"))
    if latest is None:
        raise ValueError(f"--trainer.warm_start_from {base_dir!r}: no checkpoint in {base_dir}/checkpoints")
    return summary, latest


def _tower_weights(model) -> list[tf.Variable]:
    """The towers' weights in a fixed order, each once (the item and cluster tables are shared)."""
    seen, out = set(), []
    for w in model.query_tower.weights + model.candidate_tower.weights:
        if w.ref() not in seen:
            seen.add(w.ref())
            out.append(w)
    return out


def _build(model) -> None:
    """Creates the towers' variables (a call on one padding example)."""
    model.query_tower(tf.constant([""]), tf.constant([[""]]))
    model.candidate_tower(tf.constant([0], tf.int64))


def _mapped_rows(new_keys: np.ndarray, old_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each new key its position among old_keys (in any order), and whether it is there."""
    order = np.argsort(old_keys, kind="stable")
    at, found = sorted_lookup(old_keys[order], new_keys)
    return order[at], found


def warm_start(model, config: TrainerConfig, catalogue: ItemCatalogue, users: list[str] | None) -> dict:
    """Copies the base run's towers (`config.warm_start_from`) into `model` (built here); returns the report."""
    from llm_hardneg.components.trainer.model import TwoTowerModel  # the model module imports nothing from here

    base_dir = config.warm_start_from
    summary, latest = _base(base_dir, config, catalogue.num_clusters)
    old_items = np.asarray(fileio.read_lines(fileio.join(base_dir, VOCABULARY, "items.txt")), dtype=object).astype(str)
    users_path = fileio.join(base_dir, VOCABULARY, "users.txt")
    old_users = fileio.read_lines(users_path) if users is not None and fileio.exists(users_path) else None
    if users is not None and old_users is None:
        raise ValueError(f"--trainer.warm_start_from {base_dir!r}: this run has a user vocabulary, the base none")
    old_catalogue = ItemCatalogue(np.sort(old_items), np.zeros(len(old_items), np.int64),
                                  np.ones(len(old_items), np.int64), catalogue.num_clusters)
    if not np.array_equal(old_catalogue.item_ids, old_items):
        raise ValueError(f"--trainer.warm_start_from {base_dir!r}: {VOCABULARY}/items.txt is not sorted")
    old = TwoTowerModel(TrainerConfig(**{**{f: getattr(config, f) for f in SHAPING_FIELDS}, "strategy": "in_batch"}),
                        old_catalogue, old_users)
    _build(old)
    _build(model)
    tf.train.Checkpoint(query_tower=old.query_tower, candidate_tower=old.candidate_tower).restore(latest) \
        .expect_partial().assert_existing_objects_matched()
    item_table = model.candidate_tower.item_embedding.embeddings
    user_table = getattr(getattr(model.query_tower, "user_embedding", None), "embeddings", None)
    report = {"base": base_dir, "base_checkpoint": latest, "optimizer": "reset"}
    for new, previous in zip(_tower_weights(model), _tower_weights(old)):
        if new is item_table:
            new.assign(_item_rows(previous.numpy(), new.numpy(), old_items, catalogue, report))
        elif user_table is not None and new is user_table and not config.user_id_buckets:
            new.assign(_user_rows(previous.numpy(), new.numpy(), old_users, users, report))
        elif tuple(new.shape) != tuple(previous.shape):  # the fields checked above fix every other shape
            raise ValueError(f"--trainer.warm_start_from {base_dir!r}: weight {new.name} is {new.shape} here, "
                             f"{previous.shape} in the base")
        else:
            new.assign(previous)
    return report


def _item_rows(old: np.ndarray, rows: np.ndarray, old_items: np.ndarray, catalogue: ItemCatalogue,
               report: dict) -> np.ndarray:
    """The new item table: padding and unknown rows and known items' rows carried, new items at their
    cluster's mean of carried rows (their random initialisation where the cluster has none)."""
    at, known = _mapped_rows(catalogue.item_ids.astype(str), old_items)
    rows[:2] = old[:2]
    rows[2:][known] = old[2 + at[known]]
    clusters = catalogue.cluster_ids
    sums = np.zeros((catalogue.num_clusters, rows.shape[1]), np.float64)
    np.add.at(sums, clusters[known], rows[2:][known])
    counts = np.bincount(clusters[known], minlength=catalogue.num_clusters)
    fresh = ~known & (counts[clusters] > 0)
    rows[2:][fresh] = (sums[clusters[fresh]] / counts[clusters[fresh], None]).astype(rows.dtype)
    report.update(items_carried=int(known.sum()), items_new=int((~known).sum()),
                  items_new_from_cluster=int(fresh.sum()), items_dropped=int(len(old_items) - known.sum()))
    return rows


def _user_rows(old: np.ndarray, rows: np.ndarray, old_users: list[str], users: list[str], report: dict) -> np.ndarray:
    """The new user table: the unknown-user row and known users' rows carried, new users at the mean of the
    carried users' rows."""
    at, known = _mapped_rows(np.asarray(users, dtype=object).astype(str),
                             np.asarray(old_users, dtype=object).astype(str))
    rows[0] = old[0]
    rows[1:][known] = old[1 + at[known]]
    if known.any():
        rows[1:][~known] = rows[1:][known].mean(axis=0)
    report.update(users_carried=int(known.sum()), users_new=int((~known).sum()))
    return rows
