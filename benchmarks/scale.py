"""Cost against catalogue size: pool, trainer step, evaluator and ScaNN build from 10^4 to 10^7 items, and the
data steps (item_clusterer, item_embedder, example_gen).

    python -m benchmarks.scale [--sizes 10000,100000,1000000] [--pool-sizes ...,10000000]
        [--parts pool,step,evaluator,scann,clusterer,embedder,example_gen] [--clusterer-sizes 100000,1000000]
        [--embedder-items 100000] [--example-gen-sizes 1000000] [--example-gen-workers 1,2]

Every measurement runs in its own process (peak memory = that process's max RSS). The data are
SYNTHETIC (benchmarks/synthetic.py's popularity model, made in memory): what is measured is cost,
not quality. Users scale with items (as many users as items; hashed into 10^6 rows at 10^7).
- pool: ClusterPool draws (1 random + 15 cluster per example) and update for a batch of 1024,
  sqrt(items) clusters, default slots, the pool pre-loaded with every item; median of 50 steps.
- step: one training step of TwoTowerModel (batch 1024, 16 pool negatives, history 20), median
  of 30 steps after 5 warm-up steps, per strategy; also `adam` (dense Adam, the earlier default)
  for cluster_oob to show what the lazy optimiser removes.
- evaluator: `evaluate` (exact full-catalogue HR@50/100) of 4,096 queries with the default
  memory budget.
- scann: building the exporter's ScaNN index (tree + AH + reorder) over random unit vectors.
- clusterer: the item_clusterer step (default config) on synthetic 384-d embeddings with sqrt(items) families.
- embedder: the item_embedder step against SentenceTransformer.encode, same texts, model and batch size.
- example_gen: the step on synthetic generic CSV (benchmarks/synthetic.py), wall time and peak memory, in
  one process or (workers > 1) DirectRunner multi_processing worker processes.
Writes benchmarks/results/scale.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

RESULTS = os.path.join("benchmarks", "results")
BATCH, DIM, HISTORY = 1024, 64, 20


# the pool sharing the recorded tables were measured with (paper_tables.RECORDED_SHARING; not imported from there,
# which would load Beam into these peak-memory measurements)
RECORDED_SHARING = {"negative_sharing": "per_example"}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _zipf_items(rng: np.random.Generator, cdf: np.ndarray, shape) -> np.ndarray:
    return np.searchsorted(cdf, rng.random(shape))


def catalogue_of(items: int):
    from benchmarks.synthetic import zipf_cdf
    from llm_hardneg.components.trainer.data import ItemCatalogue

    clusters = max(1, int(round(np.sqrt(items))))
    cdf = zipf_cdf(items, 1.0)
    counts = np.maximum(1, np.round(np.diff(cdf, prepend=0.0) * 100 * items)).astype(np.int64)
    ids = np.char.add("i", np.arange(items).astype(str))
    return ItemCatalogue(ids, np.arange(items) % clusters, counts, clusters), cdf


def synthetic_batches(catalogue, cdf: np.ndarray, users: int, count: int = 8) -> list[dict]:
    """`count` training batches of BATCH rows (seed 0): zipf items and histories (20% padding), `users` user ids."""
    rng = np.random.default_rng(0)

    def batch():
        history = catalogue.item_ids[_zipf_items(rng, cdf, (BATCH, HISTORY))]
        history[rng.random((BATCH, HISTORY)) < 0.2] = ""  # some short histories
        return {"user_id": np.char.add("u", rng.integers(0, users, BATCH).astype(str)),
                "item_id": catalogue.item_ids[_zipf_items(rng, cdf, BATCH)],
                "label": (rng.random(BATCH) < 0.85).astype(np.float32),
                "history_item_ids": history}

    return [batch() for _ in range(count)]


def measure_pool(items: int) -> dict:
    import tensorflow as tf

    from llm_hardneg.components.trainer.config import TrainerConfig
    from llm_hardneg.components.trainer.pool import ClusterPool

    clusters = max(1, int(round(np.sqrt(items))))
    slots = TrainerConfig().slots_for(items, clusters)
    pool = ClusterPool(clusters, slots, {"item_index": ((), "int64")})
    for start in range(0, items, 1_000_000):
        ids = tf.range(start, min(items, start + 1_000_000), dtype=tf.int64)
        pool.update(ids, ids % clusters, {"item_index": ids})

    @tf.function
    def step(index, cluster):
        drawn = pool(cluster, 1, 15)
        pool.update(index, cluster, {"item_index": index})
        return drawn["item_index"]

    rng = np.random.default_rng(0)
    batches = [tf.constant(rng.integers(0, items, BATCH)) for _ in range(60)]
    times = []
    for i, index in enumerate(batches):
        started = time.perf_counter()
        step(index, index % clusters).numpy()
        if i >= 10:
            times.append(time.perf_counter() - started)
    return {"items": items, "clusters": clusters, "slots_per_cluster": slots, "pool_ms": 1e3 * statistics.median(times)}


def measure_step(items: int, strategy: str, optimizer: str, overrides: str = "{}") -> dict:
    """overrides: JSON of further TrainerConfig fields (benchmarks.negative_sharing's variants)."""
    import tensorflow as tf

    from llm_hardneg.components.trainer.config import TrainerConfig
    from llm_hardneg.components.trainer.model import TwoTowerModel
    from llm_hardneg.components.trainer.optimizer import make_optimizer

    started = time.monotonic()
    catalogue, cdf = catalogue_of(items)
    buckets = 1_000_000 if items > 1_000_000 else 0
    users = None if buckets else np.char.add("u", np.arange(items).astype(str)).tolist()
    config = TrainerConfig(strategy=strategy, optimizer=optimizer, user_id_buckets=buckets, history_length=HISTORY,
                           **{**RECORDED_SHARING, **json.loads(overrides)})
    model = TwoTowerModel(config, catalogue, users)
    model.compile(optimizer=make_optimizer(optimizer, config.learning_rate))
    model.preload_pool(catalogue)
    setup = time.monotonic() - started
    batches = synthetic_batches(catalogue, cdf, items)
    data = tf.data.Dataset.from_tensor_slices({k: np.stack([b[k] for b in batches]) for k in batches[0]})
    iterator = iter(data.repeat())
    train = model.make_train_function()
    times = []
    for i in range(35):
        started = time.perf_counter()
        logs = train(iterator)
        float(logs["loss"])
        if i >= 5:
            times.append(time.perf_counter() - started)
    step = statistics.median(times)
    result = {"items": items, "users": items, "user_rows": buckets or items + 1, "strategy": strategy,
              "optimizer": optimizer, "step_ms": 1e3 * step, "examples_per_second": BATCH / step,
              "setup_seconds": setup, "embedded_rows": float(logs["embedded_rows"])}
    if model.pool is not None:  # the pool's share, timed in this process on this model's pool
        from benchmarks.paper_tables import pool_seconds

        result["pool_ms"] = 1e3 * pool_seconds(model, [model.items(tf.constant(b["item_id"])) for b in batches])
    return result


def measure_evaluator(items: int) -> dict:
    from llm_hardneg.components.evaluator.core import EvaluatorConfig, evaluate

    rng = np.random.default_rng(0)
    candidates = rng.normal(size=(items, DIM)).astype(np.float32)
    candidates /= np.linalg.norm(candidates, axis=1, keepdims=True)
    config = EvaluatorConfig()
    batch = config.query_batch(items)
    queries = rng.normal(size=(4096, DIM)).astype(np.float32)
    targets = rng.integers(0, items, 4096)
    started = time.monotonic()
    result = evaluate(((queries[i:i + batch], targets[i:i + batch]) for i in range(0, 4096, batch)), candidates,
                      config)
    return {"items": items, "queries": 4096, "query_batch": batch, "seconds": time.monotonic() - started,
            "hit_rate@100": result["metrics"]["hit_rate@100"]}


def measure_scann(items: int) -> dict:
    from llm_hardneg.components.exporter.core import ExporterConfig, build_scann_index

    rng = np.random.default_rng(0)
    candidates = rng.normal(size=(items, DIM)).astype(np.float32)
    candidates /= np.linalg.norm(candidates, axis=1, keepdims=True)
    started = time.monotonic()
    searcher = build_scann_index(candidates, ExporterConfig())
    seconds = time.monotonic() - started
    neighbours, _ = searcher.search_batched(candidates[:100])
    return {"items": items, "seconds": seconds, "self_found": float(np.mean(neighbours[:, 0] == np.arange(100)))}


def measure_clusterer(items: int) -> dict:
    """item_clusterer (default config: sqrt(items) clusters, 200k fit sample) on synthetic 384-d embeddings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.synthetic import write_embeddings
    from llm_hardneg.components.item_clusterer import ItemClustererConfig, run_item_clusterer

    with tempfile.TemporaryDirectory(prefix="scale_clusterer_") as work:
        os.makedirs(os.path.join(work, "embeddings"))
        write_embeddings(os.path.join(work, "embeddings", "embeddings-00000-of-00001.parquet"), items)
        ids = pa.array(np.char.add("i", np.arange(items).astype(str)))
        pq.write_table(pa.table({"item_id": ids, "categories": pa.array([[]] * items, pa.list_(pa.string()))}),
                       os.path.join(work, "items.parquet"))
        started = time.monotonic()
        report = run_item_clusterer(ItemClustererConfig(), os.path.join(work, "embeddings"),
                                    os.path.join(work, "items.parquet"), os.path.join(work, "out"))
        seconds = time.monotonic() - started
    return {"items": items, "seconds": seconds, "items_per_second": items / seconds,
            "clusters": report["llm"]["num_clusters"], "empty_clusters": report["llm"]["empty_clusters"]}


def measure_embedder(items: int, which: str) -> dict:
    """'step': item_embedder (Beam, RunInference, default MiniLM, batch 64) over `items` synthetic item texts;
    'raw': SentenceTransformer.encode of the same texts with the same model and batch size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.synthetic import item_texts
    from llm_hardneg.components.item_embedder import ItemEmbedderConfig, run_item_embedder

    texts, config = item_texts(np.arange(items), max(1, int(round(np.sqrt(items))))), ItemEmbedderConfig()
    if which == "raw":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(config.model_path(), device="cpu")
        started = time.monotonic()
        model.encode(texts, batch_size=config.batch_size)
        seconds = time.monotonic() - started
    else:
        with tempfile.TemporaryDirectory(prefix="scale_embedder_") as work:
            pq.write_table(pa.table({"item_id": [f"i{i}" for i in range(items)], "text": texts,
                                     "categories": pa.array([[]] * items, pa.list_(pa.string()))}),
                           os.path.join(work, "items.parquet"))
            started = time.monotonic()
            run_item_embedder(config, os.path.join(work, "items.parquet"), os.path.join(work, "out"))
            seconds = time.monotonic() - started
    return {"items": items, "which": which, "seconds": seconds, "items_per_second": items / seconds}


def measure_example_gen(interactions: int, workers: str = "1", sequence_length: str = "0") -> dict:
    """example_gen (default config, generic CSV input) on synthetic interactions: users = interactions / 100,
    items = interactions / 50. workers > 1: DirectRunner's multi_processing mode with that many worker
    processes, the interactions in 2 x workers files (a step reads one worker per file). sequence_length > 0:
    sequence records of that length are written too."""
    from benchmarks import synthetic
    from llm_hardneg.components.example_gen import ExampleGenConfig, run_example_gen

    workers = int(workers)
    beam_args = ([] if workers == 1 else
                 ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"])
    with tempfile.TemporaryDirectory(prefix="scale_example_gen_") as work:
        paths = synthetic.write(os.path.join(work, "in"), max(2, interactions // 50), max(2, interactions // 100),
                                interactions, log=lambda _: None, files=1 if workers == 1 else 2 * workers)
        started = time.monotonic()
        summary = run_example_gen(ExampleGenConfig(source="generic", interactions=paths["interactions"],
                                                   items=paths["items"], sequence_length=int(sequence_length)),
                                  os.path.join(work, "out"), beam_args)
        seconds = time.monotonic() - started
    return {"interactions": interactions, "workers": workers, "sequence_length": int(sequence_length),
            "sequence_targets": summary.get("train_sequence_targets", 0), "seconds": seconds,
            "interactions_per_second": interactions / seconds,
            "examples": summary["train_examples"] + summary["eval_examples"],
            "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 if workers > 1 else 0.0}


MEASURES = {"pool": measure_pool, "step": measure_step, "evaluator": measure_evaluator, "scann": measure_scann,
            "clusterer": measure_clusterer, "embedder": measure_embedder, "example_gen": measure_example_gen}


def run_one(part: str, items: int, *args: str) -> dict:
    """Runs one measurement in a fresh process; returns its result with peak_mb."""
    command = [sys.executable, "-m", "benchmarks.scale", "--one", part, str(items), *args]
    print(f"[scale] {part} {items:,} {' '.join(args)}", flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        print(done.stdout[-2000:], done.stderr[-4000:], file=sys.stderr)
        return {"items": items, "error": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
    result = json.loads(lines[-1])
    print(f"[scale]   {result}", flush=True)
    return result


def _table(header: list[str], rows: list[dict], cells) -> list[str]:
    """A Markdown table (and a blank line) of `rows`, one `cells(row)` list per row; nothing when no rows."""
    if not rows:
        return []
    return [f"| {' | '.join(header)} |", "|" + "---|" * len(header),
            *(f"| {' | '.join(cells(r))} |" for r in rows), ""]


def markdown(result: dict) -> str:
    lines = ["SYNTHETIC data (cost only), 2-core CPU machine, one process per measurement; batch 1024, 16 pool "
             "negatives (1 random + 15 cluster), sqrt(items) clusters, users = items (hashed into 10^6 rows above "
             f"10^6). Pool and step: median over steps, fastest of {result.get('repeats', 1)} processes; the pool "
             "share divides the pool's time by the step's, both timed in the same process where the row has it.", ""]
    if result.get("pool"):
        lines += ["| items | pool draws + update (ms) |", "|---|---|"]
        lines += [f"| {r['items']:,} | {r['pool_ms']:.2f} |" for r in result["pool"] if "error" not in r]
        lines.append("")
    if result.get("step"):
        lines += ["| items | strategy | optimizer | step (ms) | examples/s | pool share of the step "
                  "| peak memory (GB) |", "|---|---|---|---|---|---|---|"]
        pool = {r["items"]: r["pool_ms"] for r in result.get("pool", []) if "error" not in r}
        for r in result["step"]:
            if "error" in r:
                lines.append(f"| {r['items']:,} | {r.get('strategy', '')} | | failed: {r['error']} | | | |")
                continue
            pool_ms = r.get("pool_ms", pool.get(r["items"]))  # timed beside the step when it was
            share = f"{100 * pool_ms / r['step_ms']:.1f}%" if r["strategy"] != "in_batch" and pool_ms else "-"
            lines.append(f"| {r['items']:,} | {r['strategy']} | {r['optimizer']} | {r['step_ms']:.1f} | "
                         f"{r['examples_per_second']:,.0f} | {share} | {r['peak_mb'] / 1024:.1f} |")
        lines.append("")
    def ok(part: str) -> list[dict]:
        return [r for r in result.get(part, []) if "error" not in r]

    for part, title in (("evaluator", "exact evaluation of 4,096 queries"), ("scann", "ScaNN index build")):
        lines += _table(["items", f"{title} (s)", "peak memory (GB)"], ok(part),
                        lambda r: [f"{r['items']:,}", f"{r['seconds']:.1f}", f"{r['peak_mb'] / 1024:.2f}"])
    lines += _table(["items", "item_clusterer, default config (s)", "items/s", "clusters", "peak memory (GB)"],
                    ok("clusterer"), lambda r: [f"{r['items']:,}", f"{r['seconds']:.1f}",
                                                f"{r['items_per_second']:,.0f}", f"{r['clusters']:,}",
                                                f"{r['peak_mb'] / 1024:.2f}"])
    rows = {r["which"]: r for r in result.get("embedder", []) if "error" not in r}
    if len(rows) == 2:
        lines += ["| items | SentenceTransformer.encode (items/s) | item_embedder step (items/s) | ratio "
                  "| step peak memory (GB) |", "|---|---|---|---|---|",
                  f"| {rows['step']['items']:,} | {rows['raw']['items_per_second']:,.0f} | "
                  f"{rows['step']['items_per_second']:,.0f} | "
                  f"{rows['step']['items_per_second'] / rows['raw']['items_per_second']:.2f} | "
                  f"{rows['step']['peak_mb'] / 1024:.2f} |", ""]
    def total_mb(r: dict) -> float:  # the launcher's peak plus each worker at the largest one's (0: no workers)
        return r["peak_mb"] + r.get("workers", 1) * r.get("worker_peak_mb", 0.0)

    lines += _table(["interactions", "worker processes", "sequence records", "example_gen (s)", "interactions/s",
                     "peak memory (GB)", "bytes per interaction"],
                    ok("example_gen"), lambda r: [f"{r['interactions']:,}", f"{r.get('workers', 1)}",
                                                  f"length {r['sequence_length']}" if r.get("sequence_length")
                                                  else "-",
                                                  f"{r['seconds']:.1f}", f"{r['interactions_per_second']:,.0f}",
                                                  f"{total_mb(r) / 1024:.2f}",
                                                  f"{total_mb(r) * 2**20 / r['interactions']:,.0f}"])
    return "\n".join(lines)


def plot(result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r_key, y_key, label in (("pool", "pool_ms", "pool draws + update"),):
        rows = [r for r in result.get(r_key, []) if "error" not in r]
        if rows:
            ax.plot([r["items"] for r in rows], [r[y_key] for r in rows], "o-", label=label)
    for strategy, optimizer in sorted({(r["strategy"], r["optimizer"]) for r in result.get("step", [])
                                       if "error" not in r}):
        rows = [r for r in result["step"] if "error" not in r and (r["strategy"], r["optimizer"]) ==
                (strategy, optimizer)]
        ax.plot([r["items"] for r in rows], [r["step_ms"] for r in rows], "s-", label=f"step {strategy} ({optimizer})")
    for part in ("evaluator", "scann"):
        rows = [r for r in result.get(part, []) if "error" not in r]
        if rows:
            ax.plot([r["items"] for r in rows], [1e3 * r["seconds"] for r in rows], "^--", label=f"{part} (total)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("items (users = items)")
    ax.set_ylabel("milliseconds")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "scale.png"), dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--pool-sizes", default="10000,100000,1000000,10000000")
    parser.add_argument("--scann-sizes", default="10000,100000,1000000,10000000")
    parser.add_argument("--big", default="10000000", help="the size of the cluster_oob step row at 10^7 ('' = none)")
    parser.add_argument("--clusterer-sizes", default="100000,1000000", help="items")
    parser.add_argument("--embedder-items", default="100000")
    parser.add_argument("--example-gen-sizes", default="1000000", help="interactions")
    parser.add_argument("--example-gen-workers", default="1",
                        help="worker processes (> 1: DirectRunner multi_processing, inputs in 2 x workers files)")
    parser.add_argument("--example-gen-sequence-length", type=int, default=0,
                        help="example_gen also writes sequence records of this length (0 = none)")
    parser.add_argument("--parts", default="pool,step,evaluator,scann,clusterer,embedder,example_gen",
                        help="parts to measure; the others keep their previous results")
    parser.add_argument("--repeats", type=int, default=3,
                        help="pool and step: measure this many times, keep the fastest (robust to a busy machine)")
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        import llm_hardneg.components  # noqa: F401  (environment before TensorFlow)

        part, items, *rest = args.one
        result = MEASURES[part](int(items), *rest)
        print(json.dumps({**result, "peak_mb": _peak_mb()}), flush=True)
        return
    from benchmarks.paper_tables import write_results

    sizes = [int(s) for s in args.sizes.split(",")]
    path = os.path.join(RESULTS, "scale.json")
    result: dict = json.load(open(path, encoding="utf-8")) if os.path.exists(path) else {}
    result.update(sizes=sizes, repeats=args.repeats)

    def fastest(part: str, items: int, *rest: str) -> dict:
        key = {"pool": "pool_ms", "step": "step_ms"}[part]
        runs = [run_one(part, items, *rest) for _ in range(args.repeats)]
        return min(runs, key=lambda r: r.get(key, float("inf")))

    for part in args.parts.split(","):
        if part == "pool":
            result["pool"] = [fastest("pool", n) for n in [int(s) for s in args.pool_sizes.split(",")]]
        elif part == "step":
            rows = [fastest("step", n, s, "lazy_adam") for n in sizes for s in ("in_batch", "oob", "cluster_oob")]
            rows += [fastest("step", n, "cluster_oob", "adam") for n in sizes]
            if args.big:
                rows.append(fastest("step", int(args.big), "cluster_oob", "lazy_adam"))
            key = lambda r: (r["items"], r.get("strategy"), r.get("optimizer"))  # noqa: E731
            kept = [r for r in result.get("step", []) if key(r) not in {key(n) for n in rows}]
            result["step"] = sorted(kept + rows, key=lambda r: (r.get("optimizer") != "lazy_adam", r["items"]))
        elif part == "evaluator":
            result[part] = [run_one(part, n) for n in sizes]
        elif part == "scann":
            result[part] = [run_one(part, n) for n in [int(s) for s in args.scann_sizes.split(",")]]
        elif part == "clusterer":
            result[part] = [run_one(part, n) for n in [int(s) for s in args.clusterer_sizes.split(",")]]
        elif part == "embedder":
            n = int(args.embedder_items)
            result[part] = [run_one(part, n, which) for which in ("raw", "step")]
        elif part == "example_gen":
            rows = [run_one(part, n, w, str(args.example_gen_sequence_length))
                    for w in args.example_gen_workers.split(",")
                    for n in [int(s) for s in args.example_gen_sizes.split(",")]]
            key = lambda r: (r["interactions"], r.get("workers", 1), r.get("sequence_length", 0))  # noqa: E731
            kept = [r for r in result.get(part, []) if "error" in r or key(r) not in {key(n) for n in rows}]
            result[part] = sorted(kept + rows, key=lambda r: (r.get("sequence_length", 0), r.get("workers", 1),
                                                              r.get("interactions", 0)))
        else:
            raise SystemExit(f"unknown part {part!r}: use {', '.join(MEASURES)}")
        write_results("scale", result, markdown(result))
        plot(result)


if __name__ == "__main__":
    main()
