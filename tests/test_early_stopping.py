"""Early stopping on example_gen's validation fold: the scores against a NumPy oracle on the exported towers,
the stopping rule, the best epoch's towers exported, and a resumed run that goes on with the recorded state."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from llm_hardneg.components.trainer import TrainerConfig, run_trainer
from llm_hardneg.components.trainer.data import example_files, load_catalogue, make_dataset


@pytest.fixture(scope="module")
def validation_examples(tmp_path_factory, movielens_dir):
    from llm_hardneg.components.example_gen import ExampleGenConfig, run_example_gen

    out = str(tmp_path_factory.mktemp("validation_examples"))
    run_example_gen(ExampleGenConfig.movielens(movielens_dir, history_length=5, split="leave_last_out",
                                               validation_share=1.0, sequence_length=5), out)
    return out


def config(**overrides):
    values = dict(strategy="in_batch", batch_size=32, epochs=4, embedding_dim=8, history_length=5, seed=3,
                  shuffle_buffer=1000, log_every_steps=50, early_stopping_patience=2, validation_k=5)
    values.update(overrides)
    return TrainerConfig(**values)


def numpy_hit_rate(model_dir, examples, k, exclude_seen):
    """HR@k of the exported towers on the validation fold, ranks by NumPy (ties count against the target)."""
    query = tf.saved_model.load(os.path.join(model_dir, "query_model"))
    candidate = tf.saved_model.load(os.path.join(model_dir, "candidate_model"))
    items = [line.strip() for line in open(os.path.join(model_dir, "vocabulary", "items.txt")) if line.strip()]
    vectors = candidate(tf.constant(items))["embedding"].numpy()
    seen = {}
    for b in make_dataset(example_files(examples, "train"), 1000, 1):
        for u, i in zip(b["user_id"].numpy(), b["item_id"].numpy()):
            seen.setdefault(u.decode(), set()).add(i.decode())
    hits = total = 0
    for b in make_dataset(example_files(examples, "validation"), 1000, 5, positives_only=True):
        q = query(b["user_id"], b["history_item_ids"])["embedding"].numpy()
        for row, (user, target) in enumerate(zip(b["user_id"].numpy(), b["item_id"].numpy())):
            scores = vectors @ q[row]
            keep = np.array([not (exclude_seen and item in seen.get(user.decode(), ())) for item in items])
            t = items.index(target.decode())
            hits += int(keep[t] and (scores[keep] >= scores[t]).sum() - 1 < k)
            total += 1
    return hits / total, total


@pytest.mark.parametrize("sequences", [False, True])
def test_early_stopping_scores_stops_and_exports_the_best_epoch(validation_examples, clusters_dir, tmp_path,
                                                                sequences):
    extra = dict(query_tower="transformer", sequence_training=True, sequence_batch_size=8) if sequences else {}
    out = str(tmp_path / "model")
    summary = run_trainer(config(**extra), validation_examples, clusters_dir, out)
    stopping = summary["early_stopping"]
    scores = [s["hit_rate@5"] for s in stopping["scores"]]
    trained = summary["epochs_trained"]
    assert [s["epoch"] for s in stopping["scores"]] == list(range(1, trained + 1))
    best = int(np.argmax(scores)) + 1  # the first of equal scores: a later one must be higher to count
    assert stopping["best_epoch"] == best == stopping["exported_epoch"]
    if stopping["stopped"]:
        assert trained == best + 2 <= 4
    else:
        assert trained == 4 and trained - best < 2
    oracle, queries = numpy_hit_rate(out, validation_examples, 5, exclude_seen=True)
    assert stopping["scores"][0]["queries"] == queries == json.load(
        open(os.path.join(validation_examples, "summary.json")))["validation_positives"] > 0
    assert oracle == pytest.approx(scores[best - 1], abs=1e-9)  # the exported towers are the best epoch's
    again = run_trainer(config(**extra), validation_examples, clusters_dir, out)  # resumed: nothing left to do
    assert again["early_stopping"]["scores"] == stopping["scores"] and again["epochs_trained"] == trained
    assert numpy_hit_rate(out, validation_examples, 5, exclude_seen=True)[0] == oracle


def test_the_stopping_rule_and_the_restored_towers(validation_examples, clusters_dir, tmp_path, monkeypatch):
    """Scores 0.1, 0.3, 0.3, 0.2 with patience 2: the best is epoch 2 (an equal score is no better), the run
    stops after epoch 4, and the towers put back are those written after epoch 2."""
    from llm_hardneg.components.trainer.model import TwoTowerModel
    from llm_hardneg.components.trainer.validation import EarlyStopping

    catalogue = load_catalogue(os.path.join(validation_examples, "items"), os.path.join(clusters_dir, "llm"))
    model = TwoTowerModel(config(), catalogue, ["1"])
    batch = next(iter(make_dataset(example_files(validation_examples, "train"), 4, 5)))
    model.query_tower(batch["user_id"], batch["history_item_ids"])
    model.candidate_tower(model.items(batch["item_id"])[0])
    stopping = EarlyStopping(config(), validation_examples, model, str(tmp_path / "checkpoints"), str(tmp_path))
    values = iter([0.1, 0.3, 0.3, 0.2])
    monkeypatch.setattr(stopping, "score", lambda: {"hit_rate@5": next(values), "ndcg@5": 0.0, "queries": 1})
    weights = []
    for epoch in range(1, 5):
        for variable in model.query_tower.trainable_variables:
            variable.assign(tf.fill(variable.shape, float(epoch)))
        weights.append([v.numpy().copy() for v in model.query_tower.trainable_variables])
        assert stopping.after_epoch(epoch) == (epoch == 4)
    assert stopping.restore_best(4) == 2
    for got, want in zip(model.query_tower.trainable_variables, weights[1]):
        np.testing.assert_array_equal(got.numpy(), want)
    state = json.load(open(tmp_path / "checkpoints" / "validation.json"))
    assert (state["best_epoch"], state["best"], state["stopped"]) == (2, 0.3, True)


def test_early_stopping_needs_a_validation_fold(examples_dir, clusters_dir, tmp_path):
    with pytest.raises(ValueError, match="early_stopping_patience 2 needs a validation fold.*validation_share"):
        run_trainer(config(), examples_dir, clusters_dir, str(tmp_path))
    with pytest.raises(ValueError, match="early_stopping_patience must be >= 0.*got -1"):
        TrainerConfig(early_stopping_patience=-1)
