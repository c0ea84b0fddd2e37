"""Closed-loop simulation: does cluster OOB reduce popularity bias when the model's recommendations become
its training data? (the paper's Table 3 claim, tested offline)

    python -m benchmarks.feedback_loop [--items 100000] [--users 20000] [--rounds 10] [--seeds 0,1,2]
        [--variants in_batch,oob,cluster_oob] [--logq none] [--epochs 3] [--min-impressions 10]
        [--warmup-rounds 10]

World: benchmarks/feedback_world.py (latent preferences, topics with a power-law size, a Zipf popularity
prior, a multinomial logit choice with a no-click option, item texts that name their topic). Round 0: for
`--warmup-rounds` rounds the active users are shown slates drawn from the popularity prior and choose (a
popularity-biased exposure log; the trainer's leave_last_out split needs users with two or more clicks, and
holds each user's last click out of training every round).
Each later round, per variant (each variant has its own log from round 0 on): the production steps run on
the log (example_gen leave_last_out -> trainer; LLM clusters of the item texts by item_embedder +
item_clusterer, made once per world), round 1 from scratch and every later round warm-started from the
previous round's model (trainer `warm_start_from`); the model retrieves the top `slate` items (exact search,
items the user consumed excluded) for each active user, who chooses at most one; the choices join the log.
The paper measured without logQ correction (`--logq none`, the default here).
Per round: Gini of the round's impressions and of all consumption so far, catalogue coverage, the top-100
items' share of impressions, share of items with >= `--min-impressions` impressions, click rate, mean true
utility of the chosen items, recall@slate against the oracle (highest true utility), Jaccard
homogenisation of users' lists, and the share of slate items nobody had clicked before the round (their
embedding rows never met a positive). Only the last round's examples and model stay on disk.
Writes benchmarks/results/feedback_loop.{json,md,png} for the default catalogue of 10^5 items and
feedback_loop_<items // 1000>k.{json,md,png} for any other size (a smaller world's results do not replace
the default's).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import shutil
import statistics
import time

import numpy as np

import llm_hardneg.components  # noqa: F401  (environment before TensorFlow)
from benchmarks.feedback_world import (
    World,
    WorldConfig,
    cluster_purity,
    gini,
    jaccard_homogenisation,
    slate_recall,
    top_k_excluding,
    top_share,
)
from benchmarks.paper_tables import RESULTS, WORK, write_results
from llm_hardneg.components.common.step import step_run
from llm_hardneg.components.example_gen import ExampleGenConfig, run_example_gen
from llm_hardneg.components.item_clusterer import ItemClustererConfig, run_item_clusterer
from llm_hardneg.components.item_embedder import ItemEmbedderConfig, run_item_embedder
from llm_hardneg.components.trainer import TrainerConfig, run_trainer

HISTORY = 20
FIGURES = ("top100_share", "share_min_impressions", "exposure_gini", "consumption_gini", "coverage", "click_rate",
           "chosen_utility", "recall_oracle", "jaccard", "unclicked_share")


class Log:
    """The interaction log of one loop: (user, item, round) of every click, and each item's click count."""

    def __init__(self, users: int, items: int):
        self.rows: list[tuple[int, int, int]] = []
        self.clicks = np.zeros(items, np.int64)
        self.consumed = [set() for _ in range(users)]
        self.recent: list[list[int]] = [[] for _ in range(users)]  # most recent first, up to HISTORY

    def add(self, users: np.ndarray, chosen: np.ndarray, round_: int) -> None:
        for u, i in zip(users.tolist(), chosen.tolist()):
            if i >= 0:
                self.rows.append((u, i, round_))
                self.clicks[i] += 1
                self.consumed[u].add(i)
                self.recent[u] = [i] + self.recent[u][:HISTORY - 1]

    def copy(self) -> Log:
        out = Log(len(self.consumed), len(self.clicks))
        out.rows = list(self.rows)
        out.clicks = self.clicks.copy()
        out.consumed = [set(s) for s in self.consumed]
        out.recent = [list(r) for r in self.recent]
        return out

    def write(self, path: str) -> None:
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["user_id", "item_id", "rating", "timestamp"])
            w.writerows((f"u{u}", f"i{i}", 5, r) for u, i, r in self.rows)


def round_metrics(world: World, users: np.ndarray, slates: np.ndarray, chosen: np.ndarray, log: Log,
                  rng: np.random.Generator, min_impressions: int) -> dict:
    c = world.config
    shown = np.bincount(slates.ravel(), minlength=c.items)
    oracle = world.oracle_top_k(users, c.slate, log.consumed)
    clicked = chosen >= 0
    utility = world.utility(users[clicked], chosen[clicked][:, None])[:, 0] if clicked.any() else np.zeros(1)
    return {"top100_share": top_share(shown, 100), "share_min_impressions": float((shown >= min_impressions).mean()),
            "exposure_gini": gini(shown), "consumption_gini": gini(log.clicks), "coverage": float((shown > 0).mean()),
            "click_rate": float(clicked.mean()), "chosen_utility": float(utility.mean()),
            "recall_oracle": slate_recall(slates, oracle),
            "jaccard": jaccard_homogenisation(slates, rng)}


def retrieve(model_dir: str, world: World, users: np.ndarray, log: Log, batch: int = 1024) -> np.ndarray:
    """[U, slate]: the model's top items per user (exact search over the catalogue, consumed items excluded)."""
    import tensorflow as tf

    query = tf.saved_model.load(os.path.join(model_dir, "query_model"))
    candidate = tf.saved_model.load(os.path.join(model_dir, "candidate_model"))
    ids = [f"i{i}" for i in range(world.config.items)]
    items = np.concatenate([candidate(tf.constant(ids[s:s + 8192]))["embedding"].numpy()
                            for s in range(0, len(ids), 8192)])
    k, out = world.config.slate, np.empty((len(users), world.config.slate), np.int64)
    for start in range(0, len(users), batch):
        rows = users[start:start + batch].tolist()
        history = [[f"i{i}" for i in log.recent[u]] + [""] * (HISTORY - len(log.recent[u])) for u in rows]
        q = query(tf.constant([f"u{u}" for u in rows]), tf.constant(history))["embedding"].numpy()
        out[start:start + len(rows)] = top_k_excluding(q @ items.T, users[start:start + batch], log.consumed, k)
    return out


def clusters_of(world: World, root: str, examples: str) -> tuple[str, float]:
    """LLM clusters of the world's item texts (once per world) and their purity against the true topics."""
    cache = os.path.join(WORK, "cache")
    embeddings, clusters = os.path.join(root, "embeddings"), os.path.join(root, "clusters")
    items = os.path.join(examples, "items", "*.parquet")
    with step_run("item_embedder", embeddings, "{}", [os.path.join(root, "items.csv")], cache) as run:
        if run.needed:
            run_item_embedder(ItemEmbedderConfig(), items, embeddings)
    config = ItemClustererConfig()
    with step_run("item_clusterer", clusters, json.dumps(dataclasses.asdict(config)), [embeddings], cache) as run:
        if run.needed:
            run_item_clusterer(config, embeddings, items, clusters)
    from llm_hardneg.components.item_clusterer.pipeline import read_cluster_table

    table = read_cluster_table(os.path.join(clusters, "llm"))
    assigned = np.asarray([table[f"i{i}"] for i in range(world.config.items)], np.int64)
    return clusters, cluster_purity(world.item_topic, assigned)


def loop(world: World, variant: str, logq: str, rounds: int, epochs: int, seed: int, round0: Log,
         exposure0: tuple[np.ndarray, np.ndarray, np.ndarray], root: str, min_impressions: int,
         first_round: int) -> list[dict]:
    rng = np.random.default_rng([seed, 1])
    log = round0.copy()
    per_round = [{"round": 0, **round_metrics(world, *exposure0, log, rng, min_impressions)}]
    clusters, previous = None, ""
    for r in range(1, rounds + 1):
        started = time.monotonic()
        work = os.path.join(root, f"{variant}-{logq}", f"round{r}")
        os.makedirs(work, exist_ok=True)
        log.write(os.path.join(work, "interactions.csv"))
        examples = os.path.join(work, "examples")
        run_example_gen(ExampleGenConfig(source="generic", interactions=os.path.join(work, "interactions.csv"),
                                         items=os.path.join(root, "items.csv"), split="leave_last_out",
                                         history_length=HISTORY), examples)
        if clusters is None:
            clusters, purity = clusters_of(world, root, examples)
        config = TrainerConfig(strategy=variant, logq_correction=logq, epochs=epochs, seed=seed,
                               warm_start_from=previous)
        model = os.path.join(work, "model")
        summary = run_trainer(config, examples, clusters, model)
        if previous:  # the previous round's examples and model (about 280 MB at 10^5 items) are no longer needed
            shutil.rmtree(os.path.dirname(previous))
        previous = model
        users = np.sort(rng.choice(world.config.users, int(world.config.active_share * world.config.users),
                                   replace=False))
        slates = retrieve(model, world, users, log)
        chosen = world.choose(rng, users, slates)
        # slate items nobody had clicked before this round: their id embeddings never met a positive
        unclicked = float((log.clicks[slates] == 0).mean())
        log.add(users, chosen, first_round + r)
        metrics = round_metrics(world, users, slates, chosen, log, rng, min_impressions)
        per_round.append({"round": r, **metrics, "unclicked_share": unclicked, "log_rows": len(log.rows),
                          "cluster_purity": purity,
                          "train_seconds": summary["train_seconds"], "round_seconds": time.monotonic() - started})
        print(f"[feedback_loop] {variant} logq={logq} seed {seed} round {r}: top-100 share "
              f"{metrics['top100_share']:.3f}, exposure Gini {metrics['exposure_gini']:.3f}, click rate "
              f"{metrics['click_rate']:.3f}, recall vs oracle {metrics['recall_oracle']:.3f} "
              f"({per_round[-1]['round_seconds']:.0f}s)", flush=True)
    return per_round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default="in_batch,oob,cluster_oob")
    parser.add_argument("--logq", default="none", help="the trainer's logq_correction (the paper: none)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--min-impressions", type=int, default=10)
    parser.add_argument("--warmup-rounds", type=int, default=10, help="popularity-exposure rounds that make round 0")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    name = results_name(args.items)
    path = os.path.join(RESULTS, f"{name}.json")
    previous = json.load(open(path, encoding="utf-8"))["runs"] if os.path.exists(path) else []
    # runs of other seeds or corrections in the same world sizes and rounds are kept (runs in separate sessions)
    runs = [r for r in previous if (r["seed"] not in seeds or r["logq"] != args.logq)
            and (r["world"]["items"], r["world"]["users"], len(r["rounds"]) - 1) == (args.items, args.users,
                                                                                      args.rounds)]
    for seed in seeds:
        world = World(WorldConfig(items=args.items, users=args.users, seed=seed))
        c = world.config
        root = os.path.join(WORK, "feedback", f"w{c.items}-u{c.users}-s{seed}")
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, "items.csv"), "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["item_id", "text", "categories"])
            w.writerows((f"i{i}", text, "") for i, text in enumerate(world.texts))
        rng = np.random.default_rng([seed, 0])
        round0 = Log(c.users, c.items)
        for t in range(args.warmup_rounds):
            users0 = np.sort(rng.choice(c.users, int(c.active_share * c.users), replace=False))
            slates0 = world.popularity_slates(rng, users0)
            chosen0 = world.choose(rng, users0, slates0)
            round0.add(users0, chosen0, t)
        # round 0's figures are those of its last popularity round (one round's impressions, as every round's)
        for variant in args.variants.split(","):
            runs.append({"seed": seed, "variant": variant, "logq": args.logq, "world": dataclasses.asdict(c),
                         "rounds": loop(world, variant, args.logq, args.rounds, args.epochs, seed, round0,
                                        (users0, slates0, chosen0), root, args.min_impressions,
                                        args.warmup_rounds)})
            result = {"runs": runs, "min_impressions": args.min_impressions, "epochs": args.epochs,
                      "warmup_rounds": args.warmup_rounds}
            write_results(name, result, markdown(result))
            plot(result, name)


def results_name(items: int) -> str:
    """The results files' name: 'feedback_loop' for the default catalogue, 'feedback_loop_20k' for 20,000 items."""
    return "feedback_loop" if items == 100_000 else f"feedback_loop_{items // 1000}k"


def markdown(result: dict) -> str:
    runs = result["runs"]
    world = runs[0]["world"]
    command = (f"python -m benchmarks.feedback_loop --items {world['items']} --users {world['users']} "
               f"--warmup-rounds {result['warmup_rounds']} --epochs {result['epochs']}")
    lines = [f"Feedback-loop simulation (`{command}`): {world['items']:,} items, "
             f"{world['users']:,} users ({world['active_share']:.0%} active a round), {world['topics']} topics, "
             f"slate {world['slate']}, multinomial logit with a no-click option (utility {world['no_click_utility']}),"
             f" trainer {result['epochs']} epochs a round (logQ correction: 'none' is the paper's setting, 'mixture' "
             "ours). Round 0: popularity-"
             "biased exposure. Figures of the last round, mean ± std over seeds; top-100 share and share of items "
             f"with >= {result['min_impressions']} impressions are the paper's Table 3 figures (of the round's "
             "impressions).", "",
             "| variant | logQ | seeds | rounds | top-100 share | items >= N impressions | exposure Gini "
             "| consumption Gini | coverage | click rate | recall vs oracle | Jaccard | slate items never clicked "
             "| LLM cluster purity |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for variant, logq in dict.fromkeys((r["variant"], r["logq"]) for r in runs):
        last = [r["rounds"][-1] for r in runs if (r["variant"], r["logq"]) == (variant, logq)]

        def cell(key: str, rows: list[dict] = last) -> str:
            values = [row[key] for row in rows]
            return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}"

        lines.append(f"| {variant} | {logq} | {len(last)} | {last[0]['round']} | {cell('top100_share')} | "
                     f"{cell('share_min_impressions')} | {cell('exposure_gini')} | {cell('consumption_gini')} | "
                     f"{cell('coverage')} | {cell('click_rate')} | {cell('recall_oracle')} | {cell('jaccard')} | "
                     f"{cell('unclicked_share') if 'unclicked_share' in last[0] else '-'} | "
                     f"{cell('cluster_purity') if 'cluster_purity' in last[0] else '-'} |")
    first = list({r["seed"]: r["rounds"][0] for r in runs}.values())  # the same for every variant of a seed
    lines.append(f"| round 0 (popularity exposure) | - | {len(first)} | 0 | "
                 f"{statistics.mean(r['top100_share'] for r in first):.3f} | "
                 f"{statistics.mean(r['share_min_impressions'] for r in first):.3f} | "
                 f"{statistics.mean(r['exposure_gini'] for r in first):.3f} | - | "
                 f"{statistics.mean(r['coverage'] for r in first):.3f} | "
                 f"{statistics.mean(r['click_rate'] for r in first):.3f} | "
                 f"{statistics.mean(r['recall_oracle'] for r in first):.3f} | "
                 f"{statistics.mean(r['jaccard'] for r in first):.3f} | - | - |")
    lines += ["", f"Per-round curves: benchmarks/results/{results_name(world['items'])}.png."]
    return "\n".join(lines) + "\n"


def plot(result: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("top100_share", "share_min_impressions", "exposure_gini", "coverage", "click_rate", "recall_oracle",
            "unclicked_share", "jaccard")
    fig, axes = plt.subplots(2, 4, figsize=(18, 7))
    colours = {"in_batch": "tab:blue", "oob": "tab:green", "cluster_oob": "tab:red"}
    for ax, key in zip(axes.ravel(), keys):
        for variant, logq in dict.fromkeys((r["variant"], r["logq"]) for r in result["runs"]):
            runs = [r["rounds"] for r in result["runs"] if (r["variant"], r["logq"]) == (variant, logq)]
            rounds = [p["round"] for p in runs[0] if key in p]
            if not rounds:  # a figure added after these runs were made
                continue
            values = np.asarray([[p[key] for p in run if key in p] for run in runs])
            mean, std = values.mean(axis=0), values.std(axis=0)
            ax.plot(rounds, mean, marker="o" if logq == "none" else "s", color=colours.get(variant),
                    linestyle="-" if logq == "none" else "--", label=f"{variant}, logQ {logq} ({len(runs)} seeds)")
            ax.fill_between(rounds, mean - std, mean + std, color=colours.get(variant), alpha=0.2)
        ax.set(title=key.replace("_", " ").replace("share min impressions", f">= {result['min_impressions']} "
                                                                       "impressions (share of items)"), xlabel="round")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, f"{name}.png"), dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
