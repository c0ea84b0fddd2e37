"""Where do cluster negatives help? The three strategies under several regimes, over seeds.

    python -m benchmarks.regimes [--seeds 0,1,2] [--rows N] [--ml1m-dir ../shared/data/ml-1m]

Each regime changes one thing from the defaults (position-pooled history, batch 1024, 62 LLM
clusters, 16 pool negatives 1:15, temperature 0.05, mixture logQ correction, 3 epochs) and trains
the strategies with the same towers and seeds on reconstructed ML-1M (LLM cluster features for
all). Regimes that touch the towers, the batch or the loss temperature train in_batch too, so the
baseline gets the same tuning; the pool-only regimes train oob and cluster_oob. Rows run in order
(most telling first), every seed of a row before the next row; the results are rewritten after
every row and finished trainings are reused, so `--rows` can grow from one run to the next.
Writes benchmarks/results/regimes.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import statistics

import llm_hardneg.components  # noqa: F401
from benchmarks.paper_tables import RECORDED_SHARING, mass_cell, prepare, train_and_evaluate, write_results
from llm_hardneg.components.example_gen import ExampleGenConfig
from llm_hardneg.components.trainer import TrainerConfig

ALL, POOL = ("in_batch", "oob", "cluster_oob"), ("oob", "cluster_oob")
REGIMES = {  # the most telling per training hour first: results are written after every row
    "in-batch-only logQ (the earlier loss)": ({"logq_correction": "in_batch"}, POOL),
    "defaults": ({}, ALL),
    "mean history pooling (the previous tower)": ({"history_pooling": "mean"}, ALL),
    "temperature 0.1": ({"temperature": 0.1}, ALL),
    "mask history items in pool draws": ({"mask_history_negatives": True}, POOL),
    "64 pool negatives (1:63)": ({"num_negatives": 64, "cluster_ratio": 63}, POOL),
    "250 LLM clusters": ({"num_clusters": 250}, ALL),
    "+4 EDIS virtual negatives": ({"edis_negatives": 4}, POOL),
    "batch 128": ({"batch_size": 128}, ALL),  # 8x the steps of batch 1024: the slowest row, last
}


def _summary(runs: list[dict]) -> dict:
    """Mean and population std of HR@50/@100 over seeds, the per-seed values, mean softmax mass per source."""
    out = {f"{m}_{f.__name__}": f([r[m] for r in runs]) for m in ("hr50", "hr100")
           for f in (statistics.mean, statistics.pstdev)}
    out["hr50_per_seed"] = [r["hr50"] for r in runs]
    out["mass"] = {s: statistics.mean(r["mass"].get(s, 0.0) for r in runs) for s in runs[0]["mass"]}
    return out


def _cell(row: dict, strategy: str, metric: str) -> str:
    if strategy not in row:
        return "-"
    return f"{row[strategy][f'{metric}_mean']:.4f} ± {row[strategy][f'{metric}_pstdev']:.4f}"


def _paired(row: dict, a: str, b: str) -> str:
    """a - b in HR@50, seed by seed (the same seed gives both the same initial towers and batches)."""
    if a not in row or b not in row:
        return "-"
    return ", ".join(f"{x - y:+.4f}" for x, y in zip(row[a]["hr50_per_seed"], row[b]["hr50_per_seed"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ml1m-dir", default=os.environ.get("ML1M_DIR", os.path.join("..", "shared", "data", "ml-1m")))
    parser.add_argument("--rows", type=int, default=len(REGIMES), help="only the first N regimes (most telling first)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    movielens = ExampleGenConfig.movielens(os.path.abspath(args.ml1m_dir))
    rows = []
    for name, (overrides, strategies) in list(REGIMES.items())[:args.rows]:
        row = {"regime": name, "overrides": overrides}
        trainer = {k: v for k, v in overrides.items() if k != "num_clusters"}
        examples, clusters = prepare("ml1m_reconstructed", movielens, clusters=overrides.get("num_clusters", 0))
        for strategy in strategies:
            changes = "-".join(f"{k}{v}" for k, v in overrides.items()) or "defaults"
            row[strategy] = _summary([train_and_evaluate(
                TrainerConfig(strategy=strategy, cluster_source="llm", seed=seed, **RECORDED_SHARING, **trainer),
                examples, clusters, f"regime-{strategy}-{changes}-s{seed}") for seed in seeds])
        row["cluster_vs_oob_hr50"] = row["cluster_oob"]["hr50_mean"] / row["oob"]["hr50_mean"] - 1
        if "in_batch" in row:
            row["cluster_vs_in_batch_hr50"] = row["cluster_oob"]["hr50_mean"] / row["in_batch"]["hr50_mean"] - 1
        rows.append(row)
        write(rows, seeds)


def write(rows: list[dict], seeds: list[int]) -> None:
    lines = [f"Reconstructed ML-1M, seeds {seeds} (mean ± std), LLM cluster features, mixture logQ correction "
             "unless the row says otherwise; one change from the defaults per row. Paired: cluster_oob minus the "
             "other strategy in HR@50, seed by seed. Softmax mass: cluster_oob's negatives' softmax mass per "
             "source (last epoch, mean over seeds).", "",
             "| regime | in_batch HR@50 | oob HR@50 | cluster_oob HR@50 | cluster vs oob (paired) | "
             "cluster vs in_batch (paired) | in_batch HR@100 | oob HR@100 | cluster_oob HR@100 | "
             "softmax mass (cluster_oob) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        vs_in_batch = (f"{100 * r['cluster_vs_in_batch_hr50']:+.1f}% ({_paired(r, 'cluster_oob', 'in_batch')})"
                       if "in_batch" in r else "-")
        lines.append(f"| {r['regime']} | {_cell(r, 'in_batch', 'hr50')} | {_cell(r, 'oob', 'hr50')} | "
                     f"{_cell(r, 'cluster_oob', 'hr50')} | "
                     f"{100 * r['cluster_vs_oob_hr50']:+.1f}% ({_paired(r, 'cluster_oob', 'oob')}) | {vs_in_batch} | "
                     f"{_cell(r, 'in_batch', 'hr100')} | {_cell(r, 'oob', 'hr100')} | "
                     f"{_cell(r, 'cluster_oob', 'hr100')} | {mass_cell(r['cluster_oob']['mass'])} |")
    write_results("regimes", {"seeds": seeds, "rows": rows}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
