"""Negative-sampling strategies compared on one pipeline run's examples and clusters.

    python -m benchmarks.strategies [--run-dir runs/<run>] [--seeds 0] [--epochs 3]

Trains and evaluates `in_batch`, `oob`, `cluster_oob` (LLM clusters) and `cluster_oob`
(genre clusters) with identical towers and optimisation, and writes
benchmarks/results/strategies.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import statistics
import tempfile
import time

import components.common.env  # noqa: F401
from components.evaluator import EvaluatorConfig, run_evaluator
from components.trainer import TrainerConfig, run_trainer

VARIANTS = (("in_batch", "llm"), ("oob", "llm"), ("cluster_oob", "llm"), ("cluster_oob", "category"))


def latest_run(root: str = "runs") -> str:
    runs = sorted(glob.glob(os.path.join(root, "*", "example-gen")), key=os.path.getmtime)
    if not runs:
        raise SystemExit(f"no pipeline run under {root}/: run `make run` first or pass --run-dir")
    return os.path.dirname(runs[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=TrainerConfig.epochs)
    parser.add_argument("--out", default=os.path.join("benchmarks", "results", "strategies"))
    args = parser.parse_args()
    run_dir = args.run_dir or latest_run()
    examples = os.path.join(run_dir, "example-gen", "examples")
    clusters = os.path.join(run_dir, "item-clusterer", "clusters")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for strategy, source in VARIANTS:
        results = []
        for seed in seeds:
            config = TrainerConfig(strategy=strategy, cluster_source=source, epochs=args.epochs, seed=seed)
            with tempfile.TemporaryDirectory() as tmp:
                started = time.monotonic()
                summary = run_trainer(config, examples, clusters, os.path.join(tmp, "model"))
                metrics = run_evaluator(EvaluatorConfig(), os.path.join(tmp, "model"), examples,
                                        os.path.join(tmp, "eval"), config.history_length)
                results.append({"seed": seed, "hr50": metrics["hit_rate@50"], "hr100": metrics["hit_rate@100"],
                                "examples_per_second": statistics.mean(summary["examples_per_second"]),
                                "popularity": metrics["popularity"], "wall_seconds": time.monotonic() - started})
        rows.append({"strategy": strategy, "clusters": source, "config": dataclasses.asdict(config),
                     "runs": results,
                     "hr50_mean": statistics.mean(r["hr50"] for r in results),
                     "hr100_mean": statistics.mean(r["hr100"] for r in results),
                     "hr50_std": statistics.pstdev(r["hr50"] for r in results),
                     "examples_per_second": statistics.mean(r["examples_per_second"] for r in results)})
    base = rows[0]["hr50_mean"]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w", encoding="utf-8") as f:
        json.dump({"run_dir": run_dir, "seeds": seeds, "epochs": args.epochs, "rows": rows}, f, indent=2)
    lines = [f"Seeds {seeds}, {args.epochs} epochs, data {run_dir}.", "",
             "| strategy | clusters | HR@50 | HR@100 | vs in_batch (HR@50) | examples/s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['strategy']} | {r['clusters']} | {r['hr50_mean']:.4f} ± {r['hr50_std']:.4f} | "
                     f"{r['hr100_mean']:.4f} | {100 * (r['hr50_mean'] / base - 1):+.1f}% | "
                     f"{r['examples_per_second']:,.0f} |")
    with open(args.out + ".md", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
