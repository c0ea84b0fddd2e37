"""Where do cluster negatives help? oob vs cluster_oob (LLM clusters) under several regimes.

    python -m benchmarks.regimes [--seed 0] [--ml1m-dir ../shared/data/ml-1m]

Each regime changes one thing from the defaults (62 LLM clusters, 16 pool negatives 1:15,
temperature 0.05, 3 epochs) and trains both strategies with the same towers and seed on reconstructed ML-1M.
Writes benchmarks/results/regimes.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os

import components  # noqa: F401
from benchmarks.paper_tables import RESULTS, prepare, train_and_evaluate
from components.example_gen import ExampleGenConfig
from components.trainer import TrainerConfig

REGIMES = {
    "250 LLM clusters": {"num_clusters": 250},
    "64 pool negatives (1:63)": {"num_negatives": 64, "cluster_ratio": 63},
    "logQ on pool negatives": {"pool_logq": True},
    "mask history items in pool draws": {"mask_history_negatives": True},
    "+4 EDIS virtual negatives": {"edis_negatives": 4},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ml1m-dir", default=os.environ.get("ML1M_DIR", os.path.join("..", "shared", "data", "ml-1m")))
    args = parser.parse_args()
    movielens = ExampleGenConfig.movielens(os.path.abspath(args.ml1m_dir))
    rows = []
    for name, overrides in REGIMES.items():
        row = {"regime": name, "overrides": overrides}
        trainer = {k: v for k, v in overrides.items() if k != "num_clusters"}
        examples, clusters = prepare("ml1m_reconstructed", movielens, clusters=overrides.get("num_clusters", 0))
        for strategy in ("oob", "cluster_oob"):
            config = TrainerConfig(strategy=strategy, cluster_source="llm", seed=args.seed, **trainer)
            tag = f"regime-{strategy}-{'-'.join(f'{k}{v}' for k, v in overrides.items())}"
            result = train_and_evaluate(config, examples, clusters, tag)
            row[strategy] = {"hr50": result["hr50"], "hr100": result["hr100"]}
        row["cluster_gain_hr50"] = row["cluster_oob"]["hr50"] / row["oob"]["hr50"] - 1
        rows.append(row)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "regimes.json"), "w", encoding="utf-8") as f:
        json.dump({"seed": args.seed, "rows": rows}, f, indent=2)
    lines = [f"Reconstructed ML-1M, seed {args.seed}, LLM clusters; one change from the defaults per row.", "",
             "| regime | oob HR@50 | cluster_oob HR@50 | cluster vs oob | oob HR@100 | cluster_oob HR@100 |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['regime']} | {r['oob']['hr50']:.4f} | {r['cluster_oob']['hr50']:.4f} | "
              f"{100 * r['cluster_gain_hr50']:+.1f}% | {r['oob']['hr100']:.4f} | {r['cluster_oob']['hr100']:.4f} |"
              for r in rows]
    with open(os.path.join(RESULTS, "regimes.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
