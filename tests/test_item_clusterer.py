import json
import os

import numpy as np
import pytest

from llm_hardneg.components.item_clusterer import ItemClustererConfig, core
from llm_hardneg.components.item_clusterer.pipeline import read_cluster_table


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_assign_matches_numpy_nearest_centroid(seed):
    rng = np.random.default_rng(seed)
    x, c = rng.normal(size=(200, 8)).astype(np.float32), rng.normal(size=(7, 8)).astype(np.float32)
    expected = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(core.assign(x, c), expected)


def test_fit_recovers_separated_blobs():
    rng = np.random.default_rng(0)
    centers = np.eye(4, 16, dtype=np.float32) * 10
    labels = np.repeat(np.arange(4), 50)
    x = centers[labels] + rng.normal(scale=0.1, size=(200, 16)).astype(np.float32)
    assigned = core.assign(x, core.fit_centroids(x, 4, seed=0))
    # the same partition up to renaming of clusters
    assert len({(a, b) for a, b in zip(labels, assigned)}) == 4


def test_fit_sample_is_deterministic_and_near_rate():
    ids = [str(i) for i in range(20000)]
    chosen = [i for i in ids if core.in_fit_sample(i, 0.25)]
    assert chosen == [i for i in ids if core.in_fit_sample(i, 0.25)]
    assert 0.23 < len(chosen) / len(ids) < 0.27


def test_auto_number_of_clusters():
    assert ItemClustererConfig().clusters_for(3883) == 62
    assert ItemClustererConfig().clusters_for(3) == 2
    assert ItemClustererConfig(num_clusters=10).clusters_for(5) == 5
    with pytest.raises(ValueError, match="num_clusters"):
        ItemClustererConfig(num_clusters=1)


def test_step_outputs(clusters_dir, examples_dir):
    llm = read_cluster_table(os.path.join(clusters_dir, "llm"))
    category = read_cluster_table(os.path.join(clusters_dir, "category"))
    assert set(llm) == set(category) == {str(i) for i in range(1, 41)}
    assert set(llm.values()) <= set(range(4))
    vocabulary = json.load(open(os.path.join(clusters_dir, "category", "vocabulary.json")))
    from tests.helpers import GENRES

    for item, cluster in category.items():  # first genre of item i is GENRES[i % 5]
        assert vocabulary[GENRES[int(item) % len(GENRES)]] == cluster
    report = json.load(open(os.path.join(clusters_dir, "report.json")))
    assert sum(report["llm"]["sizes"]) == 40 and report["llm"]["num_clusters"] == 4
    assert report["llm"]["empty_clusters"] == sum(size == 0 for size in report["llm"]["sizes"])
    assert json.load(open(os.path.join(clusters_dir, "llm", "meta.json"))) == {"num_clusters": 4}
    assert os.path.getsize(os.path.join(clusters_dir, "cluster_sizes.png")) > 1000


def test_behavioural_clusters_from_a_trained_model(examples_dir, clusters_dir, tmp_path):
    """A trained candidate tower's exported embeddings -> k-means with the same clusterer -> a table the
    trainer takes as cluster_source 'behavioural'. Oracle: at a k-means fixed point every item is
    nearest to the mean of its own cluster."""
    import pyarrow.parquet as pq

    from llm_hardneg.components.exporter import ExporterConfig, run_exporter
    from llm_hardneg.components.item_clusterer import run_item_clusterer
    from llm_hardneg.components.trainer import TrainerConfig, run_trainer

    small = dict(batch_size=32, epochs=1, embedding_dim=8, history_length=5, shuffle_buffer=100)
    run_trainer(TrainerConfig(strategy="in_batch", **small), examples_dir, clusters_dir, str(tmp_path / "first"))
    run_exporter(ExporterConfig(k=10), str(tmp_path / "first"), os.path.join(examples_dir, "items"),
                 str(tmp_path / "export"))
    report = run_item_clusterer(ItemClustererConfig(num_clusters=3, embedding_kind="behavioural"),
                                str(tmp_path / "export"), os.path.join(examples_dir, "items", "*.parquet"),
                                str(tmp_path / "behavioural"))
    assert report["tables"] == ["behavioural", "category"] and report["behavioural"]["num_items"] == 40
    table = read_cluster_table(str(tmp_path / "behavioural" / "behavioural"))
    rows = pq.read_table(str(tmp_path / "export" / "candidates.parquet")).to_pylist()
    x = np.asarray([r["embedding"] for r in rows], np.float32)
    labels = np.asarray([table[r["item_id"]] for r in rows])
    means = np.stack([x[labels == c].mean(axis=0) if (labels == c).any() else np.full(8, 1e6) for c in range(3)])
    np.testing.assert_array_equal(core.assign(x, means), labels)
    summary = run_trainer(TrainerConfig(strategy="cluster_oob", cluster_source="behavioural", **small),
                          examples_dir, str(tmp_path / "behavioural"), str(tmp_path / "second"))
    assert summary["num_clusters"] == 3 and np.isfinite(summary["final_metrics"]["loss"])


def test_catalogue_without_text_runs_with_category_clusters(tmp_path, tiny_bert):
    """No item file: no text, so no embedding and no LLM table; the category table (one cluster of
    uncategorised items) still trains and evaluates."""
    from llm_hardneg.components.evaluator import EvaluatorConfig, run_evaluator
    from llm_hardneg.components.example_gen import ExampleGenConfig, run_example_gen
    from llm_hardneg.components.item_clusterer import run_item_clusterer
    from llm_hardneg.components.item_embedder import ItemEmbedderConfig, run_item_embedder
    from llm_hardneg.components.trainer import TrainerConfig, run_trainer
    from tests.helpers import synthetic_log

    with open(tmp_path / "inter.csv", "w") as f:
        f.write("user_id,item_id,rating,timestamp\n")
        f.writelines(f"{u},{i},{r},{t}\n" for u, i, r, t in synthetic_log(rows=400))
    examples = str(tmp_path / "examples")
    run_example_gen(ExampleGenConfig(source="generic", interactions=str(tmp_path / "inter.csv"),
                                     split="leave_last_out", history_length=5), examples)
    items = os.path.join(examples, "items", "*.parquet")
    embedded = run_item_embedder(ItemEmbedderConfig(model=tiny_bert), items, str(tmp_path / "emb"))
    assert embedded["items_out"] == 0 and embedded["items_without_text"] == embedded["items_in"] > 0
    report = run_item_clusterer(ItemClustererConfig(), str(tmp_path / "emb"), items, str(tmp_path / "clusters"))
    assert report["tables"] == ["category"] and report["category"]["num_clusters"] == 1
    assert not os.path.exists(tmp_path / "clusters" / "llm")
    model = str(tmp_path / "model")
    run_trainer(TrainerConfig(strategy="cluster_oob", cluster_source="category", batch_size=32, epochs=1,
                              embedding_dim=8, history_length=5, shuffle_buffer=100), examples,
                str(tmp_path / "clusters"), model)
    metrics = run_evaluator(EvaluatorConfig(ks=(10, 50)), model, examples, str(tmp_path / "eval"), 5)
    assert metrics["num_queries"] == len({u for u, _, r, _ in synthetic_log(rows=400) if r >= 3})
    assert 0.0 <= metrics["ndcg@10"] <= metrics["hit_rate@10"] <= metrics["hit_rate@50"] <= 1.0


def test_embedding_batches_to_one_float32_array():
    import pyarrow as pa

    from llm_hardneg.components.item_clusterer.pipeline import _vectors

    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 3)).astype(np.float32)
    chunks = [pa.array(list(x[:4]), pa.list_(pa.float32())), pa.array(list(x[4:]), pa.list_(pa.float32()))]
    table = pa.table({"item_id": [str(i) for i in range(10)], "embedding": pa.chunked_array(chunks)}).slice(2, 7)
    vectors = _vectors(table)
    assert vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors, x[2:9])
    ragged = pa.table({"item_id": ["a", "b"], "embedding": pa.array([[1.0, 2.0], [3.0]], pa.list_(pa.float32()))})
    with pytest.raises(ValueError, match=r"lengths 1\.\.2"):
        _vectors(ragged)


def test_clusters_do_not_depend_on_file_layout_and_match_numpy_oracle(tmp_path):
    """The same embeddings as one file or as three files of several row groups give the same table: the fit
    sample is sorted by item id, whatever order Beam hands over the batches; it equals fit + assign by hand."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llm_hardneg.components.item_clusterer import run_item_clusterer

    rng = np.random.default_rng(1)
    ids = [f"item{i:03d}" for i in range(300)]
    x = rng.normal(size=(300, 8)).astype(np.float32)
    items = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_id": ids, "categories": [["a"]] * 300}), items)
    config = ItemClustererConfig(num_clusters=5, max_fit_items=150)
    tables = []
    for layout, parts in (("one", [slice(0, 300)]), ("three", [slice(200, 300), slice(0, 120), slice(120, 200)])):
        emb = tmp_path / layout / "emb"
        emb.mkdir(parents=True)
        for n, part in enumerate(parts):
            table = pa.table({"item_id": ids[part], "embedding": pa.array(list(x[part]), pa.list_(pa.float32()))})
            pq.write_table(table, emb / f"embeddings-{n}.parquet", row_group_size=35)
        run_item_clusterer(config, str(emb), str(items), str(tmp_path / layout / "out"))
        tables.append(read_cluster_table(str(tmp_path / layout / "out" / "llm")))
    assert tables[0] == tables[1]
    rate = 150 / 300
    sample = sorted(i for i in range(300) if core.in_fit_sample(ids[i], rate))
    expected = core.assign(x, core.fit_centroids(x[sample], 5, seed=0))
    assert [tables[0][i] for i in ids] == expected.tolist()
