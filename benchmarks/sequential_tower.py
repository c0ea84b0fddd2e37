"""The transformer (SASRec-style) query tower against the pooled one, and beside a peer library's SASRec.

    python -m benchmarks.sequential_tower [--datasets ml1m_exact,ml1m,videogames,cds] [--towers pooled,transformer]
        [--strategies in_batch,oob,cluster_oob] [--seeds 0,1,2] [--epochs 2,4,8] [--history 200]
        [--data-root ../shared/data]

Protocol: leave_last_out (each user's last positive to evaluation), full ranking over the catalogue
with each user's training items excluded (`--evaluator.exclude_seen`, as RecBole, RecTools and
SASRec's own evaluation do), HR@10, NDCG@10, HR@50.
- ml1m_exact: ML-1M users 1-2999 (`ratings.users_0001-2999.dat`, exact timestamps); ml1m: the
  reconstructed file (all 6,040 users, some timestamps imputed); both with LLM clusters.
- videogames, cds: Amazon 2014 sets (no text): behavioural clusters per seed, from the same first
  in_batch pass as benchmarks.larger_catalogues and benchmarks.negative_sharing (their runs are reused).
Pooled tower: the trainer defaults (history 20, position pooling). Transformer tower: history
`--history` (example_gen writes that many history items), 2 blocks, 1 head, dropout 0.2, as SASRec
on ML-1M; 'transformer' trains on the per-interaction examples (one history read per target),
'transformer_seq' on example_gen's sequence records (`sequence_training`: every target of a chunk in
one pass, 64 chunks a step; `--mask-same-user`: a target's in-batch negatives leave out its own user's
other targets). Each model is evaluated after every epoch count in `--epochs` (one run, resumed from its
checkpoint), so the table holds HR@10 against cumulative training wall time.
`--early-stopping P`: each run trains up to the last of `--epochs` with the trainer's early stopping
(patience P) on a validation fold of about `--validation-users` users' last training positive (example_gen
`validation_share`; the peer holds out 2,048), and the best validation epoch is evaluated.
The peer (RecTools SASRec) runs from benchmarks/peers/rectools_sasrec.py on the same split files; its
results file, when present, is read into the table.
Writes benchmarks/results/sequential_tower.{json,md,png} after every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import statistics
from typing import NamedTuple

import llm_hardneg.components  # noqa: F401  (environment before TensorFlow)
from benchmarks.larger_catalogues import AMAZON, behavioural
from benchmarks.paper_tables import RESULTS, WORK, prepare, train_and_evaluate, write_results
from llm_hardneg.components.evaluator import EvaluatorConfig, run_evaluator
from llm_hardneg.components.example_gen import ExampleGenConfig
from llm_hardneg.components.trainer import TrainerConfig, run_trainer

KS = (10, 50)
METRICS = ("hr10", "ndcg10", "hr50")
TOWERS = {"pooled": {}, "transformer": {"query_tower": "transformer"},  # per-interaction examples
          "transformer_seq": {"query_tower": "transformer", "sequence_training": True}}  # sequence records
# How a query and an item are scored: ours (cosine / 0.05 against an MLP candidate tower), the candidate tower
# tied to the input embeddings, and SASRec's scoring (tied, raw dot product).
SCORINGS = {"cosine_mlp": {}, "cosine_tied": {"candidate_tower": "embedding"},
            "dot_tied": {"candidate_tower": "embedding", "similarity": "dot", "temperature": 1.0}}
COLOURS = {"pooled": "tab:blue", "transformer": "tab:orange", "transformer_seq": "tab:red"}
PEER_RESULTS = os.path.join(RESULTS, "peer_rectools_sasrec.json")


def example_config(name: str, root: str, history: int, ties: str = "exclude",
                   split: str = "leave_last_out", validation_share: float = 0.0) -> ExampleGenConfig:
    ml = os.path.join(root, "ml-1m")
    common = {"split": split, "history_length": history, "sequence_length": history, "history_ties": ties,
              "validation_share": validation_share}
    if name == "ml1m_exact":
        return ExampleGenConfig.movielens(ml, interactions=os.path.join(ml, "ratings.users_0001-2999.dat"), **common)
    if name == "ml1m":
        return ExampleGenConfig.movielens(ml, **common)
    folder = AMAZON[f"amazon_{name}_2014"]
    return ExampleGenConfig(source="generic", interactions=os.path.join(root, folder, "interactions.csv.gz"), **common)


def work_name(name: str, history: int, ties: str, split: str = "leave_last_out", validation_share: float = 0.0) -> str:
    return f"seq_{name}_h{history}" + ("" if ties == "exclude" else f"_{ties}") + (
        "" if split == "leave_last_out" else f"_{split}") + (f"_val{validation_share}" if validation_share else "")


def cluster_tables(name: str, root: str, history: int, seeds: list[int], ties: str = "exclude",
                   split: str = "leave_last_out", validation_share: float = 0.0) -> tuple[str, dict[int, str], str]:
    """(examples dir, seed -> cluster dir, cluster source) of a data set (behavioural clusters come from a
    first pass on these examples' own training data: none of a validation fold's items)."""
    work = work_name(name, history, ties, split, validation_share)
    examples, clusters = prepare(work, example_config(name, root, history, ties, split, validation_share))
    if name.startswith("ml1m"):
        return examples, {seed: clusters for seed in seeds}, "llm"
    tables = {}
    for seed in seeds:  # the first pass of benchmarks.larger_catalogues (history 20 is its history)
        first = TrainerConfig(strategy="in_batch", cluster_source="category", seed=seed)
        model = train_and_evaluate(first, examples, clusters, f"{work}-in_batch-category-{seed}", (50, 100))
        tables[seed] = behavioural(model["model_dir"], examples, work, seed)
    return examples, tables, "behavioural"


def curve(config: TrainerConfig, examples: str, clusters: str, tag: str, epochs: list[int],
          exclude_seen: bool = True) -> list[dict]:
    """Trains up to each epoch count in turn (resuming), evaluating after each: HR, NDCG and wall time."""
    out = os.path.join(WORK, "models", tag)
    points, seconds = [], 0.0
    for count in epochs:
        path = os.path.join(out, f"eval_epoch{count}", "metrics.json")
        done = os.path.join(out, f"eval_epoch{count}", "train_seconds.json")
        if os.path.exists(path) and os.path.exists(done):
            with open(path, encoding="utf-8") as f:
                metrics = json.load(f)
            with open(done, encoding="utf-8") as f:
                seconds = json.load(f)["cumulative_train_seconds"]
        else:
            summary = run_trainer(dataclasses.replace(config, epochs=count), examples, clusters, out)
            seconds += summary["train_seconds"]
            metrics = run_evaluator(EvaluatorConfig(ks=KS, exclude_seen=exclude_seen), out, examples,
                                    os.path.join(out, f"eval_epoch{count}"), config.history_length)
            with open(done, "w", encoding="utf-8") as f:
                json.dump({"cumulative_train_seconds": seconds,
                           "examples_per_second": summary["examples_per_second"]}, f)
        points.append({"epochs": count, "train_seconds": seconds,
                       **{f"hr{k}": metrics[f"hit_rate@{k}"] for k in KS}, "ndcg10": metrics["ndcg@10"],
                       "targets_seen_in_training": metrics["targets_seen_in_training"]})
        print(f"[sequential_tower] {tag} epochs {count}: HR@10 {points[-1]['hr10']:.4f} "
              f"HR@50 {points[-1]['hr50']:.4f} after {seconds:.0f}s", flush=True)
    return points


def stopped_early(config: TrainerConfig, examples: str, clusters: str, tag: str) -> list[dict]:
    """One run of at most config.epochs epochs with early stopping on the validation fold, evaluated once: the
    exported (best validation) epoch, the epochs trained and the wall time (validation included). A finished
    run is read back, not resumed (a resumed run's wall time would be its last part's)."""
    out = os.path.join(WORK, "models", tag)
    path, evaluated = os.path.join(out, "train_summary.json"), os.path.join(out, "eval_best", "metrics.json")
    if os.path.exists(path) and os.path.exists(evaluated):
        with open(path, encoding="utf-8") as f, open(evaluated, encoding="utf-8") as g:
            summary, metrics = json.load(f), json.load(g)
    else:
        summary = run_trainer(config, examples, clusters, out)
        metrics = run_evaluator(EvaluatorConfig(ks=KS, exclude_seen=True), out, examples,
                                os.path.dirname(evaluated), config.history_length)
    stopping = summary["early_stopping"]
    point = {"epochs": stopping["exported_epoch"], "epochs_trained": summary["epochs_trained"],
             "train_seconds": summary["train_seconds"], "validation": stopping["scores"],
             **{f"hr{k}": metrics[f"hit_rate@{k}"] for k in KS}, "ndcg10": metrics["ndcg@10"],
             "targets_seen_in_training": metrics["targets_seen_in_training"]}
    print(f"[sequential_tower] {tag}: stopped after {point['epochs_trained']} epochs, best epoch {point['epochs']}: "
          f"HR@10 {point['hr10']:.4f} HR@50 {point['hr50']:.4f} after {point['train_seconds']:.0f}s", flush=True)
    return [point]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="ml1m_exact")
    parser.add_argument("--towers", default="pooled,transformer_seq")
    parser.add_argument("--strategies", default="in_batch")
    parser.add_argument("--scorings", default="cosine_mlp", help=f"of {sorted(SCORINGS)}")
    parser.add_argument("--history-ties", default="exclude", choices=("exclude", "input_order"),
                        help="example_gen's history_ties: 'input_order' lets a history hold same-timestamp positives "
                             "that come earlier in the input, as SASRec's and the peer's preparation does")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--split", default="leave_last_out", choices=("leave_last_out", "time"),
                        help="time: the paper's protocol (the last 20%% of the time line to evaluation, every item "
                        "ranked, seen ones too)")
    parser.add_argument("--epochs", default="2,4,8")
    parser.add_argument("--history", type=int, default=200)
    parser.add_argument("--sequence-batch", type=int, default=TrainerConfig.sequence_batch_size,
                        help="transformer_seq: sequence chunks a step (short sequences hold few targets a chunk)")
    parser.add_argument("--mask-same-user", action="store_true",
                        help="the trainer's mask_same_user_in_batch: a target's in-batch negatives leave out its own "
                             "user's other targets (a batch of sequence chunks holds all of them)")
    parser.add_argument("--early-stopping", type=int, default=0, metavar="PATIENCE",
                        help="train up to the last of --epochs with the trainer's early stopping on a validation fold "
                             "(example_gen validation_share), as the peer stops on its own: the best epoch is "
                             "evaluated")
    parser.add_argument("--validation-users", type=int, default=2048,
                        help="with --early-stopping, about this many users' last training positive is held out for "
                             "validation (the peer's 2,048)")
    parser.add_argument("--merge-seeds", action="store_true",
                        help="add these seeds' runs to a recorded row of the same settings (same epoch counts) "
                             "instead of replacing it, so seeds can be run in separate sessions")
    parser.add_argument("--data-root", default=os.environ.get("DATA_ROOT", os.path.join("..", "shared", "data")))
    args = parser.parse_args()
    seeds, epochs = [int(s) for s in args.seeds.split(",")], [int(e) for e in args.epochs.split(",")]
    path = os.path.join(RESULTS, "sequential_tower.json")
    result = json.load(open(path, encoding="utf-8")) if os.path.exists(path) else {"rows": []}
    for name in args.datasets.split(","):
        ties, split, share = args.history_ties, args.split, 0.0
        if args.early_stopping:  # the share of users that gives about --validation-users of them
            plain, _ = prepare(work_name(name, args.history, ties, split), example_config(name, args.data_root,
                                                                                         args.history, ties, split))
            with open(os.path.join(plain, "summary.json"), encoding="utf-8") as f:
                share = round(min(1.0, args.validation_users / json.load(f)["eval_positives"]), 4)
        examples, tables, source = cluster_tables(name, args.data_root, args.history, seeds, ties, split, share)
        for tower in args.towers.split(","):
            for strategy, scoring in itertools.product(args.strategies.split(","), args.scorings.split(",")):
                history = TrainerConfig.history_length if tower == "pooled" else args.history
                chunks = args.sequence_batch if tower == "transformer_seq" else TrainerConfig.sequence_batch_size
                key = (name, tower, strategy, scoring, history, ties, split, chunks, args.mask_same_user,
                       args.early_stopping)
                previous = [r for r in result["rows"] if row_key(r) == key and r["epochs"] == epochs]
                kept = {s: c for s, c in zip(previous[0]["seeds"], previous[0]["curves"]) if s not in seeds} \
                    if args.merge_seeds and previous else {}
                runs = []
                for seed in seeds:
                    config = TrainerConfig(strategy=strategy, cluster_source=source, seed=seed, history_length=history,
                                           sequence_batch_size=chunks, mask_same_user_in_batch=args.mask_same_user,
                                           early_stopping_patience=args.early_stopping, epochs=epochs[-1],
                                           **TOWERS[tower], **SCORINGS[scoring])
                    suffix = ("" if scoring == "cosine_mlp" else f"-{scoring}") + (
                        "" if ties == "exclude" else f"-{ties}") + ("" if split == "leave_last_out" else f"-{split}")
                    suffix += ("" if chunks == TrainerConfig.sequence_batch_size else f"-sb{chunks}") + (
                        "-same-user-masked" if args.mask_same_user else "") + (
                        f"-es{args.early_stopping}-val{share}" if args.early_stopping else "")
                    tag = f"seq-{name}-h{args.history}-{tower}-{strategy}{suffix}-{seed}"
                    runs.append(stopped_early(config, examples, tables[seed], tag) if args.early_stopping else
                                curve(config, examples, tables[seed], tag, epochs, split == "leave_last_out"))
                runs = list(kept.values()) + runs
                row = {"dataset": name, "tower": tower, "strategy": strategy, "scoring": scoring, "history": history,
                       "history_ties": ties, "split": split, "sequence_batch": chunks,
                       "mask_same_user": args.mask_same_user, "early_stopping": args.early_stopping,
                       "validation_share": share, "seeds": list(kept) + seeds,
                       "epochs": epochs, "curves": runs}
                last = [r[-1] for r in runs]
                row.update({f"{m}_{f.__name__}": f([p[m] for p in last]) for m in METRICS
                            for f in (statistics.mean, statistics.pstdev)})
                row["train_seconds_mean"] = statistics.mean(p["train_seconds"] for p in last)
                result["rows"] = [r for r in result["rows"] if row_key(r) != key]
                result["rows"].append(row)
                write(result)


def by_epochs(row: dict) -> str:
    """'5: 0.1074, 10: 0.1000': mean HR@10 over the row's seeds at each evaluated epoch count; with early
    stopping, each seed's best and trained epochs."""
    if row.get("early_stopping"):
        return "early stopping: best / trained epochs " + ", ".join(
            f"{c[-1]['epochs']}/{c[-1]['epochs_trained']}" for c in row["curves"])
    return ", ".join(f"{count}: {statistics.mean(curve[i]['hr10'] for curve in row['curves']):.4f}"
                     for i, count in enumerate(row["epochs"]))


class RowKey(NamedTuple):
    """What a row of the table is the runs of (a row recorded before a field existed has its default)."""
    dataset: str
    tower: str
    strategy: str
    scoring: str
    history: int
    ties: str
    split: str
    chunks: int
    mask_same_user: bool
    early_stopping: int


def row_key(row: dict) -> RowKey:
    return RowKey(row["dataset"], row["tower"], row["strategy"], row.get("scoring", "cosine_mlp"), row["history"],
            row.get("history_ties", "exclude"), row.get("split", "leave_last_out"),
            row.get("sequence_batch", TrainerConfig.sequence_batch_size), row.get("mask_same_user", False),
            row.get("early_stopping", 0))


def variant_notes(r: dict, short: bool = False) -> list[str]:
    """What sets a row's training apart from the tower's plain run (chunks a step, masking, early stopping)."""
    key = row_key(r)
    return ([] if key.chunks == TrainerConfig.sequence_batch_size else [f"{key.chunks} chunks a step"]) + (
        ["own user masked" if short else "own user's targets masked"] if key.mask_same_user else []) + (
        ["early stopping" if short else
         f"early stopping, patience {key.early_stopping}, {r['validation_share']:.1%} of users validate"]
        if key.early_stopping else [])


def write(result: dict) -> None:
    peer = json.load(open(PEER_RESULTS, encoding="utf-8")) if os.path.exists(PEER_RESULTS) else {"runs": []}
    result["peer"] = peer["runs"]
    lines = ["Query towers side by side (`python -m benchmarks.sequential_tower`): full ranking; leave_last_out with "
             "each user's training items excluded, or the time split (`--split time`, the paper's protocol: every "
             "item ranked); figures after the last epoch count, mean ± std over seeds.", "",
             "Scoring: cosine_mlp (ours: cosine / 0.05, MLP candidate tower), cosine_tied (the candidate is the "
             "item's input embedding), dot_tied (SASRec's: tied, raw dot product).", "",
             "History ties: exclude (a history holds strictly earlier timestamps only, the paper's protocol) or "
             "input_order (also same-timestamp positives earlier in the input, as SASRec's preparation and the peer "
             "have it).", "",
             "HR@10 by epochs: the mean HR@10 at each evaluated epoch count of the run (one run, resumed), "
             "so a model that over-fits shows it; the other figures are at the last count. Rows with early stopping "
             "train until their own validation fold stops improving and are evaluated at the best validation "
             "epoch, as the peer does with its validation fold.", "",
             "| data | split | tower | strategy | scoring | history | ties | epochs | seeds | HR@10 | NDCG@10 | HR@50 "
             "| HR@10 by epochs | train wall (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        cells = " | ".join(f"{r[f'{m}_mean']:.4f} ± {r[f'{m}_pstdev']:.4f}" for m in METRICS)
        key = row_key(r)
        notes = variant_notes(r)
        tower = r["tower"] + (f" ({', '.join(notes)})" if notes else "")
        lines.append(f"| {r['dataset']} | {key.split} | {tower} | {r['strategy']} | {key.scoring} | "
                     f"{r['history']} | "
                     f"{key.ties} | {r['epochs'][-1]} | {len(r['seeds'])} | "
                     f"{cells} | {by_epochs(r)} | {r['train_seconds_mean']:,.0f} |")
    for name in sorted({p["dataset"] for p in result["peer"]}):  # the peer's seeds of a data set in one row
        runs = sorted((p for p in result["peer"] if p["dataset"] == name), key=lambda p: p["seed"])
        cells = " | ".join(f"{statistics.mean(p[m] for p in runs):.4f} ± {statistics.pstdev(p[m] for p in runs):.4f}"
                           for m in METRICS)
        lines.append(f"| {name} | leave_last_out | peer: RecTools {runs[0]['version']} SASRec ({runs[0]['loss']}) | "
                     f"- | dot_tied | {runs[0]['max_len']} | input_order | "
                     f"{', '.join(str(p['epochs']) for p in runs)} (early stopping) | {len(runs)} | {cells} | "
                     f"best epochs {', '.join(str(p['best_epoch']) for p in runs)} | "
                     f"{statistics.mean(p['train_seconds'] for p in runs):,.0f} |")
    lines += ["", "HR@10 against cumulative training wall time: benchmarks/results/sequential_tower.png."]
    write_results("sequential_tower", result, "\n".join(lines) + "\n")
    plot(result)


def plot(result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple[str, str], list[dict]] = {}
    for r in result["rows"]:
        panels.setdefault((r["dataset"], row_key(r).split), []).append(r)
    entries = max(len(rows) for rows in panels.values()) + 1  # legend lines, the peer's included
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4 + 0.2 * entries), squeeze=False)
    tower_colours = {matplotlib.colors.to_rgb(c) for c in COLOURS.values()}
    for ax, (name, split) in zip(axes[0], sorted(panels)):
        spare = itertools.cycle(c for c in plt.get_cmap("tab10").colors if c not in tower_colours)  # for variants
        for r in panels[(name, split)]:
            key, notes = row_key(r), variant_notes(r, short=True)
            colour = COLOURS[r["tower"]] if not notes else next(spare)  # a variant of the tower: its own colour
            for i, points in enumerate(r["curves"]):
                ax.plot([p["train_seconds"] for p in points], [p["hr10"] for p in points],
                        marker={"cosine_mlp": "o", "cosine_tied": "s", "dot_tied": "^"}[key.scoring],
                        label=" ".join([r["tower"], r["strategy"], key.scoring, key.ties, *notes]) if i == 0 else None,
                        color=colour,
                        markerfacecolor="none" if key.ties == "exclude" else None,  # hollow: strict ties
                        linestyle={"in_batch": "-", "oob": ":", "cluster_oob": "--"}.get(r["strategy"], "-"))
        for p in (p for p in result["peer"] if p["dataset"] == name and split == "leave_last_out"):
            ax.scatter([p["train_seconds"]], [p["hr10"]], marker="*", s=150, color="black",
                       label=f"RecTools SASRec ({p['epochs']} epochs)")
        ax.set(title=f"{name}, {split}", xlabel="training wall time (s, 2 CPU cores)",
               ylabel="HR@10 (seen items excluded)" if split == "leave_last_out" else "HR@10 (every item ranked)")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15))  # below: the curves stay clear
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "sequential_tower.png"), dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
