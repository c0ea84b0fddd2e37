"""ScaNN vs brute-force top-K on a synthetic 1M-item corpus (2 CPU cores here).

    python -m benchmarks.scann_vs_bruteforce [--items 1000000] [--dim 64] [--queries 2000] [--k 100]

Corpus: unit vectors drawn around 2,000 random centres (clustered like learned item embeddings;
uniform random points on a sphere are ScaNN's hardest case and are reported too with --uniform).
Brute force: exact dot products + top-K in TensorFlow, batched. ScaNN: the exporter's index
configuration (llm_hardneg.components.exporter.core), searched with several leaf budgets.
Writes benchmarks/results/scann.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

import llm_hardneg.components  # noqa: F401
from llm_hardneg.components.exporter.core import ExporterConfig, build_scann_index


def corpus(n: int, dim: int, seed: int, uniform: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if uniform:
        x = rng.normal(size=(n, dim)).astype(np.float32)
        q = rng.normal(size=(2000, dim)).astype(np.float32)
    else:
        centres = rng.normal(size=(2000, dim)).astype(np.float32)
        x = centres[rng.integers(0, 2000, n)] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
        q = centres[rng.integers(0, 2000, 2000)] + 0.6 * rng.normal(size=(2000, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x, q


def brute_force(x: np.ndarray, q: np.ndarray, k: int, batch: int = 250):
    import tensorflow as tf

    xt = tf.constant(x)

    @tf.function
    def top(qb):
        return tf.math.top_k(tf.matmul(qb, xt, transpose_b=True), k=k).indices

    top(tf.constant(q[:batch]))  # trace
    started = time.perf_counter()
    out = np.concatenate([top(tf.constant(q[i:i + batch])).numpy() for i in range(0, len(q), batch)])
    return out, len(q) / (time.perf_counter() - started)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--uniform", action="store_true")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results", "scann"))
    args = parser.parse_args()
    x, q = corpus(args.items, args.dim, 0, args.uniform)
    q = q[:args.queries]
    print(f"[scann] corpus {x.shape}, {len(q)} queries, k={args.k}", flush=True)
    truth, bf_qps = brute_force(x, q, args.k)
    print(f"[scann] brute force: {bf_qps:,.0f} queries/s", flush=True)
    config = ExporterConfig(k=args.k, leaves_to_search_fraction=0.05, reorder=1000)
    started = time.perf_counter()
    searcher = build_scann_index(x, config)
    build_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        searcher.serialize(tmp)
        index_bytes = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp))
    leaves = max(2, int(np.sqrt(args.items)))
    rows = []
    for fraction in (0.02, 0.05, 0.1, 0.2, 0.3):
        for reorder in (250, 1000):
            to_search = max(1, int(leaves * fraction))
            searcher.search_batched(q[:100], leaves_to_search=to_search, pre_reorder_num_neighbors=reorder)
            started = time.perf_counter()
            found, _ = searcher.search_batched(q, leaves_to_search=to_search, pre_reorder_num_neighbors=reorder)
            qps = len(q) / (time.perf_counter() - started)
            rows.append({"leaves_searched": to_search, "leaves": leaves, "reorder": reorder,
                         "recall": recall(found, truth), "qps": qps, "speedup": qps / bf_qps})
            print(f"[scann] leaves {to_search}/{leaves}, reorder {reorder}: recall@{args.k} "
                  f"{rows[-1]['recall']:.4f}, {qps:,.0f} queries/s ({qps / bf_qps:.1f}x)", flush=True)
    meets = [r for r in rows if r["recall"] >= 0.95 and r["speedup"] >= 5]
    result = {"items": args.items, "dim": args.dim, "queries": len(q), "k": args.k, "uniform": args.uniform,
              "brute_force_qps": bf_qps, "build_seconds": build_seconds, "index_mb": index_bytes / 2**20,
              "rows": rows, "target_met": bool(meets), "cpu_count": os.cpu_count()}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    lines = [f"{args.items:,} items x {args.dim} d ({'uniform' if args.uniform else 'clustered'}), "
             f"{len(q):,} queries, top-{args.k}, {os.cpu_count()} CPU cores. Brute force (TF matmul + top_k): "
             f"{bf_qps:,.0f} queries/s. ScaNN build {build_seconds:,.0f}s, index {index_bytes / 2**20:,.0f} MB.", "",
             f"| leaves searched | reorder | recall@{args.k} | queries/s | vs brute force |", "|---|---|---|---|---|"]
    lines += [f"| {r['leaves_searched']}/{r['leaves']} | {r['reorder']} | {r['recall']:.4f} | {r['qps']:,.0f} | "
              f"{r['speedup']:.1f}x |" for r in rows]
    lines += ["", f"Target recall@{args.k} >= 0.95 at >= 5x brute-force QPS: {'met' if meets else 'not met'}."]
    with open(args.out + ".md", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
