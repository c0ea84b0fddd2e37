"""Does cluster OOB help on larger catalogues? Per-user split, behavioural clusters, two Amazon sets.

    python -m benchmarks.larger_catalogues [--seeds 0,1,2] [--data-root ../shared/data] [--parts main,regimes,ml1m]

Data (read from --data-root or $DATA_ROOT, never copied): amazon-videogames-2014 (23,715 items) and
amazon-cds-2014 (35,118 items), chronological per-user sequences with order-only timestamps and no
item text; MovieLens-1M (reconstructed ratings) with the same split. Protocol: `leave_last_out`
(each user's last positive to evaluation), HR@10/50/100 and NDCG@10 over the full catalogue.

Behavioural clusters, per seed: train `in_batch` (no cluster features on the Amazon sets, which
have no text and no categories; LLM cluster features on ML-1M), export its candidate embeddings,
k-means them with item_clusterer (embedding_kind 'behavioural', sqrt(items) clusters). Then
in_batch, oob and cluster_oob all train with those cluster tables (same features for every
strategy), with the mixed-negatives logQ correction (losses.py). Regimes (larger set, first seed):
random:cluster ratio, masking the user's training positives (or history items) in pool draws,
cluster count (with the false-negative rate of cluster draws), batch 128, and no logQ correction.
Writes benchmarks/results/larger_catalogues.{json,md,png} after every part.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import llm_hardneg.components  # noqa: F401
from benchmarks.paper_tables import (
    RECORDED_SHARING,
    RESULTS,
    WORK,
    false_negative_rate,
    mass_cell,
    prepare,
    train_and_evaluate,
    write_results,
)
from llm_hardneg.components.example_gen import ExampleGenConfig
from llm_hardneg.components.exporter import ExporterConfig, run_exporter
from llm_hardneg.components.item_clusterer import ItemClustererConfig, run_item_clusterer
from llm_hardneg.components.trainer import TrainerConfig

KS = (10, 50, 100)
METRICS = ("hr10", "ndcg10", "hr50", "hr100")
AMAZON = {"amazon_videogames_2014": "amazon-videogames-2014", "amazon_cds_2014": "amazon-cds-2014"}
PUBLISHED_ML1M_HR10 = {"SASRec": 0.2853, "HSTU-large": 0.3294}  # full-ranking leave-one-out (generative-recommenders)


def behavioural(model_dir: str, examples: str, name: str, seed: int, num_clusters: int = 0) -> str:
    """k-means (item_clusterer, embedding_kind 'behavioural') of a trained model's exported item embeddings."""
    out = os.path.join(WORK, name, f"clusters_behavioural_{num_clusters or 'auto'}_seed{seed}")
    if not os.path.exists(os.path.join(out, "behavioural", "meta.json")):
        export = os.path.join(model_dir, "export")
        if not os.path.exists(os.path.join(export, "candidates.parquet")):
            run_exporter(ExporterConfig(), model_dir, os.path.join(examples, "items"), export)
        run_item_clusterer(ItemClustererConfig(num_clusters=num_clusters, embedding_kind="behavioural"), export,
                           os.path.join(examples, "items", "*.parquet"), out)
    return out


def aggregate(runs: list[dict]) -> dict:
    out = {f"{m}_{f.__name__}": f([r[m] for r in runs]) for m in METRICS for f in (statistics.mean, statistics.pstdev)}
    out["mass"] = {s: statistics.mean(r["mass"].get(s, 0.0) for r in runs) for s in runs[0]["mass"]}
    return out


def strategy_table(name: str, examples: str, base_clusters: str, first_source: str, seeds: list[int],
                   overrides: dict, extra: tuple = ()) -> list[dict]:
    """Per seed: the first pass (in_batch on `first_source`), behavioural clusters from it, then in_batch, oob and
    cluster_oob on the behavioural table; `extra`: (strategy, source) rows on base_clusters (ML-1M: genre, LLM)."""
    rows: dict[tuple[str, str], list[dict]] = {}
    for seed in seeds:
        first = TrainerConfig(strategy="in_batch", cluster_source=first_source, seed=seed, **RECORDED_SHARING,
                              **overrides)
        result = train_and_evaluate(first, examples, base_clusters, f"{name}-in_batch-{first_source}-{seed}", KS)
        rows.setdefault(("in_batch", first_source), []).append(result)
        clusters = behavioural(result["model_dir"], examples, name, seed)
        for strategy in ("in_batch", "oob", "cluster_oob"):
            config = TrainerConfig(strategy=strategy, cluster_source="behavioural", seed=seed, **RECORDED_SHARING,
                                   **overrides)
            rows.setdefault((strategy, "behavioural"), []).append(
                train_and_evaluate(config, examples, clusters, f"{name}-{strategy}-behavioural-{seed}", KS))
        for strategy, source in extra:
            config = TrainerConfig(strategy=strategy, cluster_source=source, seed=seed, **RECORDED_SHARING,
                                   **overrides)
            rows.setdefault((strategy, source), []).append(
                train_and_evaluate(config, examples, base_clusters, f"{name}-{strategy}-{source}-{seed}", KS))
    table = [{"dataset": name, "strategy": s, "clusters": c, "seeds": seeds, **aggregate(runs)}
             for (s, c), runs in rows.items()]
    for row in table:
        base = next(r for r in table if r["strategy"] == "in_batch" and r["clusters"] == "behavioural")
        row["gain_hr50"] = row["hr50_mean"] / base["hr50_mean"] - 1
        row["gain_hr10"] = row["hr10_mean"] / base["hr10_mean"] - 1 if base["hr10_mean"] else 0.0
    return table


def regimes(name: str, examples: str, base_clusters: str, seed: int, overrides: dict) -> list[dict]:
    """One change per row on the larger set, first seed; behavioural clusters of that seed's first pass."""
    first = TrainerConfig(strategy="in_batch", cluster_source="category", seed=seed, **RECORDED_SHARING, **overrides)
    model = train_and_evaluate(first, examples, base_clusters, f"{name}-in_batch-category-{seed}", KS)["model_dir"]
    clusters = behavioural(model, examples, name, seed)
    items = json.load(open(os.path.join(examples, "summary.json"), encoding="utf-8"))["items_out"]
    auto = ItemClustererConfig().clusters_for(items)
    cases = [  # the most telling first
        ("random:cluster 1:15 (default)", {}, ("oob", "cluster_oob"), 0),
        ("random:cluster 15:1", {"random_ratio": 15, "cluster_ratio": 1}, ("cluster_oob",), 0),
        ("random:cluster 1:1", {"random_ratio": 1, "cluster_ratio": 1}, ("cluster_oob",), 0),
        ("mask the user's training positives in pool draws", {"mask_user_positives": True}, ("oob", "cluster_oob"),
         0),
        ("no logQ correction", {"logq_correction": "none"}, ("in_batch", "oob", "cluster_oob"), 0),
        ("batch 128", {"batch_size": 128}, ("in_batch", "oob", "cluster_oob"), 0),
        (f"{auto // 4} clusters (sqrt/4)", {}, ("cluster_oob",), auto // 4),
        (f"{auto * 4} clusters (sqrt x 4)", {}, ("cluster_oob",), auto * 4),
        ("mask history items in pool draws", {"mask_history_negatives": True}, ("oob", "cluster_oob"), 0),
    ]
    rows = []
    for label, change, strategies, count in cases:
        table = behavioural(model, examples, name, seed, count) if count else clusters
        row = {"regime": label, "overrides": change, "clusters": count or auto}
        for strategy in strategies:
            config = TrainerConfig(strategy=strategy, cluster_source="behavioural", seed=seed,
                                   **{**RECORDED_SHARING, **overrides, **change})
            tag = (f"{name}-regime-{strategy}-{'-'.join(f'{k}{v}' for k, v in change.items())}-c{count}"
                   if change or count else f"{name}-{strategy}-behavioural-{seed}")  # the defaults: the main table's
            result = train_and_evaluate(config, examples, table, tag, KS)
            row[strategy] = {m: result[m] for m in METRICS} | {"mass": result["mass"]}
        if "cluster_oob" in strategies:
            row["false_negative_rate"] = false_negative_rate(examples, os.path.join(table, "behavioural"))
        rows.append(row)
    return rows


def markdown(result: dict) -> str:
    lines = [f"Per-user split (`leave_last_out`): each user's last positive is the evaluation example; full-catalogue "
             f"ranking. Seeds {result['seeds']}, 3 epochs, batch 1024, 16 pool negatives (random:cluster 1:15), "
             f"mixture logQ correction, optimizer {result.get('optimizer', 'adam')}. Behavioural clusters: k-means "
             "(sqrt(items) clusters) of the item embeddings of that seed's first-pass in_batch model; in_batch, oob "
             "and cluster_oob then all use them as cluster features. Mean ± std over seeds; gain over in_batch "
             "with the same (behavioural) features.", "",
             "| data set | items | strategy | clusters | HR@10 | NDCG@10 | HR@50 | HR@100 | gain HR@10 | gain HR@50 "
             "| softmax mass |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["table"]:
        cells = " | ".join(f"{r[f'{m}_mean']:.4f} ± {r[f'{m}_pstdev']:.4f}" for m in METRICS)
        lines.append(f"| {r['dataset']} | {result['items'][r['dataset']]:,} | {r['strategy']} | {r['clusters']} | "
                     f"{cells} | {100 * r['gain_hr10']:+.1f}% | {100 * r['gain_hr50']:+.1f}% | "
                     f"{mass_cell(r['mass'])} |")
    if "ml1m_leave_last_out" in result["items"]:
        if result.get("ml1m_seeds", result["seeds"]) != result["seeds"]:
            lines += ["", f"ML-1M rows: seeds {result['ml1m_seeds']} only (± 0 where one seed)."]
        lines += ["", "Published full-ranking leave-one-out HR@10 on ML-1M (sequential models, from Meta's "
                      "generative-recommenders README): " + ", ".join(f"{k} {v:.4f}" for k, v in
                                                                      PUBLISHED_ML1M_HR10.items()) + "."]
    if result.get("regimes"):
        name = result["regimes_dataset"]
        lines += ["", f"**Regimes on {name}** (seed {result['seeds'][0]}; one change per row; behavioural clusters)",
                  "", "| regime | clusters | in_batch HR@10 | oob HR@10 | cluster_oob HR@10 | in_batch HR@50 "
                      "| oob HR@50 | cluster_oob HR@50 | false-negative rate of cluster draws "
                      "| softmax mass (cluster_oob) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in result["regimes"]:
            def cell(s, m, r=r):
                return f"{r[s][m]:.4f}" if s in r else "-"
            fn = f"{100 * r['false_negative_rate']:.2f}%" if "false_negative_rate" in r else "-"
            mass = mass_cell(r["cluster_oob"]["mass"]) if "cluster_oob" in r else "-"
            lines.append(f"| {r['regime']} | {r['clusters']} | {cell('in_batch', 'hr10')} | {cell('oob', 'hr10')} | "
                         f"{cell('cluster_oob', 'hr10')} | {cell('in_batch', 'hr50')} | {cell('oob', 'hr50')} | "
                         f"{cell('cluster_oob', 'hr50')} | {fn} | {mass} |")
    return "\n".join(lines) + "\n"


def plot(result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["dataset"] for r in result["table"]))
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = [r for r in result["table"] if r["dataset"] == name]
        labels = [f"{r['strategy']}\n({r['clusters']})" for r in rows]
        ax.bar(labels, [r["hr10_mean"] for r in rows], yerr=[r["hr10_pstdev"] for r in rows], capsize=4)
        ax.set_title(f"{name} ({result['items'][name]:,} items)", fontsize=9)
        ax.set_ylabel("HitRate@10")
        ax.tick_params(axis="x", labelsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "larger_catalogues.png"), dpi=100)
    plt.close(fig)


def write(result: dict) -> None:
    write_results("larger_catalogues", result, markdown(result))
    plot(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--data-root", default=os.environ.get("DATA_ROOT", os.path.join("..", "shared", "data")))
    parser.add_argument("--parts", default="main,regimes,ml1m", help="which parts to run, in this order")
    parser.add_argument("--ml1m-seeds", default="", help="seeds of the ML-1M part (default: --seeds)")
    parser.add_argument("--datasets", default=",".join(AMAZON), help="the Amazon sets of the main part")
    parser.add_argument("--optimizer", default=TrainerConfig.optimizer,
                        help="trainer optimizer of every run ('adam': the runs made before lazy_adam was the default)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    root = os.path.abspath(args.data_root)
    started = time.monotonic()
    result = {"seeds": seeds, "table": [], "items": {}, "optimizer": args.optimizer}
    overrides = {"optimizer": args.optimizer}
    prepared = {}
    unknown = sorted(set(args.datasets.split(",")) - set(AMAZON))
    if unknown:
        raise SystemExit(f"unknown data sets {unknown}: choose from {sorted(AMAZON)}")
    for name, folder in ((n, AMAZON[n]) for n in args.datasets.split(",")):
        config = ExampleGenConfig(source="generic", interactions=os.path.join(root, folder, "interactions.csv.gz"),
                                  split="leave_last_out")
        prepared[name] = prepare(name, config)
    for part in args.parts.split(","):
        if part == "main":
            for name, (examples, clusters) in prepared.items():
                result["items"][name] = _items(examples)
                result["table"] += strategy_table(name, examples, clusters, "category", seeds, overrides)
        elif part == "ml1m":
            examples, clusters = prepare("ml1m_leave_last_out", ExampleGenConfig.movielens(
                os.path.join(root, "ml-1m"), split="leave_last_out"))
            result["items"]["ml1m_leave_last_out"] = _items(examples)
            ml_seeds = [int(x) for x in args.ml1m_seeds.split(",")] if args.ml1m_seeds else seeds
            result["ml1m_seeds"] = ml_seeds
            result["table"] += strategy_table("ml1m_leave_last_out", examples, clusters, "llm", ml_seeds, overrides,
                                              extra=(("oob", "llm"), ("cluster_oob", "llm"),
                                                     ("cluster_oob", "category")))
        elif part == "regimes":
            name = max(prepared, key=lambda n: _items(prepared[n][0]))
            result["regimes_dataset"] = name
            result["regimes"] = regimes(name, *prepared[name], seeds[0], overrides)
        else:
            raise SystemExit(f"unknown part {part!r}: use main, ml1m, regimes")
        result["wall_seconds"] = time.monotonic() - started
        write(result)


def _items(examples: str) -> int:
    with open(os.path.join(examples, "summary.json"), encoding="utf-8") as f:
        return json.load(f)["items_out"]


if __name__ == "__main__":
    main()
