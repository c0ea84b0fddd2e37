"""The paper's Tables 1-3 on our data, plus cluster granularity, in one command.

    python -m benchmarks.paper_tables [--seeds 0,1,2] [--epochs 3] [--optimizer adam] [--ml1m-dir ../shared/data/ml-1m]
                                      [--amazon-dir ../shared/data/amazon-gift_cards-2018]

Table 1: in_batch, oob, cluster_oob with genre/category clusters and with LLM (MiniLM k-means)
  clusters, HR@50/@100 mean and std over seeds, gain over in_batch; on reconstructed ML-1M, the
  exact ratings of users 1-2999, and Amazon Gift Cards (small extra row).
Table 2: training examples/s per strategy (same batch, same number of negatives), the step-time
  ratio cluster_oob / oob, and the share of a step spent in pool sampling + update.
Table 3: popularity figures of the eval top-100 lists (reconstructed ML-1M, first seed).
Granularity: HR@50 and the false-negative rate of cluster draws for several numbers of LLM clusters.
Every strategy gets the same towers and optimisation. Data steps are cached under
benchmarks/work/ (fingerprinted), so a rerun only trains. Writes benchmarks/results/paper_tables.*.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import shutil
import statistics
import time

import numpy as np

import llm_hardneg.components  # noqa: F401
from llm_hardneg.components.common.step import step_run
from llm_hardneg.components.evaluator import EvaluatorConfig, run_evaluator
from llm_hardneg.components.example_gen import ExampleGenConfig, run_example_gen
from llm_hardneg.components.item_clusterer import ItemClustererConfig, run_item_clusterer
from llm_hardneg.components.item_embedder import ItemEmbedderConfig, run_item_embedder
from llm_hardneg.components.trainer import TrainerConfig, run_trainer
from llm_hardneg.components.trainer.run import checkpoint_config_changes, config_changes

WORK = os.path.join("benchmarks", "work")
RESULTS = os.path.join("benchmarks", "results")
# the pool sharing these tables were measured with (the default before shared draws), so a rerun reproduces them
RECORDED_SHARING = {"negative_sharing": "per_example"}
VARIANTS = (("in_batch", "category"), ("oob", "category"), ("cluster_oob", "category"), ("cluster_oob", "llm"))
NO_CORRECTION_VARIANTS = (("in_batch", "llm"), ("oob", "llm"), ("cluster_oob", "llm"))


def prepare(name: str, example_gen: ExampleGenConfig, clusters: int = 0) -> tuple[str, str]:
    """example_gen -> item_embedder -> item_clusterer for one data set, cached by fingerprint."""
    root, cache = os.path.join(WORK, name), os.path.join(WORK, "cache")
    examples, embeddings = os.path.join(root, "examples"), os.path.join(root, "embeddings")
    cluster_dir = os.path.join(root, f"clusters_{clusters or 'auto'}")
    eg_json = json.dumps(dataclasses.asdict(example_gen))
    with step_run("example_gen", examples, eg_json, [], cache) as run:
        if run.needed:
            run_example_gen(example_gen, examples)
    with step_run("item_embedder", embeddings, "{}", [examples], cache) as run:
        if run.needed:
            run_item_embedder(ItemEmbedderConfig(), os.path.join(examples, "items", "*.parquet"), embeddings)
    config = ItemClustererConfig(num_clusters=clusters)
    with step_run("item_clusterer", cluster_dir, json.dumps(dataclasses.asdict(config)), [examples, embeddings],
                  cache) as run:
        if run.needed:
            run_item_clusterer(config, embeddings, os.path.join(examples, "items", "*.parquet"), cluster_dir)
    return examples, cluster_dir


def _previous_summary(out: str, config: TrainerConfig) -> dict | None:
    """The train summary of a finished run of exactly this config in `out` (benchmarks resume), else None."""
    path = os.path.join(out, "train_summary.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        summary = json.load(f)
    return None if config_changes(summary["config"], config) else summary


def _train(config: TrainerConfig, examples: str, clusters: str, out: str) -> dict:
    """run_trainer, resuming a killed run of the same config; an earlier config's checkpoints are removed."""
    if checkpoint_config_changes(out, config):
        print(f"[benchmark] removing the checkpoints of an earlier config in {out}", flush=True)
        shutil.rmtree(out)
    return run_trainer(config, examples, clusters, out)


def train_and_evaluate(config: TrainerConfig, examples: str, clusters: str, tag: str,
                       ks: tuple[int, ...] = (50, 100)) -> dict:
    """Trains (or reuses a finished run of the same config) and evaluates; `hr<k>`/`ndcg<k>` for every k."""
    out = os.path.join(WORK, "models", tag)
    summary = _previous_summary(out, config)
    metrics_path = os.path.join(out, "eval", "metrics.json")
    metrics = None
    if summary is not None and os.path.exists(metrics_path):
        with open(metrics_path, encoding="utf-8") as f:
            metrics = json.load(f)
        if all(f"ndcg@{k}" in metrics for k in ks) and "by_target_frequency" in metrics:
            print(f"[benchmark] {tag}: reusing the finished run in {out}", flush=True)
        else:
            metrics = run_evaluator(EvaluatorConfig(ks=ks), out, examples, os.path.join(out, "eval"),
                                    config.history_length)
    else:
        summary = _train(config, examples, clusters, out)
        metrics = run_evaluator(EvaluatorConfig(ks=ks), out, examples, os.path.join(out, "eval"),
                                config.history_length)
    final = summary["final_metrics"]
    speeds = summary["examples_per_second"]  # empty when a resumed run had no epoch left to train
    return {**{f"hr{k}": metrics[f"hit_rate@{k}"] for k in ks}, **{f"ndcg{k}": metrics[f"ndcg@{k}"] for k in ks},
            "model_dir": out, "popularity": metrics["popularity"], "corpus_size": metrics["corpus_size"],
            "by_frequency": metrics.get("by_target_frequency"),
            "examples_per_second": statistics.mean(speeds) if speeds else None,
            "negative_masked_rate": final.get("negative_masked_rate"),
            "mass": {k[len("mass_"):]: v for k, v in final.items() if k.startswith("mass_") and v}}


def table1(datasets: dict, seeds: list[int], epochs: int, variants=VARIANTS, logq_correction: str = "mixture",
           tag: str = "", optimizer: str = TrainerConfig.optimizer) -> list[dict]:
    """Every (strategy, cluster source) of `variants` on every data set, over seeds; gain over in_batch.
    Mass shares: the share of the negatives' softmax mass per source in the last epoch, mean over seeds."""
    rows = []
    for name, (examples, clusters, overrides) in datasets.items():
        for strategy, source in variants:
            runs = []
            for seed in seeds:
                config = TrainerConfig(**{"strategy": strategy, "cluster_source": source, "epochs": epochs,
                                          "seed": seed, "logq_correction": logq_correction, "optimizer": optimizer,
                                          **RECORDED_SHARING, **overrides})
                runs.append(train_and_evaluate(config, examples, clusters,
                                               f"{name}-{strategy}-{source}{tag}-{seed}"))
            rows.append({"dataset": name, "strategy": strategy, "clusters": source, "runs": runs,
                         "mass": {s: statistics.mean(r["mass"].get(s, 0.0) for r in runs) for s in runs[0]["mass"]},
                         **{f"{m}_{f.__name__}": f([r[m] for r in runs]) for m in ("hr50", "hr100")
                            for f in (statistics.mean, statistics.pstdev)}})
    for row in rows:
        base = next(r for r in rows if r["dataset"] == row["dataset"] and r["strategy"] == "in_batch")
        row["gain_hr50"] = row["hr50_mean"] / base["hr50_mean"] - 1
        row["gain_hr100"] = row["hr100_mean"] / base["hr100_mean"] - 1
    return rows


def mass_cell(mass: dict) -> str:
    """'in-batch 62% / random 3% / cluster 35%' from a {source: share} dict."""
    names = {"in_batch": "in-batch", "random": "random", "cluster": "cluster", "edis": "EDIS"}
    return " / ".join(f"{names[s]} {100 * v:.0f}%" for s, v in mass.items()) if mass else "-"


def pool_share(config: TrainerConfig, examples: str, clusters: str, step_seconds: float) -> float:
    """Seconds of pool sampling + update (+ the correction's counts) per step, as a share of the whole step."""
    import tensorflow as tf

    from llm_hardneg.components.trainer.data import load_catalogue
    from llm_hardneg.components.trainer.model import TwoTowerModel

    catalogue = load_catalogue(os.path.join(examples, "items"), os.path.join(clusters, config.cluster_source))
    model = TwoTowerModel(config, catalogue, ["u"])
    model.preload_pool(catalogue)
    rng = np.random.default_rng(0)
    index = tf.constant(rng.integers(2, len(catalogue.item_ids) + 2, config.batch_size), tf.int64)
    cluster = tf.gather(model.items.cluster_of_index, index)
    return pool_seconds(model, [(index, cluster)], steps=200, correction=True) / step_seconds


def pool_seconds(model, batches: list, steps: int = 40, correction: bool = False) -> float:
    """Median seconds of one step's pool work on a TwoTowerModel: draws and update (and, with
    `correction`, the logQ correction's pool lookups), cycling over batches of (index, cluster)."""
    import tensorflow as tf

    @tf.function
    def pool_ops(index, cluster):
        drawn = model._draw({"label": tf.ones_like(index, tf.float32)}, cluster)  # per example or shared
        if correction:
            model._log_counts(index, cluster, drawn)
        model.pool.update(index, cluster, {"item_index": index})
        return drawn["item_index"]

    pool_ops(*batches[0])
    times = []
    for i in range(steps):
        started = time.perf_counter()
        pool_ops(*batches[i % len(batches)]).numpy()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def table2(examples: str, clusters: str) -> dict:
    rows = {}
    for strategy in ("in_batch", "oob", "cluster_oob"):
        config = TrainerConfig(strategy=strategy, cluster_source="llm", epochs=2, seed=0, **RECORDED_SHARING)
        out = os.path.join(WORK, "models", f"throughput2-{strategy}")
        summary = _previous_summary(out, config) or _train(config, examples, clusters, out)
        eps = summary["examples_per_second"][-1]  # the second epoch: no tracing, steady state
        rows[strategy] = {"examples_per_second": eps, "step_ms": 1000 * config.batch_size / eps}
        if strategy != "in_batch":
            rows[strategy]["pool_share_of_step"] = pool_share(config, examples, clusters,
                                                              config.batch_size / eps)
    rows["step_time_ratio_cluster_oob_over_oob"] = rows["cluster_oob"]["step_ms"] / rows["oob"]["step_ms"]
    return rows


def false_negative_rate(examples: str, clusters: str, draws: int = 15, seed: int = 0,
                        random_draws: bool = False) -> float:
    """Share of uniform same-cluster draws (as the pool makes them) that are positives of the
    same user (train or eval period): cluster draws that are not really negatives. With
    random_draws, the draws are uniform over the whole catalogue instead (the oob baseline)."""
    cache = os.path.join(clusters, f"false_negative_rate{'_random' if random_draws else ''}.json")
    if os.path.exists(cache):
        with open(cache, encoding="utf-8") as f:
            return json.load(f)["rate"]
    import tensorflow as tf

    from llm_hardneg.components.item_clusterer.pipeline import read_cluster_table

    table = read_cluster_table(clusters)
    members: dict[int, list[str]] = {}
    for item, c in table.items():
        members.setdefault(c, []).append(item)
    positives: dict[str, set] = {}
    train_pairs = []
    for split in ("train", "eval"):
        for path in sorted(glob.glob(os.path.join(examples, split, "*.tfrecord"))):
            for record in tf.data.TFRecordDataset(path).batch(4096):
                parsed = tf.io.parse_example(record, {"user_id": tf.io.FixedLenFeature([], tf.string),
                                                      "item_id": tf.io.FixedLenFeature([], tf.string),
                                                      "label": tf.io.FixedLenFeature([], tf.int64)})
                for u, i, label in zip(parsed["user_id"].numpy(), parsed["item_id"].numpy(), parsed["label"].numpy()):
                    if label:
                        positives.setdefault(u.decode(), set()).add(i.decode())
                        if split == "train":
                            train_pairs.append((u.decode(), i.decode()))
    rng = np.random.default_rng(seed)
    sample = [train_pairs[j] for j in rng.choice(len(train_pairs), size=min(50_000, len(train_pairs)), replace=False)]
    hits = total = 0
    everything = list(table)
    for user, item in sample:
        pool = everything if random_draws else members[table[item]]
        for drawn in rng.choice(pool, size=draws):
            if drawn != item:
                total += 1
                hits += drawn in positives[user]
    rate = hits / max(total, 1)
    with open(cache, "w", encoding="utf-8") as f:
        json.dump({"rate": rate, "draws": total}, f)
    return rate


def granularity(data_dir: str, counts: list[int], epochs: int, optimizer: str = TrainerConfig.optimizer) -> list[dict]:
    rows = []
    for c in counts:
        examples, clusters = prepare("ml1m_reconstructed", ExampleGenConfig.movielens(data_dir), clusters=c)
        config = TrainerConfig(strategy="cluster_oob", cluster_source="llm", epochs=epochs, seed=0, optimizer=optimizer,
                               **RECORDED_SHARING)
        result = train_and_evaluate(config, examples, clusters, f"granularity-{c}")
        rows.append({"clusters": c, "hr50": result["hr50"], "hr100": result["hr100"],
                     "false_negative_rate": false_negative_rate(examples, os.path.join(clusters, "llm"))})
    return rows


def plots(result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r["dataset"] for r in result["table1"]})
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.5))
    for ax, name in zip(np.atleast_1d(axes), names):
        rows = [r for r in result["table1"] if r["dataset"] == name]
        labels = [f"{r['strategy']}\n({r['clusters']})" if r["strategy"] == "cluster_oob" else r["strategy"]
                  for r in rows]
        ax.bar(labels, [r["hr50_mean"] for r in rows], yerr=[r["hr50_pstdev"] for r in rows], capsize=4)
        low = min(r["hr50_mean"] for r in rows)
        ax.set_ylim(low * 0.95, max(r["hr50_mean"] for r in rows) * 1.02)
        ax.set_title(name)
        ax.set_ylabel("HitRate@50")
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "paper_table1.png"), dpi=100)
    plt.close(fig)
    if result.get("granularity"):
        g = result["granularity"]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([r["clusters"] for r in g], [r["hr50"] for r in g], "o-", label="HR@50")
        ax.set_xscale("log")
        ax.set_xlabel("LLM clusters (k-means)")
        ax.set_ylabel("HitRate@50")
        twin = ax.twinx()
        twin.plot([r["clusters"] for r in g], [r["false_negative_rate"] for r in g], "s--", color="C1",
                  label="false-negative rate of cluster draws")
        twin.set_ylabel("false-negative rate")
        fig.legend(loc="upper left", bbox_to_anchor=(0.12, 0.97), fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(RESULTS, "paper_granularity.png"), dpi=100)
        plt.close(fig)


def _hr_table(rows: list[dict]) -> list[str]:
    lines = ["| data set | strategy | clusters | HR@50 | HR@100 | gain HR@50 | gain HR@100 | softmax mass |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        clusters = r["clusters"] if r["strategy"] == "cluster_oob" else "-"
        lines.append(f"| {r['dataset']} | {r['strategy']} | {clusters} | "
                     f"{r['hr50_mean']:.4f} ± {r['hr50_pstdev']:.4f} | "
                     f"{r['hr100_mean']:.4f} ± {r['hr100_pstdev']:.4f} | "
                     f"{100 * r['gain_hr50']:+.1f}% | {100 * r['gain_hr100']:+.1f}% | {mass_cell(r['mass'])} |")
    return lines


def _previous(key: str) -> dict:
    """A part of the previous paper_tables results (kept when a run skips it), marked as such."""
    with open(os.path.join(RESULTS, "paper_tables.json"), encoding="utf-8") as f:
        return {**json.load(f)[key], "kept_from_previous_results": True}


def write_results(name: str, result: dict, text: str) -> None:
    """benchmarks/results/<name>.json and .md (and the table on stdout)."""
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{name}.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(RESULTS, f"{name}.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(text, flush=True)


def markdown(result: dict) -> str:
    lines = [f"Seeds {result['seeds']}; ML-1M: {result['epochs']} epochs, batch 1024, 16 pool negatives "
             "(random:cluster 1:15), 64-d towers with position-pooled history, temperature 0.05, "
             f"optimizer {result.get('optimizer', 'adam')}; "
             "Amazon Gift Cards: batch 128, 10 epochs. Loss: every negative column logQ-corrected by the log of "
             "its expected count over all sources (`logq_correction mixture`, losses.py). The cluster source "
             "gives both the cluster-id features and the pool segments. Softmax mass: each source's share of "
             "the negatives' softmax mass, last epoch, mean over seeds.", "",
             "**Table 1: HitRate (mean ± std over seeds), gain over in_batch**", ""]
    lines += _hr_table(result["table1"])
    if result.get("no_correction"):
        lines += ["", "**Table 1b: no logQ correction anywhere** (raw logits for every source; reconstructed ML-1M, "
                      "LLM clusters as features for every strategy)", ""]
        lines += _hr_table(result["no_correction"])
    t2 = result["table2"]
    lines += ["", "**Table 2: training throughput (reconstructed ML-1M, batch 1024, 16 pool negatives, 2 CPU cores; "
                  "second epoch of a 2-epoch run)**"
              + (" — kept from the previous results (the earlier loss; not re-measured in this run)"
                 if t2.get("kept_from_previous_results") else ""),
              "", "| strategy | examples/s | step (ms) | pool sampling + update + logQ counts, share of step |",
              "|---|---|---|---|"]
    for s in ("in_batch", "oob", "cluster_oob"):
        share = t2[s].get("pool_share_of_step")
        lines.append(f"| {s} | {t2[s]['examples_per_second']:,.0f} | {t2[s]['step_ms']:.1f} | "
                     f"{'-' if share is None else f'{100 * share:.1f}%'} |")
    lines += ["", f"Step-time ratio cluster_oob / oob: **{t2['step_time_ratio_cluster_oob_over_oob']:.3f}**"]
    lines += ["", "**Table 3: popularity of the eval top-100 lists (reconstructed ML-1M, first seed)**", "",
              "| strategy | clusters | top-100 popular items' share of slots | distinct items | "
              "catalogue share recommended >= 1x | >= 10x | >= 100x |", "|---|---|---|---|---|---|---|"]
    for r in result["table1"]:
        if r["dataset"] != "ml1m_reconstructed":
            continue
        p = r["runs"][0]["popularity"]
        lines.append(f"| {r['strategy']} | {r['clusters'] if r['strategy'] == 'cluster_oob' else '-'} | "
                     f"{100 * p['top100_popular_share_of_top100']:.1f}% | {p['distinct_items_in_top100']:,} | "
                     f"{100 * p['share_of_catalogue_recommended_at_least_1x']:.1f}% | "
                     f"{100 * p['share_of_catalogue_recommended_at_least_10x']:.1f}% | "
                     f"{100 * p['share_of_catalogue_recommended_at_least_100x']:.1f}% |")
    if result.get("granularity"):
        lines += ["", "**Cluster granularity (cluster_oob, LLM clusters, reconstructed ML-1M, seed 0)**", "",
                  "| clusters | HR@50 | HR@100 | false-negative rate of cluster draws |", "|---|---|---|---|"]
        lines += [f"| {g['clusters']} | {g['hr50']:.4f} | {g['hr100']:.4f} | {100 * g['false_negative_rate']:.2f}% |"
                  for g in result["granularity"]]
        lines += ["", f"False-negative rate of uniform draws over the whole catalogue (what `oob` draws): "
                      f"{100 * result['false_negative_rate_random_draws']:.2f}%."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=TrainerConfig.epochs)
    parser.add_argument("--ml1m-dir", default=os.environ.get("ML1M_DIR", os.path.join("..", "shared", "data", "ml-1m")))
    parser.add_argument("--amazon-dir", default=os.environ.get(
        "AMAZON_DIR", os.path.join("..", "shared", "data", "amazon-gift_cards-2018")))
    parser.add_argument("--granularity", default="10,31,62,125,250", help="cluster counts; '' skips it")
    parser.add_argument("--optimizer", default=TrainerConfig.optimizer,
                        help="trainer optimizer of every run ('adam': the runs made before lazy_adam was the default)")
    parser.add_argument("--throughput", choices=("yes", "no"), default="yes",
                        help="no: keep Table 2 from the previous results file")
    parser.add_argument("--datasets", default="ml1m_reconstructed,ml1m_exact_users_1-2999,amazon_gift_cards",
                        help="Table 1 data sets (ml1m_reconstructed is always prepared: Tables 1b, 2 and 3 use it)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    ml = os.path.abspath(args.ml1m_dir)
    amazon = os.path.abspath(args.amazon_dir)
    recon = prepare("ml1m_reconstructed", ExampleGenConfig.movielens(ml))
    available = {
        "ml1m_reconstructed": lambda: (*recon, {}),
        "ml1m_exact_users_1-2999": lambda: (*prepare("ml1m_exact_users_1-2999", ExampleGenConfig.movielens(
            ml, interactions=os.path.join(ml, "ratings.users_0001-2999.dat"))), {}),
        "amazon_gift_cards": lambda: (*prepare("amazon_gift_cards", ExampleGenConfig(
            source="amazon", interactions=os.path.join(amazon, "Gift_Cards_5.json.gz"),
            items=os.path.join(amazon, "meta_Gift_Cards.json.gz"))), {"batch_size": 128, "epochs": 10}),
    }
    unknown = sorted(set(args.datasets.split(",")) - set(available))
    if unknown:
        raise SystemExit(f"unknown data sets {unknown}: choose from {sorted(available)}")
    datasets = {name: available[name]() for name in args.datasets.split(",")}
    started = time.monotonic()
    result = {"seeds": seeds, "epochs": args.epochs, "optimizer": args.optimizer}
    # most telling first: a run cut short keeps its finished trainings (each is reused on the next run)
    first = {"ml1m_reconstructed": datasets["ml1m_reconstructed"]}
    table1(first, seeds, args.epochs, optimizer=args.optimizer)
    result["no_correction"] = table1(first, seeds, args.epochs, variants=NO_CORRECTION_VARIANTS,
                                     logq_correction="none", tag="-nologq", optimizer=args.optimizer)
    result["table2"] = table2(*recon) if args.throughput == "yes" else _previous("table2")
    result["table1"] = table1(datasets, seeds, args.epochs, optimizer=args.optimizer)
    counts = [int(c) for c in args.granularity.split(",") if c]
    result["granularity"] = granularity(ml, counts, args.epochs, args.optimizer) if counts else []
    result["false_negative_rate_random_draws"] = false_negative_rate(recon[0], os.path.join(recon[1], "llm"),
                                                                     random_draws=True)
    result["wall_seconds"] = time.monotonic() - started
    write_results("paper_tables", result, markdown(result))
    plots(result)


if __name__ == "__main__":
    main()
