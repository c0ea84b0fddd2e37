"""Does the lazy Adam (the default) train as well as the dense Adam it replaced? ML-1M, Table 1's protocol.

    python -m benchmarks.optimizers [--seeds 0,1,2] [--ml1m-dir ../shared/data/ml-1m]

The make-run model (cluster_oob, LLM clusters, mixture logQ, 3 epochs) with optimizer 'adam' (tf_keras'
Adam: every row of every embedding table moves each step) and 'lazy_adam' (only the rows looked up move;
see components/trainer/optimizer.py), same seeds. The 'adam' runs are Table 1's (reused when present).
Writes benchmarks/results/optimizers.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import statistics

import components  # noqa: F401
from benchmarks.paper_tables import prepare, train_and_evaluate, write_results
from components.example_gen import ExampleGenConfig
from components.trainer import TrainerConfig

OPTIMIZERS = ("adam", "lazy_adam")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ml1m-dir", default=os.environ.get("ML1M_DIR", os.path.join("..", "shared", "data", "ml-1m")))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    examples, clusters = prepare("ml1m_reconstructed", ExampleGenConfig.movielens(os.path.abspath(args.ml1m_dir)))
    rows = []
    for optimizer in OPTIMIZERS:
        runs = []
        for seed in seeds:
            config = TrainerConfig(strategy="cluster_oob", cluster_source="llm", seed=seed, optimizer=optimizer)
            suffix = "" if optimizer == "adam" else f"-{optimizer}"  # adam: Table 1's runs
            runs.append(train_and_evaluate(config, examples, clusters,
                                           f"ml1m_reconstructed-cluster_oob-llm{suffix}-{seed}"))
        rows.append({"optimizer": optimizer, "seeds": seeds, "hr50": [r["hr50"] for r in runs],
                     "hr100": [r["hr100"] for r in runs],
                     "examples_per_second": statistics.mean(r["examples_per_second"] for r in runs)})
    lines = [f"ML-1M reconstructed, time split, the make-run config (cluster_oob, LLM clusters), seeds {seeds}; "
             "mean ± std over seeds.", "", "| optimizer | HR@50 | HR@100 | examples/s (training) |",
             "|---|---|---|---|"]
    for r in rows:
        cell = lambda v: f"{statistics.mean(v):.4f} ± {statistics.pstdev(v):.4f}"  # noqa: E731
        lines.append(f"| {r['optimizer']} | {cell(r['hr50'])} | {cell(r['hr100'])} | {r['examples_per_second']:,.0f} |")
    write_results("optimizers", {"rows": rows}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
