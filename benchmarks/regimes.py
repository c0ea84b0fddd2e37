"""Where do cluster negatives help? The three strategies under several regimes.

    python -m benchmarks.regimes [--seed 0] [--ml1m-dir ../shared/data/ml-1m]

Each regime changes one thing from the defaults (position-pooled history, batch 1024, 62 LLM
clusters, 16 pool negatives 1:15, temperature 0.05, 3 epochs) and trains the strategies with the
same towers and seed on reconstructed ML-1M (LLM cluster features for all). Regimes that touch
the towers, the batch or the loss temperature train in_batch too, so the baseline gets the same
tuning; the pool-only regimes train oob and cluster_oob. Writes benchmarks/results/regimes.{json,md}.
"""

from __future__ import annotations

import argparse
import os

import components  # noqa: F401
from benchmarks.paper_tables import mass_cell, prepare, train_and_evaluate, write_results
from components.example_gen import ExampleGenConfig
from components.trainer import TrainerConfig

ALL, POOL = ("in_batch", "oob", "cluster_oob"), ("oob", "cluster_oob")
REGIMES = {  # the most telling first: results are written after every row
    "in-batch-only logQ (the earlier loss)": ({"logq_correction": "in_batch"}, POOL),
    "defaults": ({}, ALL),
    "batch 128": ({"batch_size": 128}, ALL),
    "64 pool negatives (1:63)": ({"num_negatives": 64, "cluster_ratio": 63}, POOL),
    "mask history items in pool draws": ({"mask_history_negatives": True}, POOL),
    "temperature 0.1": ({"temperature": 0.1}, ALL),
    "+4 EDIS virtual negatives": ({"edis_negatives": 4}, POOL),
    "250 LLM clusters": ({"num_clusters": 250}, ALL),
    "mean history pooling (the previous tower)": ({"history_pooling": "mean"}, ALL),
}


def _cell(row: dict, strategy: str, metric: str) -> str:
    return f"{row[strategy][metric]:.4f}" if strategy in row else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ml1m-dir", default=os.environ.get("ML1M_DIR", os.path.join("..", "shared", "data", "ml-1m")))
    parser.add_argument("--rows", type=int, default=len(REGIMES), help="only the first N regimes (most telling first)")
    args = parser.parse_args()
    movielens = ExampleGenConfig.movielens(os.path.abspath(args.ml1m_dir))
    rows = []
    for name, (overrides, strategies) in list(REGIMES.items())[:args.rows]:
        row = {"regime": name, "overrides": overrides}
        trainer = {k: v for k, v in overrides.items() if k != "num_clusters"}
        examples, clusters = prepare("ml1m_reconstructed", movielens, clusters=overrides.get("num_clusters", 0))
        for strategy in strategies:
            config = TrainerConfig(strategy=strategy, cluster_source="llm", seed=args.seed, **trainer)
            tag = f"regime-{strategy}-{'-'.join(f'{k}{v}' for k, v in overrides.items()) or 'defaults'}"
            result = train_and_evaluate(config, examples, clusters, tag)
            row[strategy] = {"hr50": result["hr50"], "hr100": result["hr100"], "mass": result["mass"]}
        row["cluster_vs_oob_hr50"] = row["cluster_oob"]["hr50"] / row["oob"]["hr50"] - 1
        if "in_batch" in row:
            row["cluster_vs_in_batch_hr50"] = row["cluster_oob"]["hr50"] / row["in_batch"]["hr50"] - 1
        rows.append(row)
        write(rows, args.seed)


def write(rows: list[dict], seed: int) -> None:
    lines = [f"Reconstructed ML-1M, seed {seed}, LLM cluster features, mixture logQ correction unless the row "
             "says otherwise; one change from the defaults per row. Softmax mass: cluster_oob's negatives' "
             "softmax mass per source (last epoch).", "",
             "| regime | in_batch HR@50 | oob HR@50 | cluster_oob HR@50 | cluster vs oob | cluster vs in_batch | "
             "in_batch HR@100 | oob HR@100 | cluster_oob HR@100 | softmax mass (cluster_oob) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        vs_in_batch = f"{100 * r['cluster_vs_in_batch_hr50']:+.1f}%" if "in_batch" in r else "-"
        lines.append(f"| {r['regime']} | {_cell(r, 'in_batch', 'hr50')} | {_cell(r, 'oob', 'hr50')} | "
                     f"{_cell(r, 'cluster_oob', 'hr50')} | {100 * r['cluster_vs_oob_hr50']:+.1f}% | {vs_in_batch} | "
                     f"{_cell(r, 'in_batch', 'hr100')} | {_cell(r, 'oob', 'hr100')} | "
                     f"{_cell(r, 'cluster_oob', 'hr100')} | {mass_cell(r['cluster_oob']['mass'])} |")
    write_results("regimes", {"seed": seed, "rows": rows}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
