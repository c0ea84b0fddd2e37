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
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from llm_hardneg.components.common import fileio
from llm_hardneg.components.common.beam_io import Counted
from llm_hardneg.components.common.beam_run import run_pipeline
from llm_hardneg.components.item_clusterer import core
from llm_hardneg.components.item_clusterer.config import ItemClustererConfig

NAMESPACE = "item_clusterer"
CLUSTER_SCHEMA = pa.schema([("item_id", pa.string()), ("cluster_id", pa.int64())])


def _vectors(table: pa.Table) -> np.ndarray:
    """The embeddings of a record batch of an embeddings table as one [n, d] float32 array, without a Python
    object per float."""
    if not table.num_rows:
        return np.zeros((0, 0), np.float32)
    column = table.column("embedding").combine_chunks()
    lengths = pc.list_value_length(column)
    if column.null_count or pc.min(lengths).as_py() != pc.max(lengths).as_py():
        raise ValueError(f"embeddings must all have one length and no nulls; found lengths "
                         f"{pc.min(lengths).as_py()}..{pc.max(lengths).as_py()} and {column.null_count} nulls")
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(table.num_rows, -1)


def _sample(table: pa.Table, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """(item ids, embeddings) of the batch's items in the fit sample."""
    ids = np.asarray(table.column("item_id").to_pylist(), dtype=object)
    keep = core.fit_sample_mask(ids, rate)
    return ids[keep], _vectors(table)[keep]


def _fit(parts, num_clusters: int, seed: int, n_init: int, iterations: int) -> np.ndarray:
    """k-means on the fit sample, rows sorted by item id (the order Beam collects them in is not fixed)."""
    parts = [p for p in parts if len(p[0])]
    ids = np.concatenate([p[0] for p in parts])
    vectors = np.concatenate([p[1] for p in parts])
    order = np.argsort(ids, kind="stable")
    print(f"[item_clusterer] k-means: {num_clusters} clusters on a sample of {len(ids):,} items x "
          f"{vectors.shape[1]} dims", flush=True)
    return core.fit_centroids(vectors[order], num_clusters, seed, n_init, iterations)


def _assign_batch(table: pa.Table, centroids: np.ndarray) -> pa.Table:
    if not table.num_rows:
        return CLUSTER_SCHEMA.empty_table()
    return pa.table({"item_id": table.column("item_id").cast(pa.string()),
                     "cluster_id": pa.array(core.assign(_vectors(table), centroids))}, schema=CLUSTER_SCHEMA)


def _first_categories(table: pa.Table) -> tuple[list[str], list[str]]:
    """A record batch of the item table -> (item ids, first category of each; '' when it has none)."""
    return (table.column("item_id").to_pylist(),
            [names[0] if names else "" for names in table.column("categories").to_pylist()])


def _category_batch(table: pa.Table, vocabulary: dict[str, int]) -> pa.Table:
    ids, names = _first_categories(table)
    return pa.table({"item_id": pa.array(ids, pa.string()),
                     "cluster_id": pa.array([vocabulary[n] for n in names], pa.int64())}, schema=CLUSTER_SCHEMA)


def _write_table(batches, label: str, path_prefix: str):
    return (batches
            | f"Count{label}" >> Counted(NAMESPACE, f"{label}_assigned", rows=True)
            | f"Write{label}" >> beam.io.WriteToParquetBatched(path_prefix, CLUSTER_SCHEMA,
                                                               file_name_suffix=".parquet"))


def build(pipeline, config: ItemClustererConfig, embeddings_pattern: str, items_path: str, output_dir: str,
          num_items: int) -> None:
    """k-means table from the embeddings (skipped when there are none: items without text) + category table.

    Elements are Arrow record batches (one per Parquet row group), not one dict per item. Each input is read
    twice, once for what the side input needs (fit sample, category names) and once to assign: a read shared
    by both branches would be held whole in memory until the side input is ready.
    """
    if num_items:
        num_clusters = config.clusters_for(num_items)
        rate = min(1.0, config.max_fit_items / max(num_items, 1))
        centroids = (
            pipeline
            | "ReadEmbeddingsToFit" >> beam.io.ReadFromParquetBatched(embeddings_pattern)
            | "FitSample" >> beam.Map(_sample, rate=rate)
            | "CollectSample" >> beam.combiners.ToList()
            | "FitKMeans" >> beam.Map(_fit, num_clusters=num_clusters, seed=config.seed, n_init=config.n_init,
                                      iterations=config.iterations)
        )
        assigned = (
            pipeline
            | "ReadEmbeddings" >> beam.io.ReadFromParquetBatched(embeddings_pattern)
            | "Assign" >> beam.Map(_assign_batch, centroids=beam.pvalue.AsSingleton(centroids))
        )
        _write_table(assigned, config.embedding_kind, fileio.join(output_dir, config.embedding_kind, "clusters"))

    columns = ["item_id", "categories"]
    vocabulary = (
        pipeline
        | "ReadItemsForNames" >> beam.io.ReadFromParquetBatched(items_path, columns=columns)
        | "Names" >> beam.FlatMap(lambda table: set(_first_categories(table)[1]))
        | "Distinct" >> beam.Distinct()
        | "AllNames" >> beam.combiners.ToList()
        | "Vocabulary" >> beam.Map(core.category_vocabulary)
    )
    category = (
        pipeline
        | "ReadItems" >> beam.io.ReadFromParquetBatched(items_path, columns=columns)
        | "CategoryId" >> beam.Map(_category_batch, vocabulary=beam.pvalue.AsSingleton(vocabulary))
    )
    _write_table(category, "category", fileio.join(output_dir, "category", "clusters"))
    _ = vocabulary | "SaveVocabulary" >> beam.Map(
        lambda v: fileio.write_json(fileio.join(output_dir, "category", "vocabulary.json"), v))


def read_num_clusters(path: str) -> int:
    """C of a cluster table directory (empty clusters included), from its meta.json."""
    meta = fileio.join(path, "meta.json")
    if not fileio.exists(meta):
        raise FileNotFoundError(f"{meta} is missing: {path} is not an item_clusterer output (re-run item_clusterer)")
    return int(fileio.read_json(meta)["num_clusters"])


def _read_columns(path: str, columns: list[str]) -> pa.Table:
    """The given columns of a cluster table directory (or file)."""
    files = [path] if path.endswith(".parquet") else fileio.match(fileio.join(path, "*.parquet"))
    if not files:
        raise FileNotFoundError(f"no cluster table (*.parquet) under {path}")
    tables = []
    for f in files:
        with FileSystems.open(f) as handle:
            tables.append(pq.read_table(handle, columns=columns))
    return pa.concat_tables(tables)


def read_cluster_table(path: str) -> dict[str, int]:
    """Reads a cluster table directory (or file) -> {item_id: cluster_id}."""
    table = _read_columns(path, ["item_id", "cluster_id"])
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
        ids = _read_columns(fileio.join(output_dir, kind), ["cluster_id"]).column("cluster_id").to_numpy()
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
