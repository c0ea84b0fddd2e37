"""The data steps on a runner that really distributes: Beam's DirectRunner in multi_processing mode (2 worker
processes, elements pickled between them, counters merged across workers) gives the same outputs and the same
counts as the in-memory DirectRunner. (Beam's DaskRunner cannot run these steps: in Beam 2.77 it has no
translation for file reads and does not return metrics; see README "Runners".)"""

import glob
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

MULTI = ["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]


def _files(pattern: str) -> dict[str, bytes]:
    return {os.path.basename(p): open(p, "rb").read() for p in sorted(glob.glob(pattern))}


def test_data_steps_multi_process_equal_in_memory(tmp_path, movielens_dir, examples_dir, clusters_dir, tiny_bert):
    from llm_hardneg.components.example_gen import ExampleGenConfig, run_example_gen
    from llm_hardneg.components.item_clusterer import ItemClustererConfig, run_item_clusterer
    from llm_hardneg.components.item_clusterer.pipeline import read_cluster_table
    from llm_hardneg.components.item_embedder import ItemEmbedderConfig, run_item_embedder

    out = str(tmp_path / "examples")
    summary = run_example_gen(ExampleGenConfig.movielens(movielens_dir, history_length=5, num_train_shards=3,
                                                         num_eval_shards=2), out, MULTI)
    for split in ("train", "eval"):
        expected = _files(os.path.join(examples_dir, split, "*.tfrecord"))
        assert expected and _files(os.path.join(out, split, "*.tfrecord")) == expected
    def items_by_id(directory):  # the item table's row order is not part of its contract (readers sort ids)
        return pq.read_table(os.path.join(directory, "items", "items.parquet")).sort_by("item_id")

    assert items_by_id(out).equals(items_by_id(examples_dir))
    assert open(os.path.join(out, "users.txt")).read() == open(os.path.join(examples_dir, "users.txt")).read()
    assert summary["train_examples"] > 0 and summary["interactions_in"] == 600  # counters merged across workers

    items = os.path.join(examples_dir, "items", "*.parquet")
    embeddings = str(tmp_path / "embeddings")
    embedded = run_item_embedder(ItemEmbedderConfig(model=tiny_bert, batch_size=8), items, embeddings, MULTI)
    assert embedded["items_out"] == embedded["items_in"] == 40

    def by_item(directory):
        table = pa.concat_tables(pq.read_table(f) for f in glob.glob(os.path.join(directory, "*.parquet")))
        return dict(zip(table.column("item_id").to_pylist(), np.asarray(table.column("embedding").to_pylist())))

    ours, theirs = by_item(embeddings), by_item(os.path.join(os.path.dirname(clusters_dir), "embeddings"))
    assert ours.keys() == theirs.keys()
    for item in ours:  # other batch compositions: equal up to float rounding
        np.testing.assert_allclose(ours[item], theirs[item], atol=1e-5)

    clusters = str(tmp_path / "clusters")
    run_item_clusterer(ItemClustererConfig(num_clusters=4), os.path.join(os.path.dirname(clusters_dir), "embeddings"),
                       items, clusters, MULTI)
    for kind in ("llm", "category"):
        assert read_cluster_table(os.path.join(clusters, kind)) == read_cluster_table(os.path.join(clusters_dir, kind))
