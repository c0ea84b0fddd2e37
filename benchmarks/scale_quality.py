"""What the options that make a step independent of catalogue and user counts cost in quality, on ML-1M.

    python -m benchmarks.scale_quality [--seeds 0,1,2] [--ml1m-dir ../shared/data/ml-1m]

The make-run model (cluster_oob, LLM clusters, mixture logQ, 3 epochs), Table 1's protocol, same seeds:
- optimizer 'adam' (tf_keras' Adam: every row of every embedding table moves each step; the earlier
  default; these are Table 1's runs, reused when present) against 'lazy_adam' (the default: only the
  rows looked up move; components/trainer/optimizer.py);
- user ids hashed into 1,024 rows (`user_id_buckets`; ML-1M has 6,040 users) against one row per user.
Writes benchmarks/results/scale_quality.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import statistics

import llm_hardneg.components  # noqa: F401
from benchmarks.paper_tables import RECORDED_SHARING, prepare, train_and_evaluate, write_results
from llm_hardneg.components.example_gen import ExampleGenConfig
from llm_hardneg.components.trainer import TrainerConfig

ROWS = (("adam", 0), ("lazy_adam", 0), ("lazy_adam", 1024))  # (optimizer, user_id_buckets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ml1m-dir", default=os.environ.get("ML1M_DIR", os.path.join("..", "shared", "data", "ml-1m")))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    examples, clusters = prepare("ml1m_reconstructed", ExampleGenConfig.movielens(os.path.abspath(args.ml1m_dir)))
    rows = []
    for optimizer, buckets in ROWS:
        runs = []
        for seed in seeds:
            config = TrainerConfig(strategy="cluster_oob", cluster_source="llm", seed=seed, optimizer=optimizer,
                                   user_id_buckets=buckets, **RECORDED_SHARING)
            suffix = ("" if optimizer == "adam" else f"-{optimizer}") + (f"-users{buckets}" if buckets else "")
            runs.append(train_and_evaluate(config, examples, clusters,  # adam: Table 1's runs
                                           f"ml1m_reconstructed-cluster_oob-llm{suffix}-{seed}"))
        rows.append({"optimizer": optimizer, "user_rows": buckets or "one per user", "seeds": seeds,
                     "hr50": [r["hr50"] for r in runs],
                     "hr100": [r["hr100"] for r in runs],
                     "examples_per_second": statistics.mean(r["examples_per_second"] for r in runs)})
    lines = [f"ML-1M reconstructed, time split, the make-run config (cluster_oob, LLM clusters), seeds {seeds}; "
             "mean ± std over seeds.", "", "| optimizer | user rows | HR@50 | HR@100 |",
             "|---|---|---|---|"]
    for r in rows:
        cell = lambda v: f"{statistics.mean(v):.4f} ± {statistics.pstdev(v):.4f}"  # noqa: E731
        lines.append(f"| {r['optimizer']} | {r['user_rows']} | {cell(r['hr50'])} | {cell(r['hr100'])} |")
    lines += ["", "Training speed is not compared here: the runs were made on differently loaded machines "
              "(`benchmarks.scale` measures cost)."]
    write_results("scale_quality", {"rows": rows}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
