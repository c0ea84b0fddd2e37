"""Warm start from a previous trainer output: rows carried by id, new rows initialised as documented."""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from llm_hardneg.components.trainer import run_trainer
from llm_hardneg.components.trainer.data import ItemCatalogue, load_catalogue
from llm_hardneg.components.trainer.model import TwoTowerModel
from llm_hardneg.components.trainer.warm_start import grown_users, warm_start
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
    grown = grown_users(out, window)
    assert grown == sorted(set(old_users) | {"zz_new_user"})
    catalogue = load_catalogue(os.path.join(examples_dir, "items"), os.path.join(clusters_dir, "llm"))
    warm = dataclasses.replace(config, warm_start_from=out)
    model = TwoTowerModel(warm, catalogue, grown)
    report = warm_start(model, warm, catalogue, grown)
    assert (report["users_carried"], report["users_new"]) == (len(old_users), 1)
    old_rows, rows = _checkpoint_table(out, "user_embedding"), model.query_tower.user_embedding.embeddings.numpy()
    absent = old_users[1]  # not among this window's users
    np.testing.assert_array_equal(rows[1 + grown.index(absent)], old_rows[1 + old_users.index(absent)])
    assert grown_users(str(os.path.dirname(out)), window) == window  # a base without a user vocabulary
