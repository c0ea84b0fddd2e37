"""item_clusterer as a Beam pipeline:

    embeddings --hash sample--> k-means fit (one worker) --centroids side input-->
    assign every item in batches --> <embedding_kind>/clusters.parquet (llm or behavioural)
    items.parquet --first category--> category/clusters.parquet
then a report (sizes summary JSON + histogram PNG) from the two tables.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from components.common import fileio
from components.common.beam_io import Counted
from components.common.beam_run import run_pipeline
from components.item_clusterer import core
from components.item_clusterer.config import ItemClustererConfig

NAMESPACE = "item_clusterer"
CLUSTER_SCHEMA = pa.schema([("item_id", pa.string()), ("cluster_id", pa.int64())])


def _fit(rows, num_clusters: int, seed: int, n_init: int) -> np.ndarray:
    vectors = np.asarray([r["embedding"] for r in sorted(rows, key=lambda r: r["item_id"])], dtype=np.float32)
    return core.fit_centroids(vectors, num_clusters, seed, n_init)


def _assign_batch(rows, centroids):
    ids = core.assign(np.asarray([r["embedding"] for r in rows], dtype=np.float32), centroids)
    return [{"item_id": r["item_id"], "cluster_id": int(c)} for r, c in zip(rows, ids)]


def _write_table(pcoll, label: str, path_prefix: str):
    return (pcoll
            | f"Count{label}" >> Counted(NAMESPACE, f"{label}_assigned")
            | f"Write{label}" >> beam.io.WriteToParquet(path_prefix, CLUSTER_SCHEMA, file_name_suffix=".parquet"))


def build(pipeline, config: ItemClustererConfig, embeddings_pattern: str, items_path: str, output_dir: str,
          num_items: int) -> None:
    """k-means table from the embeddings (skipped when there are none: items without text) + category table."""
    if num_items:
        num_clusters = config.clusters_for(num_items)
        rate = min(1.0, config.max_fit_items / max(num_items, 1))
        embeddings = pipeline | "ReadEmbeddings" >> beam.io.ReadFromParquet(embeddings_pattern)
        centroids = (
            embeddings
            | "FitSample" >> beam.Filter(lambda r: core.in_fit_sample(r["item_id"], rate))
            | "CollectSample" >> beam.combiners.ToList()
            | "FitKMeans" >> beam.Map(_fit, num_clusters=num_clusters, seed=config.seed, n_init=config.n_init)
        )
        assigned = (
            embeddings
            | "Batch" >> beam.BatchElements(min_batch_size=256, max_batch_size=8192)
            | "Assign" >> beam.FlatMap(_assign_batch, centroids=beam.pvalue.AsSingleton(centroids))
        )
        _write_table(assigned, config.embedding_kind, fileio.join(output_dir, config.embedding_kind, "clusters"))

    first = (
        pipeline
        | "ReadItems" >> beam.io.ReadFromParquet(items_path, columns=["item_id", "categories"])
        | "FirstCategory" >> beam.Map(lambda r: (r["item_id"], (r["categories"] or [""])[0]))
    )
    vocabulary = (
        first
        | "Names" >> beam.Values()
        | "Distinct" >> beam.Distinct()
        | "AllNames" >> beam.combiners.ToList()
        | "Vocabulary" >> beam.Map(core.category_vocabulary)
    )
    category = first | "CategoryId" >> beam.Map(
        lambda kv, vocab: {"item_id": kv[0], "cluster_id": vocab[kv[1]]}, vocab=beam.pvalue.AsSingleton(vocabulary))
    _write_table(category, "category", fileio.join(output_dir, "category", "clusters"))
    _ = vocabulary | "SaveVocabulary" >> beam.Map(
        lambda v: fileio.write_json(fileio.join(output_dir, "category", "vocabulary.json"), v))


def read_num_clusters(path: str) -> int:
    """C of a cluster table directory (empty clusters included), from its meta.json."""
    meta = fileio.join(path, "meta.json")
    if not fileio.exists(meta):
        raise FileNotFoundError(f"{meta} is missing: {path} is not an item_clusterer output (re-run item_clusterer)")
    return int(fileio.read_json(meta)["num_clusters"])


def _read_parquet(path: str) -> pa.Table:
    with FileSystems.open(path) as handle:
        return pq.read_table(handle)


def read_cluster_table(path: str) -> dict[str, int]:
    """Reads a cluster table directory (or file) -> {item_id: cluster_id}."""
    files = [path] if path.endswith(".parquet") else fileio.match(fileio.join(path, "*.parquet"))
    if not files:
        raise FileNotFoundError(f"no cluster table (*.parquet) under {path}")
    table = pa.concat_tables([_read_parquet(f) for f in files])
    return dict(zip(table.column("item_id").to_pylist(), table.column("cluster_id").to_pylist()))


def _plot_sizes(report: dict, kinds: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 3.5))
    for ax, kind in zip(np.atleast_1d(axes), kinds):
        sizes = report[kind]["sizes"]
        ax.hist(sizes, bins=min(50, max(5, len(sizes) // 2)))
        ax.set_title(f"{kind}: {report[kind]['num_clusters']} clusters")
        ax.set_xlabel("items per cluster")
        ax.set_ylabel("clusters")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    with FileSystems.create(path) as f:
        f.write(buffer.getvalue())


def run_item_clusterer(config: ItemClustererConfig, embeddings_dir: str, items_path: str, output_dir: str,
                       beam_args: Sequence[str] | None = None) -> dict:
    """Writes the <embedding_kind>/ (k-means of the embeddings) and category/ cluster tables (each
    with meta.json: num_clusters), report.json and cluster_sizes.png to output_dir. Empty clusters
    are kept (ids stay in [0, C)) and counted. With no embeddings (a catalogue without text) only
    the category table is written, and the summary says so."""
    files = fileio.match(fileio.join(embeddings_dir, "*.parquet"))
    if not files:
        raise FileNotFoundError(f"no embeddings (*.parquet) under {embeddings_dir}")
    num_items = 0
    for f in files:
        with FileSystems.open(f) as handle:
            num_items += pq.ParquetFile(handle).metadata.num_rows
    if num_items == 1:
        raise ValueError(f"need at least 2 items to cluster, found {num_items} in {embeddings_dir}")
    fileio.makedirs(output_dir)
    counters = run_pipeline(
        lambda p: build(p, config, fileio.join(embeddings_dir, "*.parquet"), items_path, output_dir, num_items),
        NAMESPACE, beam_args)
    kinds = [config.embedding_kind, "category"] if num_items else ["category"]
    report = {"config": dataclasses.asdict(config), "items_in": num_items, "tables": kinds}
    for kind in kinds:
        table = read_cluster_table(fileio.join(output_dir, kind))
        ids = np.asarray(list(table.values()), dtype=np.int64)
        n = int(ids.max()) + 1 if kind == "category" else config.clusters_for(num_items)
        report[kind] = core.size_summary(ids, n)
        report[kind]["items_assigned"] = counters.get(f"{kind}_assigned", 0)
        fileio.write_json(fileio.join(output_dir, kind, "meta.json"), {"num_clusters": n})
    fileio.write_json(fileio.join(output_dir, "report.json"), report)
    _plot_sizes(report, kinds, fileio.join(output_dir, "cluster_sizes.png"))
    if not num_items:
        print(f"[item_clusterer] {config.embedding_kind}: skipped, no embeddings in {embeddings_dir} (items "
              "without text); use another cluster source", flush=True)
    for kind in kinds:
        r = report[kind]
        print(f"[item_clusterer] {kind}: {r['num_items']:,} items in -> {r['items_assigned']:,} assigned to "
              f"{r['num_clusters']} clusters (sizes min {r['min']}, median {r['median']:.0f}, max {r['max']}; "
              f"{r['empty_clusters']} empty); dropped 0", flush=True)
    return report
