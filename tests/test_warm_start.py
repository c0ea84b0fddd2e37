"""Warm start from a previous trainer output: rows carried by id, new rows initialised as documented."""

import dataclasses
import json
import os

import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf

from llm_hardneg.components.trainer import TrainerConfig, run_trainer
from llm_hardneg.components.trainer.data import ItemCatalogue, load_catalogue
from llm_hardneg.components.trainer.model import TwoTowerModel
from llm_hardneg.components.trainer.warm_start import (
    grown_users,
    idle_counts,
    item_vocabulary,
    pool_new_item_share,
    preload_items,
    warm_start,
)
from tests.test_trainer import tiny_config


@pytest.fixture(scope="module")
def base_run(examples_dir, clusters_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("base"))
    config = tiny_config(epochs=1)
    run_trainer(config, examples_dir, clusters_dir, out)
    return config, out


def _checkpoint_table(out: str, name: str) -> np.ndarray:
    """A table of the base's last checkpoint, read by name (the oracle: no model is built)."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(out, "checkpoints")))
    keys = [k for k in reader.get_variable_to_shape_map() if f"{name}/embeddings" in k and "optimizer" not in k
            and "OPTIMIZER_SLOT" not in k]
    assert keys, name
    return reader.get_tensor(keys[0])


def test_warm_start_carries_rows_by_id_and_starts_new_ones_at_their_cluster(base_run, examples_dir, clusters_dir):
    config, out = base_run
    old = load_catalogue(os.path.join(examples_dir, "items"), os.path.join(clusters_dir, "llm"))
    old_users = [u for u in open(os.path.join(out, "vocabulary", "users.txt")).read().split("\n") if u]
    assert open(os.path.join(out, "vocabulary", "items.txt")).read().split() == old.item_ids.tolist()
    # this run: 5 items gone, 3 new ones (two in a cluster with carried items, one in an empty cluster)
    keep = old.item_ids[5:]
    clusters = old.cluster_ids[5:]
    populated = int(np.bincount(clusters).argmax())
    empty = int(np.setdiff1d(np.arange(old.num_clusters), clusters)[0]) if len(np.unique(clusters)) < \
        old.num_clusters else None
    new_ids = np.array(["zz_new_a", "zz_new_b"] + (["zz_new_c"] if empty is not None else []))
    new_clusters = np.array([populated, populated] + ([empty] if empty is not None else []))
    order = np.argsort(np.concatenate([keep, new_ids]))
    catalogue = ItemCatalogue(np.concatenate([keep, new_ids])[order], np.concatenate([clusters, new_clusters])[order],
                              np.ones(len(order), np.int64), old.num_clusters)
    users = old_users[1:] + ["new_user"]
    warm = dataclasses.replace(config, warm_start_from=out)
    model = TwoTowerModel(warm, catalogue, users)
    report = warm_start(model, warm, catalogue, users)
    assert report["items_carried"] == len(keep) and report["items_new"] == len(new_ids)
    assert report["items_dropped"] == 5 and report["users_carried"] == len(old_users) - 1 and report["users_new"] == 1
    assert report["optimizer"] == "reset" and report["items_new_from_cluster"] == 2  # not the one in an empty cluster

    old_items = _checkpoint_table(out, "item_embedding")
    rows = model.candidate_tower.item_embedding.embeddings.numpy()
    np.testing.assert_array_equal(rows[:2], old_items[:2])  # padding and unknown
    for i, item in enumerate(catalogue.item_ids):
        if item in keep:
            np.testing.assert_array_equal(rows[2 + i], old_items[2 + old.item_ids.tolist().index(item)])
    carried_in_cluster = [old_items[2 + old.item_ids.tolist().index(x)] for x, c in zip(keep, clusters)
                          if c == populated]
    for item in ("zz_new_a", "zz_new_b"):
        np.testing.assert_allclose(rows[2 + catalogue.item_ids.tolist().index(item)],
                                   np.mean(carried_in_cluster, axis=0), rtol=1e-5)
    old_user_rows = _checkpoint_table(out, "user_embedding")
    user_rows = model.query_tower.user_embedding.embeddings.numpy()
    np.testing.assert_array_equal(user_rows[0], old_user_rows[0])
    for i, user in enumerate(users[:-1]):
        np.testing.assert_array_equal(user_rows[1 + i], old_user_rows[1 + old_users.index(user)])
    np.testing.assert_allclose(user_rows[-1], old_user_rows[1:][[old_users.index(u) for u in users[:-1]]].mean(0),
                               rtol=1e-5)
    np.testing.assert_array_equal(model.candidate_tower.cluster_embedding.embeddings.numpy(),
                                  _checkpoint_table(out, "cluster_embedding"))


def test_warm_started_run_trains_and_refuses_a_base_that_does_not_fit(base_run, examples_dir, clusters_dir,
                                                                       tmp_path):
    config, out = base_run
    summary = run_trainer(dataclasses.replace(config, warm_start_from=out, seed=4), examples_dir, clusters_dir,
                          str(tmp_path / "warm"))
    assert summary["warm_start"]["items_carried"] == summary["items"] and summary["warm_start"]["items_new"] == 0
    assert np.isfinite(summary["final_metrics"]["loss"])
    with open(os.path.join(out, "train_summary.json")) as f:
        base_loss = json.load(f)["final_metrics"]["loss"]
    assert summary["final_metrics"]["loss"] < base_loss  # it continues from the base's first epoch
    with pytest.raises(ValueError, match=r"towers do not fit this run \(embedding_dim: base 8, this run 16; "
                                         r"history_length: base 5, this run 4\)"):
        run_trainer(dataclasses.replace(config, warm_start_from=out, embedding_dim=16, history_length=4),
                    examples_dir, clusters_dir, str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="not a finished trainer output"):
        run_trainer(dataclasses.replace(config, warm_start_from=str(tmp_path)), examples_dir, clusters_dir,
                    str(tmp_path / "bad2"))


def test_the_user_vocabulary_grows_and_a_user_absent_from_the_window_keeps_their_row(base_run, examples_dir,
                                                                                    clusters_dir):
    config, out = base_run
    old_users = [u for u in open(os.path.join(out, "vocabulary", "users.txt")).read().split("\n") if u]
    window = old_users[::2] + ["zz_new_user"]  # half the base's users train in this window, one is new
    grown, evicted = grown_users(out, window)
    assert grown == sorted(set(old_users) | {"zz_new_user"}) and evicted == 0
    catalogue = load_catalogue(os.path.join(examples_dir, "items"), os.path.join(clusters_dir, "llm"))
    warm = dataclasses.replace(config, warm_start_from=out)
    model = TwoTowerModel(warm, catalogue, grown)
    report = warm_start(model, warm, catalogue, grown)
    assert (report["users_carried"], report["users_new"]) == (len(old_users), 1)
    old_rows, rows = _checkpoint_table(out, "user_embedding"), model.query_tower.user_embedding.embeddings.numpy()
    absent = old_users[1]  # not among this window's users
    np.testing.assert_array_equal(rows[1 + grown.index(absent)], old_rows[1 + old_users.index(absent)])
    assert grown_users(str(os.path.dirname(out)), window) == (window, 0)  # a base without a user vocabulary


def test_item_vocabulary_catalogue_trained_grown_and_frozen(base_run, examples_dir, clusters_dir):
    """'catalogue' keeps every item; 'trained' the items with training examples, plus the base's when
    warm-started (the vocabulary grows); 'base' exactly the base's items; clusters and counts stay aligned."""
    config, out = base_run
    table = load_catalogue(os.path.join(examples_dir, "items"), os.path.join(clusters_dir, "llm"))
    base_items = set(open(os.path.join(out, "vocabulary", "items.txt")).read().split())
    counts = table.train_counts.copy()
    counts[::3] = 0  # a third of the items without training examples in this window
    extra = np.array(["zz_new_a", "zz_new_b", "zz_unseen"])  # two new with examples, one never trained on
    ids = np.concatenate([table.item_ids, extra])
    order = np.argsort(ids)
    catalogue = ItemCatalogue(ids[order], np.concatenate([table.cluster_ids, [0, 1, 2]])[order],
                              np.concatenate([counts, [4, 1, 0]])[order], table.num_clusters)

    same, report = item_vocabulary(catalogue, dataclasses.replace(config, item_vocabulary="catalogue"))
    assert same is catalogue and report["items"] == len(ids) and report["outside"] == 0

    trained, report = item_vocabulary(catalogue, dataclasses.replace(config, item_vocabulary="trained"))
    assert set(trained.item_ids) == {i for i, c in zip(catalogue.item_ids, catalogue.train_counts) if c > 0}
    assert report["outside"] == len(ids) - len(trained.item_ids) > 0

    warm = dataclasses.replace(config, item_vocabulary="trained", warm_start_from=out)
    grown, report = item_vocabulary(catalogue, warm)
    assert set(grown.item_ids) == base_items | {"zz_new_a", "zz_new_b"}
    assert report["new_items"] == 2 and report["outside"] == 1  # zz_unseen: no examples, not in the base
    assert list(grown.item_ids) == sorted(grown.item_ids)
    position = {item: i for i, item in enumerate(catalogue.item_ids)}
    for item, cluster, count in zip(grown.item_ids, grown.cluster_ids, grown.train_counts):
        assert catalogue.cluster_ids[position[item]] == cluster and catalogue.train_counts[position[item]] == count

    assert preload_items(grown, warm) is grown  # new items are in the pool from step 1
    later = preload_items(grown, dataclasses.replace(warm, preload_new_items=False))
    assert set(later.item_ids) == base_items and set(grown.item_ids) - set(later.item_ids) == {"zz_new_a", "zz_new_b"}
    assert preload_items(trained, dataclasses.replace(config, preload_new_items=False)) is trained  # no base

    frozen, report = item_vocabulary(catalogue, dataclasses.replace(warm, item_vocabulary="base"))
    assert set(frozen.item_ids) == base_items and report["new_items"] == 0 and report["outside"] == 3
    with pytest.raises(ValueError, match="needs warm_start_from"):
        item_vocabulary(catalogue, dataclasses.replace(config, item_vocabulary="base"))
    with pytest.raises(ValueError, match="item_vocabulary must be one of"):
        dataclasses.replace(config, item_vocabulary="everything")


def test_a_frozen_vocabulary_trains_later_items_on_the_unknown_row_and_a_trained_one_grows(examples_dir, clusters_dir,
                                                                                          tmp_path):
    """Window 0 knows only its trained items; 'base' keeps exactly those rows while the window's examples
    name items outside them (they train the unknown-item row); 'trained' gives those items their rows."""
    import shutil

    import pyarrow.parquet as pq

    early = str(tmp_path / "early")  # the same examples, a third of the items not trained on "yet"
    shutil.copytree(examples_dir, early)
    (path,) = [os.path.join(early, "items", f) for f in os.listdir(os.path.join(early, "items"))
               if f.endswith(".parquet")]
    table = pq.read_table(path)
    counts = table.column("train_count").to_numpy().copy()
    later = {str(i) for i in table.column("item_id").to_pylist()[::3]}
    counts[::3] = 0
    pq.write_table(table.set_column(table.schema.get_field_index("train_count"), "train_count",
                                    pa.array(counts, pa.int64())), path)
    first = run_trainer(tiny_config(epochs=1, item_vocabulary="trained"), early, clusters_dir, str(tmp_path / "w0"))
    first_items = open(tmp_path / "w0" / "vocabulary" / "items.txt").read().split()
    assert first["item_vocabulary"]["outside"] == len(later) and not later & set(first_items)

    frozen = run_trainer(tiny_config(epochs=1, item_vocabulary="base", warm_start_from=str(tmp_path / "w0")),
                         examples_dir, clusters_dir, str(tmp_path / "frozen"))
    assert open(tmp_path / "frozen" / "vocabulary" / "items.txt").read().split() == first_items
    assert frozen["item_vocabulary"]["outside"] == len(later) and np.isfinite(frozen["final_metrics"]["loss"])
    grown = run_trainer(tiny_config(epochs=1, item_vocabulary="trained", warm_start_from=str(tmp_path / "w0")),
                        examples_dir, clusters_dir, str(tmp_path / "grown"))
    assert set(open(tmp_path / "grown" / "vocabulary" / "items.txt").read().split()) == set(first_items) | later
    assert grown["warm_start"]["items_new"] == grown["item_vocabulary"]["new_items"] == len(later)
    # the new items entered the pool (preloaded at step 1, then written as the window's positives)
    assert frozen["pool"]["new_item_share"] == 0.0 < grown["pool"]["new_item_share"] < 1.0


def test_pool_new_item_share_counts_filled_slots_only():
    class Pool:  # the two variables the share reads
        stored = {"item_index": tf.Variable([2, 3, 4, 3, 1, 0], dtype=tf.int64)}
        valid = tf.Variable([True, True, True, True, True, False])

    is_new = np.array([False, True, False])  # catalogue positions 0, 1, 2 = vocabulary rows 2, 3, 4
    assert pool_new_item_share(Pool(), is_new) == pytest.approx(2 / 5)  # rows 3, 3 of 2, 3, 4, 3, 1 (unknown)


def _base_vocabulary(directory, items, items_idle, users, users_idle):
    os.makedirs(os.path.join(directory, "vocabulary"))
    for name, values in (("items", items), ("items_idle", items_idle), ("users", users), ("users_idle", users_idle)):
        with open(os.path.join(directory, "vocabulary", f"{name}.txt"), "w") as f:
            f.write("".join(f"{v}\n" for v in values))
    return str(directory)


def test_idle_counts_and_eviction_after_n_runs_without_training_examples(tmp_path):
    base = _base_vocabulary(tmp_path / "base", ["a", "b", "c", "d"], [0, 1, 0, 2], ["u1", "u2", "u3"], [0, 1, 0])
    ids = np.array(["a", "b", "c", "d", "e", "f"])
    trained = np.array([True, False, False, False, True, False])
    # trained: 0; carried without examples: the base's count + 1; new and untrained: 1
    np.testing.assert_array_equal(idle_counts(base, "items", ids, trained), [0, 2, 1, 3, 0, 1])
    np.testing.assert_array_equal(idle_counts("", "items", ids, trained), [0, 1, 1, 1, 0, 1])
    older = _base_vocabulary(tmp_path / "older", ["a", "b"], [], ["u1"], [])
    os.remove(os.path.join(older, "vocabulary", "items_idle.txt"))  # a base written before the idle counts
    np.testing.assert_array_equal(idle_counts(older, "items", np.array(["a", "b", "z"]), np.array([0, 0, 0], bool)),
                                  [1, 1, 1])

    counts = np.array([3, 0, 0, 0, 1, 0], np.int64)  # this window's training examples of a..f
    catalogue = ItemCatalogue(ids, np.arange(6) % 2, counts, 2)
    config = TrainerConfig(item_vocabulary="trained", warm_start_from=base)
    kept, report = item_vocabulary(catalogue, config)
    assert list(kept.item_ids) == ["a", "b", "c", "d", "e"] and "evicted" not in report
    kept, report = item_vocabulary(catalogue, dataclasses.replace(config, evict_idle_windows=2))
    assert list(kept.item_ids) == ["a", "c", "e"] and report["evicted"] == 2  # b (2 runs idle) and d (3)
    kept, report = item_vocabulary(catalogue, dataclasses.replace(config, evict_idle_windows=1))
    assert list(kept.item_ids) == ["a", "e"] and report["evicted"] == 3

    assert grown_users(base, ["u1", "u4"]) == (["u1", "u2", "u3", "u4"], 0)
    assert grown_users(base, ["u1", "u4"], evict_idle_windows=2) == (["u1", "u3", "u4"], 1)  # u2: idle 1 + 1
    assert grown_users(base, ["u1", "u4"], evict_idle_windows=1) == (["u1", "u4"], 2)
    with pytest.raises(ValueError, match="evict_idle_windows must be >= 0"):
        TrainerConfig(evict_idle_windows=-1)


def test_is_in_matches_set_membership_across_array_kinds():
    from llm_hardneg.components.common.tables import is_in

    ids = np.array(["10", "2", "x", "", "2"], dtype=object)  # object ids against a list of str, as the trainer has
    values = ["2", "x", "11"]
    expected = [i in set(values) for i in ids]
    assert is_in(ids, values).tolist() == expected == is_in(ids.astype(str), np.array(values, dtype=object)).tolist()
    assert is_in([], values).tolist() == [] and is_in(ids, []).tolist() == [False] * 5
