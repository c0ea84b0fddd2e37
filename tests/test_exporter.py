import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from llm_hardneg.components.exporter import ExporterConfig, build_scann_index, run_exporter


@pytest.fixture(scope="module")
def export_dir(examples_dir, clusters_dir, tmp_path_factory):
    from llm_hardneg.components.trainer import TrainerConfig, run_trainer

    root = tmp_path_factory.mktemp("export")
    run_trainer(TrainerConfig(batch_size=32, epochs=1, embedding_dim=8, history_length=5), examples_dir,
                clusters_dir, str(root / "model"))
    run_exporter(ExporterConfig(k=10), str(root / "model"), os.path.join(examples_dir, "items"), str(root / "export"))
    return root


@pytest.mark.parametrize("model", ["serving_model", "serving_model_scann"])
def test_history_items_can_be_left_out_of_the_top_k(export_dir, examples_dir, tmp_path, model):
    import scann  # noqa: F401  (the ScaNN ops)
    import tensorflow as tf

    run_exporter(ExporterConfig(k=10, exclude_history=True), str(export_dir / "model"),
                 os.path.join(examples_dir, "items"), str(tmp_path / "export"))
    served = tf.saved_model.load(str(tmp_path / "export" / model))
    query = tf.saved_model.load(str(export_dir / "model" / "query_model"))
    table = pq.read_table(tmp_path / "export" / "candidates.parquet").to_pylist()
    ids = np.array([r["item_id"] for r in table])
    emb = np.array([r["embedding"] for r in table], np.float32)
    users = tf.constant(["1", "2", "3"])
    history = tf.constant([["3", "4", "", "unknown"], ["", "", "", ""], [str(i) for i in range(10, 14)]])
    out = served(users, history)
    scores = query(users, history)["embedding"].numpy() @ emb.T
    for row, seen in enumerate([{"3", "4"}, set(), {"10", "11", "12", "13"}]):
        allowed = np.array([i not in seen for i in ids])
        order = np.argsort(-np.where(allowed, scores[row], -np.inf), kind="stable")[:10]
        got = [i.decode() for i in out["item_ids"].numpy()[row]]
        assert not set(got) & seen
        np.testing.assert_allclose(out["scores"].numpy()[row], scores[row][order], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", ["serving_model", "serving_model_scann"])
def test_serving_model_matches_numpy_brute_force_in_a_fresh_process(export_dir, model):
    # the ScaNN model needs only `import scann` (its ops) before loading; the other stock TF
    preamble = "import scann" if model.endswith("scann") else ""
    script = f"""
import json, llm_hardneg.components.common.env, tensorflow as tf
{preamble}
m = tf.saved_model.load({str(export_dir / 'export' / model)!r})
q = tf.saved_model.load({str(export_dir / 'model' / 'query_model')!r})
users, hist = tf.constant(["1", "2", "nobody"]), tf.constant([["3", "4"], ["", ""], ["unknown", "5"]])
out = m(users, hist)
print(json.dumps({{"ids": [[i.decode() for i in r] for r in out["item_ids"].numpy()],
                  "scores": out["scores"].numpy().tolist(), "q": q(users, hist)["embedding"].numpy().tolist()}}))
"""
    out = json.loads(subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                                    text=True).stdout.strip().splitlines()[-1])
    table = pq.read_table(export_dir / "export" / "candidates.parquet").to_pylist()
    ids = np.array([r["item_id"] for r in table])
    emb = np.array([r["embedding"] for r in table], np.float32)
    scores = np.array(out["q"], np.float32) @ emb.T
    for row, (got_ids, got_scores) in enumerate(zip(out["ids"], out["scores"])):
        order = np.argsort(-scores[row], kind="stable")[:10]
        np.testing.assert_allclose(got_scores, scores[row][order], rtol=1e-5, atol=1e-6)
        assert set(got_ids) == set(ids[order]) or np.allclose(sorted(got_scores), sorted(scores[row][order]))


def test_scann_index_reloads_and_recalls(export_dir):
    from scann.scann_ops.py import scann_ops_pybind

    searcher = scann_ops_pybind.load_searcher(str(export_dir / "export" / "scann_index"))
    emb = np.array([r["embedding"] for r in pq.read_table(export_dir / "export" / "candidates.parquet").to_pylist()],
                   np.float32)
    neighbors, _ = searcher.search_batched(emb[:5], final_num_neighbors=10)
    brute = np.argsort(-(emb[:5] @ emb.T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(neighbors, brute)])
    assert recall == 1.0  # 40 items: exact brute-force index


def test_scann_tree_index_recall_grows_to_exact():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    queries = x[:100] + 0.1 * rng.normal(size=(100, 16)).astype(np.float32)
    brute = np.argsort(-(queries @ x.T), axis=1)[:, :10]
    recalls = []
    for fraction in (0.05, 0.2, 1.0):
        searcher = build_scann_index(x, ExporterConfig(k=10, leaves_to_search_fraction=fraction))
        neighbors, _ = searcher.search_batched(queries)
        recalls.append(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(neighbors, brute)]))
    assert recalls[0] <= recalls[1] <= recalls[2]
    assert recalls[2] >= 0.99  # every leaf searched + exact re-ordering: (nearly) exact
