import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from llm_hardneg.components.trainer import TrainerConfig, run_trainer
from llm_hardneg.components.trainer.data import example_files, load_catalogue, make_dataset


def tiny_config(**overrides):
    values = dict(batch_size=32, epochs=2, embedding_dim=8, num_negatives=4, random_ratio=1, cluster_ratio=3,
                  log_every_steps=5, shuffle_buffer=1000, history_length=5, seed=3)
    values.update(overrides)
    return TrainerConfig(**values)


def test_negative_split_and_slots():
    assert TrainerConfig(negative_sharing="per_example").negative_split() == (1, 15)
    assert TrainerConfig(strategy="oob", negative_sharing="per_example").negative_split() == (16, 0)
    assert TrainerConfig(negative_sharing="shared").negative_split() == (16, 240)  # 256 shared draws a step
    assert TrainerConfig(strategy="in_batch").negative_split() == (0, 0)
    assert TrainerConfig(negative_sharing="per_example", num_negatives=32, random_ratio=1,
                         cluster_ratio=31).negative_split() == (1, 31)
    assert TrainerConfig().slots_for(3883, 62) == 128
    with pytest.raises(ValueError, match="strategy must be one of"):
        TrainerConfig(strategy="hard")


def test_dataset_pads_history_and_keeps_every_example(examples_dir):
    files = example_files(examples_dir, "train")
    batches = list(make_dataset(files, 50, 5))
    summary = json.load(open(os.path.join(examples_dir, "summary.json")))
    assert sum(int(b["label"].shape[0]) for b in batches) == summary["train_examples"]
    assert all(b["history_item_ids"].shape[1] == 5 for b in batches)


def test_catalogue_joins_clusters(examples_dir, clusters_dir):
    catalogue = load_catalogue(os.path.join(examples_dir, "items"), os.path.join(clusters_dir, "llm"))
    assert list(catalogue.item_ids) == sorted(str(i) for i in range(1, 41))
    assert catalogue.num_clusters == 4 and catalogue.cluster_ids.max() < 4
    np.testing.assert_allclose(catalogue.sampling_probability.sum(), 1.0, rtol=1e-6)


@pytest.mark.parametrize("strategy", ["in_batch", "oob", "cluster_oob"])
def test_train_and_export(strategy, examples_dir, clusters_dir, tmp_path):
    summary = run_trainer(tiny_config(strategy=strategy), examples_dir, clusters_dir, str(tmp_path))
    assert np.isfinite(summary["final_metrics"]["loss"])
    if strategy == "in_batch":
        assert summary["pool"] is None
    else:
        assert summary["pool"]["fill_rate"] > 0 and summary["pool"]["clusters"] == 4
    query = tf.saved_model.load(str(tmp_path / "query_model"))
    candidate = tf.saved_model.load(str(tmp_path / "candidate_model"))
    q = query(tf.constant(["1", "unknown-user"]), tf.constant([["3", ""], ["no-such-item", ""]]))["embedding"]
    c = candidate(tf.constant(["1", "2", "no-such-item"]))["embedding"]
    assert q.shape == (2, 8) and c.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(np.concatenate([q, c]), axis=1), 1.0, rtol=1e-5)
    assert os.listdir(tmp_path / "logs")


def test_hashed_user_ids_train_and_serve(examples_dir, clusters_dir, tmp_path):
    summary = run_trainer(tiny_config(user_id_buckets=3, epochs=1, strategy="in_batch"), examples_dir, clusters_dir,
                          str(tmp_path))
    assert summary["user_rows"] == 3 and summary["users"] > 3
    query = tf.saved_model.load(str(tmp_path / "query_model"))
    users = [f"user-{i}" for i in range(12)]  # 12 ids, 3 rows: ids that share a row share an embedding
    q = query(tf.constant(users), tf.constant([["3", ""]] * len(users)))["embedding"].numpy()
    bucket = tf_keras.layers.Hashing(num_bins=3)(tf.constant(users)).numpy().ravel()
    assert len(np.unique(q.round(6), axis=0)) == len(set(bucket))
    for b in set(bucket):
        np.testing.assert_allclose(q[bucket == b], np.repeat(q[bucket == b][:1], (bucket == b).sum(), 0), atol=1e-5)


def test_same_seed_same_model_and_resume_equals_uninterrupted(examples_dir, clusters_dir, tmp_path):
    def embeddings(directory):
        candidate = tf.saved_model.load(os.path.join(directory, "candidate_model"))
        return candidate(tf.constant([str(i) for i in range(1, 41)]))["embedding"].numpy()

    full = str(tmp_path / "full")
    run_trainer(tiny_config(epochs=2), examples_dir, clusters_dir, full)
    again = str(tmp_path / "again")
    run_trainer(tiny_config(epochs=2), examples_dir, clusters_dir, again)
    np.testing.assert_array_equal(embeddings(full), embeddings(again))

    resumed = str(tmp_path / "resumed")
    run_trainer(tiny_config(epochs=1), examples_dir, clusters_dir, resumed)  # "killed" after epoch 1
    run_trainer(tiny_config(epochs=2), examples_dir, clusters_dir, resumed)  # restarts at epoch 2
    np.testing.assert_allclose(embeddings(resumed), embeddings(full), atol=1e-6)


def test_resume_refuses_checkpoints_of_another_config(examples_dir, clusters_dir, tmp_path):
    run_trainer(tiny_config(epochs=1), examples_dir, clusters_dir, str(tmp_path))
    with pytest.raises(ValueError, match=r"different trainer config \(history_pooling: 'position' -> 'mean'\)"):
        run_trainer(tiny_config(epochs=2, history_pooling="mean"), examples_dir, clusters_dir, str(tmp_path))
    os.remove(tmp_path / "checkpoints" / "config.json")
    with pytest.raises(ValueError, match="config.json: missing"):
        run_trainer(tiny_config(epochs=2), examples_dir, clusters_dir, str(tmp_path))


def test_resume_refuses_checkpoints_of_another_state_layout_with_a_clear_error(examples_dir, clusters_dir, tmp_path):
    run_trainer(tiny_config(epochs=1), examples_dir, clusters_dir, str(tmp_path))
    directory = str(tmp_path / "checkpoints")
    old = tf.train.Checkpoint(model=tf.Module(), epoch=tf.Variable(1, dtype=tf.int64))  # an older layout
    tf.train.CheckpointManager(old, directory, max_to_keep=5).save(checkpoint_number=7)
    with pytest.raises(ValueError, match="ckpt-7 does not hold this version's training state.*older llm-hardneg"):
        run_trainer(tiny_config(epochs=2), examples_dir, clusters_dir, str(tmp_path))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_in_history_matches_numpy(seed):
    from llm_hardneg.components.trainer.model import in_history

    rng = np.random.default_rng(seed)
    ids, history = rng.integers(1, 6, size=(7, 4)), rng.integers(0, 6, size=(7, 3))
    expected = np.array([[i in set(h[h > 0]) for i in row] for row, h in zip(ids, history)])
    np.testing.assert_array_equal(in_history(tf.constant(ids), tf.constant(history)).numpy(), expected)


def test_edis_virtual_negatives_lie_between_negative_and_positive(examples_dir, clusters_dir):
    from llm_hardneg.components.trainer.model import TwoTowerModel

    config = tiny_config(edis_negatives=3, edis_max_weight=0.5, negative_sharing="per_example")
    catalogue = load_catalogue(os.path.join(examples_dir, "items"), os.path.join(clusters_dir, "llm"))
    model = TwoTowerModel(config, catalogue, ["1", "2"])
    rng = np.random.default_rng(0)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    positive, negatives = unit(rng.normal(size=(5, 8))), unit(rng.normal(size=(5, 4, 8)))
    valid = rng.uniform(size=(5, 4)) > 0.3
    virtual, virtual_valid, source = model._edis(tf.constant(positive, tf.float32),
                                                 tf.constant(negatives, tf.float32), tf.constant(valid))
    virtual, source = virtual.numpy(), source.numpy()
    assert virtual.shape == (5, 3, 8) and virtual_valid.shape == (5, 3) and source.shape == (5, 3)
    np.testing.assert_allclose(np.linalg.norm(virtual, axis=-1), 1.0, rtol=1e-5)
    for b in range(5):
        for e in range(3):  # each virtual negative comes from one source negative, moved towards the positive
            k = source[b, e]
            assert int(np.argmax(negatives[b] @ virtual[b, e])) == k
            assert virtual_valid.numpy()[b, e] == valid[b, k]
            assert virtual[b, e] @ positive[b] >= negatives[b, k] @ positive[b] - 1e-5


@pytest.mark.parametrize("mode", ["mixture", "in_batch", "none"])
def test_log_counts_of_the_model_match_their_definition(mode, examples_dir, clusters_dir):
    from llm_hardneg.components.trainer.model import TwoTowerModel
    from tests.test_losses import numpy_counts

    config = tiny_config(logq_correction=mode, slots_per_cluster=4)  # small segments: some items collide
    catalogue = load_catalogue(os.path.join(examples_dir, "items"), os.path.join(clusters_dir, "llm"))
    model = TwoTowerModel(config, catalogue, ["1"])
    model.preload_pool(catalogue)
    rng = np.random.default_rng(0)
    index = tf.constant(rng.integers(2, len(catalogue.item_ids) + 2, size=12), tf.int64)
    cluster = tf.gather(model.items.cluster_of_index, index)
    samples = model.pool(cluster, model.num_random, model.num_cluster)
    drawn = samples["item_index"]
    in_batch, pool = model._log_counts(index, cluster, samples)
    prob = model.items.probability_of_index.numpy()
    if mode == "none":
        assert in_batch is None and pool is None
        return
    if mode == "in_batch":
        np.testing.assert_allclose(in_batch.numpy()[0], np.log(prob[index.numpy()]), rtol=1e-5)
        assert pool is None
        return
    cluster_of = model.items.cluster_of_index.numpy()
    in_pool = np.zeros(len(prob), bool)  # indices 0 and 1 (padding, unknown) are never in the pool
    in_pool[2:] = model.pool.contains(tf.range(2, len(prob), dtype=tf.int64), tf.constant(cluster_of[2:])).numpy()
    assert 0 < in_pool[2:].mean() < 1  # collisions leave some items out of the pool
    filled_of_cluster = np.bincount(cluster_of[in_pool], minlength=catalogue.num_clusters)
    c_batch, c_drawn = numpy_counts(index.numpy(), drawn.numpy(), prob, cluster_of, in_pool, model.num_random,
                                    model.num_cluster, in_pool.sum(), filled_of_cluster)
    np.testing.assert_allclose(in_batch.numpy(), np.log(c_batch), rtol=1e-5)
    np.testing.assert_allclose(pool.numpy(), np.log(c_drawn), rtol=1e-5)


def test_user_positive_mask_matches_the_training_positives(examples_dir, clusters_dir, tmp_path):
    from llm_hardneg.components.trainer.data import user_positive_keys
    from llm_hardneg.components.trainer.model import TwoTowerModel

    files = example_files(examples_dir, "train")
    positives = set()
    for record in tf.data.TFRecordDataset(files):
        e = tf.train.Example.FromString(record.numpy()).features.feature
        if e["label"].int64_list.value[0]:
            positives.add((e["user_id"].bytes_list.value[0].decode(), e["item_id"].bytes_list.value[0].decode()))
    keys = user_positive_keys(files, batch_size=7)
    assert len(keys) == len(positives) and np.all(np.diff(keys) > 0)
    catalogue = load_catalogue(os.path.join(examples_dir, "items"), os.path.join(clusters_dir, "llm"))
    model = TwoTowerModel(tiny_config(mask_user_positives=True), catalogue, ["1"], keys)
    users = sorted({u for u, _ in positives})[:6]
    index = np.random.default_rng(0).integers(0, len(catalogue.item_ids) + 2, size=(len(users), 30))
    got = model.is_user_positive(tf.constant(users), tf.constant(index, tf.int64)).numpy()
    names = np.concatenate([["", ""], catalogue.item_ids])
    expected = [[(u, names[i]) in positives for i in row] for u, row in zip(users, index)]
    np.testing.assert_array_equal(got, expected)
    assert got.any()
    metrics = run_trainer(tiny_config(mask_user_positives=True), examples_dir, clusters_dir,
                          str(tmp_path / "model"))["final_metrics"]
    assert 0.0 < metrics["negative_user_positive_rate"] <= metrics["negative_masked_rate"] <= 1.0


def test_same_user_mask_marks_every_column_of_the_querys_user(examples_dir, clusters_dir):
    from llm_hardneg.components.trainer.model import TwoTowerModel

    catalogue = load_catalogue(os.path.join(examples_dir, "items"), os.path.join(clusters_dir, "llm"))
    users = np.array(["7", "12", "7", "3", "12", "7"])
    model = TwoTowerModel(tiny_config(mask_same_user_in_batch=True), catalogue, ["1"])
    got = model._same_user({"user_id": tf.constant(users)}, None).numpy()
    np.testing.assert_array_equal(got, users[:, None] == users[None, :])
    assert TwoTowerModel(tiny_config(), catalogue, ["1"])._same_user({"user_id": tf.constant(users)}, None) is None
    with pytest.raises(ValueError, match="mask_same_user_in_batch"):
        TrainerConfig(strategy="full", mask_same_user_in_batch=True)


def test_history_mask_and_edis_train(examples_dir, clusters_dir, tmp_path):
    metrics = run_trainer(tiny_config(mask_history_negatives=True), examples_dir, clusters_dir,
                          str(tmp_path / "mask"))["final_metrics"]
    # draws in the user's history are a subset of the masked draws
    assert 0.0 < metrics["negative_history_rate"] <= metrics["negative_masked_rate"] <= 1.0
    both = run_trainer(tiny_config(mask_history_negatives=True, edis_negatives=2, negative_sharing="per_example"),
                       examples_dir, clusters_dir,
                       str(tmp_path / "both"))
    assert np.isfinite(both["final_metrics"]["loss"])
    shares = {k: v for k, v in both["final_metrics"].items() if k.startswith("mass_")}
    assert set(shares) == {"mass_in_batch", "mass_random", "mass_cluster", "mass_edis"}
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-4) and min(shares.values()) > 0.0


@pytest.mark.parametrize("seed", [0, 1])
def test_position_pooling_weights_match_numpy(seed, examples_dir, clusters_dir):
    from llm_hardneg.components.trainer.model import TwoTowerModel

    config = tiny_config(history_pooling="position", history_length=5)
    catalogue = load_catalogue(os.path.join(examples_dir, "items"), os.path.join(clusters_dir, "llm"))
    tower = TwoTowerModel(config, catalogue, ["1", "2"]).query_tower
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=5).astype(np.float32)
    tower.position_logits.assign(logits)
    index = rng.integers(0, 4, size=(6, 5)) * (rng.uniform(size=(6, 5)) > 0.4)
    index[0] = 0  # a user without history
    weights = tower._weights(tf.constant(index, tf.int64)).numpy()[..., 0]
    expected = np.where(index > 0, np.exp(logits - logits.max()), 0.0)
    expected = expected / np.maximum(expected.sum(axis=1, keepdims=True), 1e-30)
    np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-7)
    assert weights[0].sum() == 0.0

    mean = TwoTowerModel(tiny_config(history_length=5), catalogue, ["1", "2"]).query_tower
    expected_mean = (index > 0) / np.maximum((index > 0).sum(axis=1, keepdims=True), 1)
    np.testing.assert_allclose(mean._weights(tf.constant(index, tf.int64)).numpy()[..., 0], expected_mean,
                               rtol=1e-6)


def test_position_pooling_pads_short_and_cuts_long_histories(examples_dir, clusters_dir):
    from llm_hardneg.components.trainer.model import TwoTowerModel

    catalogue = load_catalogue(os.path.join(examples_dir, "items"), os.path.join(clusters_dir, "llm"))
    tower = TwoTowerModel(tiny_config(history_pooling="position", history_length=4), catalogue,
                          ["1", "2"]).query_tower
    tower.position_logits.assign([2.0, 1.0, 0.0, -1.0])
    users = tf.constant(["1", "2"])
    short = tower(users, tf.constant([["3", "5"], ["7", ""]]))
    padded = tower(users, tf.constant([["3", "5", "", ""], ["7", "", "", ""]]))
    longer = tower(users, tf.constant([["3", "5", "", "", "9", "11"], ["7", "", "", "", "2", "4"]]))
    np.testing.assert_allclose(short.numpy(), padded.numpy(), rtol=1e-6)
    np.testing.assert_allclose(longer.numpy(), padded.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="history_pooling must be one of .*'max'"):
        TrainerConfig(history_pooling="max")


MIRRORED = """
import json, sys, components, numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from llm_hardneg.components.trainer import TrainerConfig, run_trainer
from llm_hardneg.components.trainer.data import example_files, load_catalogue, make_dataset
from llm_hardneg.components.trainer.model import TwoTowerModel
import tf_keras, os
examples, clusters, out, sharing, embeddings = sys.argv[1:6]
config = TrainerConfig(batch_size=32, epochs=1, embedding_dim=8, num_negatives=4, random_ratio=1, cluster_ratio=3,
                       history_length=5, distribute="mirrored", slots_per_cluster=64, negative_sharing=sharing,
                       negative_embeddings=embeddings, cache_refresh_rows=7)
strategy = tf.distribute.MirroredStrategy()
catalogue = load_catalogue(os.path.join(examples, "items"), os.path.join(clusters, "llm"))
with strategy.scope():
    model = TwoTowerModel(config, catalogue, ["1", "2", "3"])
    model.compile(optimizer=tf_keras.optimizers.Adam(1e-3))
history = model.fit(make_dataset(example_files(examples, "train"), 32, 5, 1000, 0), epochs=1, verbose=0)
copies = [v.numpy() for v in model.pool.valid.values]
items = [v.numpy() for v in model.pool.stored["item_index"].values]
cache = [v.numpy() for v in model.cache.table.values] if model.cache is not None else [np.zeros(1)] * 2
summary = run_trainer(config, examples, clusters, out)
print(json.dumps({"replicas": len(copies), "same_valid": bool((copies[0] == copies[1]).all()),
                  "same_items": bool((items[0] == items[1]).all()), "fill": float(copies[0].mean()),
                  "same_cache": bool(np.allclose(cache[0], cache[1], atol=1e-6)),
                  "cache_norm": float(abs(cache[0]).sum()),
                  "loss": history.history["loss"][-1], "run_loss": summary["final_metrics"]["loss"]}))
"""


# per_example recomputed (the default) under mirrored: test_multi_worker
@pytest.mark.parametrize("sharing,embeddings", [("shared", "recompute"), ("per_example", "cached")])
def test_mirrored_strategy_keeps_replica_pools_identical(sharing, embeddings, examples_dir, clusters_dir, tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", MIRRORED, examples_dir, clusters_dir, str(tmp_path), sharing,
                             embeddings], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2 and report["same_valid"] and report["same_items"] and report["same_cache"]
    assert (report["cache_norm"] > 0) == (embeddings == "cached")  # the copies hold (the same) embeddings
    assert report["fill"] > 0.05  # the batches' items were written (4 clusters x 64 slots, 40 items)
    assert np.isfinite(report["loss"]) and np.isfinite(report["run_loss"])


def test_config_changes_know_which_added_fields_keep_old_behaviour():
    from llm_hardneg.components.trainer.run import config_changes, config_record

    old = config_record(TrainerConfig())
    del old["mask_user_positives"]  # added later; False is what older runs did
    assert config_changes(old, TrainerConfig()) == []
    assert config_changes(old, TrainerConfig(mask_user_positives=True)) == ["mask_user_positives: False -> True"]
    del old["logq_correction"]  # its default changed the loss: a run recorded without it is another config
    assert config_changes(old, TrainerConfig()) == ["logq_correction: None -> 'mixture'"]
    assert config_changes({**old, "epochs": 9}, TrainerConfig()) == ["logq_correction: None -> 'mixture'"]
    # the same loss either way: a run resumes and a benchmark reuses a run across it
    assert config_changes({**old, "deduplicate_candidates": False}, TrainerConfig()) == \
        ["logq_correction: None -> 'mixture'"]
    del old["negative_sharing"]  # added later; per_example is what older runs did
    assert config_changes(old, TrainerConfig(negative_sharing="shared")) == \
        ["logq_correction: None -> 'mixture'", "negative_sharing: 'per_example' -> 'shared'"]
    # pool settings do not change a run without a pool
    in_batch = config_record(TrainerConfig(strategy="in_batch", negative_sharing="per_example", num_negatives=4))
    assert config_changes(in_batch, TrainerConfig(strategy="in_batch")) == []
    assert config_changes(in_batch, TrainerConfig(strategy="in_batch", temperature=0.1)) == \
        ["temperature: 0.05 -> 0.1"]
    per_example = config_record(TrainerConfig(negative_sharing="per_example", shared_negatives=0))
    assert config_changes(per_example, TrainerConfig(negative_sharing="per_example")) == []
    assert config_changes(in_batch, TrainerConfig(num_negatives=4, negative_sharing="shared")) == \
        ["negative_sharing: 'per_example' -> 'shared'", "strategy: 'in_batch' -> 'cluster_oob'"]
    # R is read by the cache alone; older runs recomputed their draws
    assert config_changes(per_example, TrainerConfig(negative_sharing="per_example", cache_refresh_rows=5)) == []
    assert config_changes({k: v for k, v in per_example.items() if k != "negative_embeddings"},
                          TrainerConfig(negative_sharing="per_example", negative_embeddings="cached",
                                        cache_refresh_rows=5)) == \
        ["cache_refresh_rows: 1024 -> 5", "negative_embeddings: 'recompute' -> 'cached'"]


GLOBAL_NEGATIVES = """
import json, os, sys, numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import tf_keras
from llm_hardneg.components.trainer import TrainerConfig
from llm_hardneg.components.trainer.data import example_files, load_catalogue, make_dataset
from llm_hardneg.components.trainer.model import TwoTowerModel
from tests.helpers import one_step_on_one_and_two_replicas
from tests.test_losses import numpy_loss
examples, clusters = sys.argv[1:3]
files = example_files(examples, "train")
catalogue = load_catalogue(os.path.join(examples, "items"), os.path.join(clusters, "llm"))
base = dict(strategy="in_batch", batch_size=33, embedding_dim=8, history_length=5, shuffle_buffer=0,
            mask_same_user_in_batch=True)

batch = next(iter(make_dataset(files, 33, 5)))

def build(config, strategy):
    with strategy.scope():
        model = TwoTowerModel(config, catalogue, ["1", "2", "3"])
        model.compile(optimizer=tf_keras.optimizers.SGD(0.05))
        model.query_tower(batch["user_id"], batch["history_item_ids"])  # creates the variables in the scope
        model.candidate_tower(model.items(batch["item_id"])[0])
    return model

single = build(TrainerConfig(**base), tf.distribute.get_strategy())
index, cluster = single.items(batch["item_id"])
query = single.query_tower(batch["user_id"], batch["history_item_ids"]).numpy()
positive = single.candidate_tower(index).numpy()
log_count, _ = single._log_counts(index, cluster, None)
users = batch["user_id"].numpy()
same_user = users[:, None] == users[None, :]  # the other replica's columns of the query's user too
oracle, _ = numpy_loss(query, positive, index.numpy(), 0.05, np.broadcast_to(log_count.numpy(), (33, 33)),
                       w=batch["label"].numpy(), excluded=same_user)
report = {"oracle": oracle, "same_user_pairs": int(same_user.sum() - 33),
          **one_step_on_one_and_two_replicas(build, base, single, make_dataset(files, 33, 5), files)}
print(json.dumps(report))
"""


def test_global_in_batch_negatives_train_as_one_replica_on_the_global_batch(examples_dir, clusters_dir):
    """Two replicas with global in-batch negatives (the query's own user's columns masked, on either replica):
    the loss (all-reduced) equals the NumPy oracle of the global batch, and one SGD step moves the weights as one
    replica on that batch does (gradients through the all-gather); with per-replica negatives both differ."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", GLOBAL_NEGATIVES, examples_dir, clusters_dir],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["same_user_pairs"] > 0  # the batch holds users with several examples: the mask is exercised
    np.testing.assert_allclose(report["single"], report["oracle"], rtol=1e-5)
    np.testing.assert_allclose(report["True"]["loss"], report["oracle"], rtol=1e-5)
    assert report["moved"] > 0.01  # the step changed the weights
    assert report["True"]["weight_difference"] < 1e-5  # float32 sums in another order
    assert abs(report["False"]["loss"] - report["oracle"]) > 1e-3  # 16 or 17 in-batch columns, not 33
    assert report["False"]["weight_difference"] > 0.01 * report["moved"]


def test_dataset_slices_partition_every_global_batch(examples_dir):
    files = example_files(examples_dir, "train")
    whole = [b["item_id"].numpy().tolist() for b in make_dataset(files, 33, 5, 1000, seed=4, reshuffle=False)]
    parts = [[b["item_id"].numpy().tolist() for b in make_dataset(files, 33, 5, 1000, seed=4, reshuffle=False,
                                                                   slices=(r,), num_slices=2)] for r in (0, 1)]
    assert [a + b for a, b in zip(*parts)] == whole and len(parts[0]) == len(whole)
    assert [len(b) for b in parts[0][:2]] == [16, 16] and [len(b) for b in parts[1][:2]] == [17, 17]
    both = [b["item_id"].numpy().tolist() for b in make_dataset(files, 33, 5, 1000, seed=4, reshuffle=False,
                                                                 slices=(0, 1), num_slices=2, skip=3)]
    assert both == [s for pair in zip(parts[0][3:], parts[1][3:]) for s in pair]  # replica order, batch by batch
    with pytest.raises(ValueError, match=r"slices must lie in \[0, 2\), got \(2,\)"):
        make_dataset(files, 33, 5, slices=(2,), num_slices=2)


def test_multi_worker_names_its_missing_cluster(monkeypatch):
    from llm_hardneg.components.trainer.distribute import make_strategy

    monkeypatch.setenv("TF_CONFIG", "")
    with pytest.raises(ValueError, match="TF_CONFIG environment variable .* got TF_CONFIG=''"):
        make_strategy("multi_worker")
    with pytest.raises(ValueError, match="global_in_batch_negatives .* use distribute 'mirrored' or 'multi_worker'"):
        TrainerConfig(global_in_batch_negatives=True)
    with pytest.raises(ValueError, match=r"distribute must be one of .*'multi_worker'.*got 'ps'"):
        TrainerConfig(distribute="ps")
