"""Does cluster OOB help at 296k items? Epinions (a real, long-tailed catalogue without text), 3 seeds.

    python -m benchmarks.epinions [--seeds 0,1,2] [--split leave_last_out] [--no-regimes]
        [--regime-seeds 0,1,2] [--data-root ../shared/data]

Data (read from --data-root or $DATA_ROOT, never copied): epinions-2012, 922,267 ratings of 296,277 products
by 22,164 users, 27 categories, time as 11 ordered periods, no product text. Protocol: example_gen's defaults
(ratings >= 3 are positives, history of 20) with `--split` (`leave_last_out`: each user's last positive;
`time`: the global 80/20 cut, which falls at period 8); the trainer's defaults (3 epochs, batch 1024, 16 pool
negatives random:cluster 1:15, mixture logQ correction); exact HR@10/50/100 and NDCG@10 over the whole
catalogue, the paper's Table 3 popularity figures, and HR by the target's training examples (0, 1-4, 5+):
the long tail, where the paper's claim lives.

main, per seed: in_batch, oob and cluster_oob with the category clusters (27, the catalogue's own), cluster_oob
with per-example, per-cluster and shared draws, then behavioural clusters (k-means, sqrt(items) clusters, of the item
embeddings of that seed's in_batch model, as benchmarks.larger_catalogues does) for in_batch and cluster_oob.
regimes (every seed of --regime-seeds, category clusters, per-example draws): random:cluster 1:31 (the paper's
Amazon ratio), no logQ correction (the paper's baseline corrects in-batch negatives only; `in_batch` here is the
mixture's in-batch case), and batch 128 instead of 1024 for in_batch, oob and cluster_oob.
Verdict per cluster_oob row: its HR@50 gain over in_batch and over oob of the same regime against twice the larger
of the two rows' seed standard deviations. `full` (the exact softmax over 296k items) is not run: see `FULL_NOTE`.
Writes benchmarks/results/epinions_<split>.{json,md,png} after every run. A rerun resumes: the (row, seed) runs
already in the JSON are kept, not trained again (and a finished training in benchmarks/work is reused).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import llm_hardneg.components  # noqa: F401  (environment before TensorFlow)
from benchmarks.larger_catalogues import behavioural
from benchmarks.paper_tables import RESULTS, mass_cell, prepare, train_and_evaluate, write_results
from llm_hardneg.components.example_gen import ExampleGenConfig
from llm_hardneg.components.trainer import TrainerConfig

KS = (10, 50, 100)
METRICS = ("hr10", "ndcg10", "hr50", "hr100")
SHARED = {"negative_sharing": "shared", "shared_negatives": 256}
PER_EXAMPLE = {"negative_sharing": "per_example"}
MAIN = {  # name: (strategy, cluster source, overrides), in the order they are trained (most telling first)
    "in_batch": ("in_batch", "category", {}),
    "cluster_oob category shared": ("cluster_oob", "category", SHARED),
    "oob": ("oob", "category", PER_EXAMPLE),
    "cluster_oob category per-example": ("cluster_oob", "category", PER_EXAMPLE),
    "cluster_oob category per-cluster": ("cluster_oob", "category", {"negative_sharing": "per_cluster"}),
    "in_batch behavioural": ("in_batch", "behavioural", {}),
    "cluster_oob behavioural shared": ("cluster_oob", "behavioural", SHARED),
}
BATCH_128 = {"batch_size": 128}
REGIMES = {  # per-example draws
    "cluster_oob category per-example, random:cluster 1:31": ("cluster_oob", "category",
                                                              {**PER_EXAMPLE, "num_negatives": 32, "random_ratio": 1,
                                                               "cluster_ratio": 31}),
    "in_batch, no logQ correction": ("in_batch", "category", {"logq_correction": "none"}),
    "oob, no logQ correction": ("oob", "category", {**PER_EXAMPLE, "logq_correction": "none"}),
    "cluster_oob category per-example, no logQ correction": ("cluster_oob", "category",
                                                             {**PER_EXAMPLE, "logq_correction": "none"}),
    "in_batch, batch 128": ("in_batch", "category", BATCH_128),
    "oob, batch 128": ("oob", "category", {**PER_EXAMPLE, **BATCH_128}),
    "cluster_oob category per-example, batch 128": ("cluster_oob", "category", {**PER_EXAMPLE, **BATCH_128}),
}
BASELINES = {  # cluster_oob row: (in_batch row, oob row) with the same cluster features and regime
    "cluster_oob category shared": ("in_batch", "oob"),
    "cluster_oob category per-example": ("in_batch", "oob"),
    "cluster_oob category per-cluster": ("in_batch", "oob"),
    "cluster_oob behavioural shared": ("in_batch behavioural", None),
    "cluster_oob category per-example, random:cluster 1:31": ("in_batch", "oob"),
    "cluster_oob category per-example, no logQ correction": ("in_batch, no logQ correction",
                                                             "oob, no logQ correction"),
    "cluster_oob category per-example, batch 128": ("in_batch, batch 128", "oob, batch 128"),
}
RUN_KEYS = ("seed", *METRICS, "by_frequency", "popularity", "mass", "examples_per_second")
FULL_NOTE = ("`full` (the exact softmax) is not run: its step embeds all 296,277 items and scores [1024, 296,277] "
             "logits. Measured with `python -m benchmarks.scale --one step 296277 full lazy_adam` (and `in_batch`): "
             "7.0 s a step of 1,024 examples against 65 ms for in_batch (the same synthetic batches, the cores "
             "shared with three benchmark processes), 108x; at in_batch's 18,936 examples/s on this data about "
             "175 examples/s, 4.3 h for 3 epochs of leave_last_out's 896,002 examples on this 2-core machine, "
             "beyond the 2 h the issue allows.")


def _run(name: str, spec: tuple, seed: int, examples: str, tables: dict, split: str) -> dict:
    strategy, source, overrides = spec
    config = TrainerConfig(strategy=strategy, cluster_source=source, seed=seed, **overrides)
    tag = f"epinions-{split}-{name.replace(' ', '_').replace(',', '').replace(':', '-')}-{seed}"
    result = train_and_evaluate(config, examples, tables[source], tag, KS)
    return {**result, "seed": seed}


def aggregate(runs: list[dict]) -> dict:
    """Mean and population std over seeds of every metric, the frequency groups', popularity and mass."""
    out = {"seeds": [r["seed"] for r in runs]}
    for m in METRICS:
        values = [r[m] for r in runs]
        out[m] = {"mean": statistics.mean(values), "pstdev": statistics.pstdev(values), "per_seed": values}
    groups = runs[0]["by_frequency"] or {}
    out["by_frequency"] = {g: {"queries": groups[g]["queries"],
                               **{f"hr{k}": statistics.mean(r["by_frequency"][g][f"hit_rate@{k}"] for r in runs)
                                  for k in KS}} for g in groups}
    out["popularity"] = {key: statistics.mean(r["popularity"][key] for r in runs) for key in runs[0]["popularity"]}
    out["mass"] = {s: statistics.mean(r["mass"].get(s, 0.0) for r in runs) for s in runs[0]["mass"]}
    speeds = [r["examples_per_second"] for r in runs if r["examples_per_second"]]
    out["examples_per_second"] = statistics.mean(speeds) if speeds else None
    return out


def verdicts(result: dict) -> None:
    """Each cluster_oob row's HR@50 gain over the in_batch and oob rows of `BASELINES` (same cluster features,
    same regime), against 2 x the larger seed std."""
    rows = {**result.get("main", {}), **result.get("regimes", {})}
    for name, row in rows.items():
        if name not in BASELINES:
            continue
        row.pop("vs_in_batch", None), row.pop("vs_oob", None)
        for key, base_name in zip(("in_batch", "oob"), BASELINES[name]):
            base = rows.get(base_name)
            if base is None:
                continue
            gain = row["hr50"]["mean"] - base["hr50"]["mean"]
            noise = 2 * max(row["hr50"]["pstdev"], base["hr50"]["pstdev"])
            word = "beats" if gain > noise else "below" if gain < -noise else "within 2 std of"
            if min(len(row["seeds"]), len(base["seeds"])) < 2:
                word = "no verdict (one seed, no spread)"
            row[f"vs_{key}"] = {"against": base_name, "gain": gain, "relative": gain / base["hr50"]["mean"],
                                "two_std": noise, "verdict": word}


def markdown(result: dict) -> str:
    split = result["split"]
    lines = [f"Epinions, {result['items']:,} items, split `{split}` ({result['queries']:,} evaluation queries), "
             f"exact ranking over the whole catalogue; trainer defaults (3 epochs, batch 1024, 16 pool negatives "
             "random:cluster 1:15 or 256 shared draws a step, mixture logQ correction). Mean ± std over the seeds "
             "in the row; `python -m benchmarks.epinions`.", "",
             "| variant | seeds | HR@10 | NDCG@10 | HR@50 | HR@100 | HR@50 by target's training examples "
             f"({' / '.join(result['groups'])}) | top-100 items' share of top-100 slots | distinct items in top-100 "
             "| softmax mass | examples/s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for part in ("main", "regimes"):
        for name, r in result.get(part, {}).items():
            cells = " | ".join(f"{r[m]['mean']:.4f} ± {r[m]['pstdev']:.4f}" for m in METRICS)
            groups = " / ".join(f"{g['hr50']:.4f}" for g in r["by_frequency"].values())
            pop = r["popularity"]
            share = next(v for k, v in pop.items() if k.startswith("top100_popular_share"))
            distinct = next(v for k, v in pop.items() if k.startswith("distinct_items"))
            speed = f"{r['examples_per_second']:,.0f}" if r["examples_per_second"] else "-"
            lines.append(f"| {name} | {len(r['seeds'])} | {cells} | {groups} | {share:.3f} | {distinct:,.0f} | "
                         f"{mass_cell(r['mass'])} | {speed} |")
    lines += ["", "Queries per group: " + ", ".join(f"{g}: {n:,}" for g, n in result["group_queries"].items()), ""]
    lines += ["| cluster_oob row | HR@50 gain over in_batch (same cluster features and regime) | over oob |",
              "|---|---|---|"]
    for name, r in {**result.get("main", {}), **result.get("regimes", {})}.items():
        if "vs_in_batch" in r:
            cells = [f"{r[k]['gain']:+.4f} ({100 * r[k]['relative']:+.1f}%, 2 std {r[k]['two_std']:.4f}): "
                     f"{r[k]['verdict']}" if k in r else "-" for k in ("vs_in_batch", "vs_oob")]
            lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    lines += ["", FULL_NOTE, ""] if split == "leave_last_out" else [""]
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.get("main", {})
    if not rows:
        return
    groups = result["groups"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = list(rows)
    axes[0].barh(range(len(names)), [rows[n]["hr50"]["mean"] for n in names],
                 xerr=[rows[n]["hr50"]["pstdev"] for n in names], color="tab:blue")
    axes[0].set_yticks(range(len(names)), names, fontsize=8)
    axes[0].set_xlabel("HR@50 (mean ± std over seeds)")
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        axes[1].bar([g + i * width for g in range(len(groups))],
                    [rows[n]["by_frequency"][g]["hr50"] for g in groups], width, label=n)
    axes[1].set_xticks([g + width * (len(names) - 1) / 2 for g in range(len(groups))],
                       [f"{g} ({result['group_queries'][g]:,} queries)" for g in groups], fontsize=8)
    axes[1].set_xlabel("target item's training examples")
    axes[1].set_ylabel("HR@50")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"Epinions ({result['items']:,} items), split {result['split']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--split", default="leave_last_out", choices=("leave_last_out", "time"))
    parser.add_argument("--no-regimes", action="store_true", help="the main rows only")
    parser.add_argument("--regime-seeds", default=None, help="the regime rows on these seeds (default: --seeds)")
    parser.add_argument("--rows", default=",".join(MAIN), help="main: these rows, in this order (in_batch first)")
    parser.add_argument("--data-root", default=os.environ.get("DATA_ROOT", os.path.join("..", "shared", "data")))
    parser.add_argument("--render", action="store_true", help="the Markdown and plot again from the JSON")
    args = parser.parse_args()
    path = os.path.join(RESULTS, f"epinions_{args.split}")
    if args.render:
        with open(path + ".json", encoding="utf-8") as f:
            result = json.load(f)
        verdicts(result)
        write_results(os.path.basename(path), result, markdown(result))
        plot(result, path + ".png")
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.rows.split(",")
    unknown = sorted(set(names) - set(MAIN))
    if unknown or names[0] != "in_batch":
        raise SystemExit(f"--rows: unknown {unknown} or not in_batch first; choose from {list(MAIN)}")
    data = os.path.join(os.path.abspath(args.data_root), "epinions-2012")
    if not os.path.exists(os.path.join(data, "interactions.csv.gz")):
        raise SystemExit(f"no Epinions data in {data}: pass --data-root (the folder holding epinions-2012/)")
    started = [time.monotonic()]
    examples, clusters = prepare(f"epinions_{args.split}", ExampleGenConfig(
        source="generic", interactions=os.path.join(data, "interactions.csv.gz"),
        items=os.path.join(data, "items.csv.gz"), split=args.split))
    result, runs = previous_runs(path + ".json", args.split)
    result["seeds"] = sorted(set(result.get("seeds", [])) | set(seeds))

    def record(part: str, name: str, run: dict) -> None:
        runs.setdefault(name, []).append({k: run[k] for k in RUN_KEYS})
        result[part][name] = aggregate(runs[name])
        result["runs"] = runs
        result["groups"] = list(run["by_frequency"])
        result["group_queries"] = {g: v["queries"] for g, v in run["by_frequency"].items()}
        result["queries"] = sum(result["group_queries"].values())
        result["items"] = run["corpus_size"]
        verdicts(result)
        result["wall_seconds"] = result.get("wall_seconds", 0.0) + time.monotonic() - started[0]
        started[0] = time.monotonic()
        write_results(os.path.basename(path), result, markdown(result))
        plot(result, path + ".png")

    def done(part: str, name: str, seed: int) -> bool:
        """In the JSON already: a run of `runs`, or a seed of an older multi-seed row kept without its runs."""
        return (any(r["seed"] == seed for r in runs.get(name, []))
                or (name not in runs and seed in result[part].get(name, {}).get("seeds", [])))

    regime_seeds = seeds if args.regime_seeds is None else [int(s) for s in args.regime_seeds.split(",")]
    for seed in seeds:  # seeds outermost: an interrupted run leaves whole seeds
        tables = {"category": clusters}
        for name in names:
            spec = MAIN[name]
            if done("main", name, seed):
                continue
            if spec[1] == "behavioural" and "behavioural" not in tables:  # from this seed's in_batch model
                in_batch = _run("in_batch", MAIN["in_batch"], seed, examples, tables, args.split)  # reused if trained
                tables["behavioural"] = behavioural(in_batch["model_dir"], examples, f"epinions_{args.split}", seed)
            record("main", name, _run(name, spec, seed, examples, tables, args.split))
        if seed in regime_seeds and not args.no_regimes:
            for name, spec in REGIMES.items():
                if not done("regimes", name, seed):
                    record("regimes", name, _run(name, spec, seed, examples, tables, args.split))


def previous_runs(path: str, split: str) -> tuple[dict, dict]:
    """The results JSON of an earlier run of this split (empty if none) and its runs by row name. A one-seed
    row written before runs were kept is its own run; an older row of several seeds keeps its aggregate only."""
    result = {"split": split, "main": {}, "regimes": {}}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
    runs = result.get("runs", {})
    for part in ("main", "regimes"):
        for name, row in result.get(part, {}).items():
            if name not in runs and len(row["seeds"]) == 1:
                runs[name] = [{"seed": row["seeds"][0], **{m: row[m]["mean"] for m in METRICS},
                               "by_frequency": {g: {"queries": v["queries"],
                                                    **{f"hit_rate@{k}": v[f"hr{k}"] for k in KS}}
                                                for g, v in row["by_frequency"].items()},
                               "popularity": row["popularity"], "mass": row["mass"],
                               "examples_per_second": row["examples_per_second"]}]
    return result, runs

if __name__ == "__main__":
    main()
