"""Sequence records and sequence training against per-interaction examples, same transformer tower.

    python -m benchmarks.sequence_training [--dataset ml1m_exact|videogames] [--history 200] [--steps 5]

On the examples benchmarks.sequential_tower prepares (leave_last_out, `--history` items of history and
sequence records of that length): bytes per training interaction of train/ (one example per
interaction, each with its history) against train_sequences/; items read per training target; and the
training throughput of both paths on real batches, in one process (batch 1024 examples against 64
sequence chunks, in_batch, 2 blocks, 1 head, 64-d, SASRec's tied dot-product scoring as in `--quality`;
`--steps` timed steps after 2 warm-up steps, median). Quality and wall time to a given HR@10 of the
sequence path: benchmarks.sequential_tower.

    python -m benchmarks.sequence_training --quality [--quality-epochs 1,2,3] [--seeds 0]
        [--paths transformer,transformer_seq] [--mask-same-user] [--sequence-batch 64]

trains both paths for the same epochs (every training target once an epoch on either path) with the
same tower and settings (in_batch, SASRec's scoring: tied, raw dot product; history_ties input_order,
benchmarks.sequential_tower's best row) on ML-1M users 1-2999, and records HR@10 / NDCG@10 / HR@50
(leave_last_out, seen items excluded) and training wall time: the "equal HR@10" half of the
comparison, kept apart from throughput (a per-interaction epoch at history 200 takes about an hour).
Writes benchmarks/results/sequence_training.{json,md}.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import time

import llm_hardneg.components  # noqa: F401  (environment before TensorFlow)
from benchmarks.paper_tables import RESULTS, write_results


def _bytes(directory: str) -> int:
    return sum(os.path.getsize(p) for p in glob.glob(os.path.join(directory, "*.tfrecord")))


def throughput(examples: str, clusters: str, history: int, steps: int) -> list[dict]:
    """clusters: the cluster table's folder (clusters_dir/<cluster_source>)."""
    import tensorflow as tf

    from benchmarks.sequential_tower import SCORINGS
    from llm_hardneg.components.trainer import TrainerConfig
    from llm_hardneg.components.trainer.data import example_files, load_catalogue, make_dataset
    from llm_hardneg.components.trainer.model import TwoTowerModel
    from llm_hardneg.components.trainer.optimizer import make_optimizer

    catalogue = load_catalogue(os.path.join(examples, "items"), clusters)
    rows = []
    for name, sequences in (("per-interaction examples", False), ("sequence records", True)):
        config = TrainerConfig(strategy="in_batch", query_tower="transformer", history_length=history,
                               sequence_training=sequences, **SCORINGS["dot_tied"])  # the --quality runs' settings
        model = TwoTowerModel(config, catalogue, None)
        model.compile(optimizer=make_optimizer(config.optimizer, config.learning_rate))
        files = example_files(examples, "train_sequences" if sequences else "train")
        batches = list(make_dataset(files, config.step_rows, history,
                                    shuffle_buffer=10_000, sequences=sequences).take(steps + 2))
        step = tf.function(model.train_step)
        times, targets = [], []
        for i, batch in enumerate(batches):
            started = time.monotonic()
            out = step(batch)
            seconds = time.monotonic() - started
            if i >= 2:
                times.append(seconds)
                targets.append(float(out["targets_per_step"]) if sequences else float(tf.reduce_sum(batch["label"])))
        median = statistics.median(times)
        rows.append({"path": name, "step_s": median, "targets_per_step": statistics.mean(targets),
                     "targets_per_second": statistics.mean(targets) / median,
                     "batch": config.step_rows})
        print(f"[sequence_training] {name}: {median:.2f} s a step, {rows[-1]['targets_per_second']:,.0f} targets/s",
              flush=True)
    return rows


def quality(args) -> list[dict]:
    """Both paths, same epochs and settings, seeds: HR@10, NDCG@10, HR@50 and training wall time."""
    from benchmarks.sequential_tower import SCORINGS, TOWERS, cluster_tables, curve
    from llm_hardneg.components.trainer import TrainerConfig

    seeds = [int(s) for s in args.seeds.split(",")]
    examples, tables, source = cluster_tables(args.dataset, args.data_root, args.history, seeds, "input_order")
    rows = []
    for path in args.paths.split(","):
        for seed in seeds:
            masked = args.mask_same_user and path == "transformer_seq"
            chunks = args.sequence_batch if path == "transformer_seq" else TrainerConfig.sequence_batch_size
            config = TrainerConfig(strategy="in_batch", cluster_source=source, seed=seed, history_length=args.history,
                                   mask_same_user_in_batch=masked, sequence_batch_size=chunks, **TOWERS[path],
                                   **SCORINGS["dot_tied"])
            suffix = ("" if chunks == TrainerConfig.sequence_batch_size else f"-sb{chunks}") + (
                "-same-user-masked" if masked else "")
            tag = f"seqq-{args.dataset}-h{args.history}-{path}{suffix}-{seed}"
            for point in curve(config, examples, tables[seed], tag, [int(e) for e in args.quality_epochs.split(",")]):
                rows.append({"path": path, "mask_same_user": masked, "sequence_batch": chunks, "seed": seed,
                             **point})  # cumulative seconds
    return rows


def results_name(dataset: str) -> str:
    """The results file of a data set: sequence_training (ML-1M users 1-2999) or sequence_training_<name>."""
    return "sequence_training" if dataset == "ml1m_exact" else f"sequence_training_{dataset}"


def _quality_key(row: dict) -> tuple:
    return (row["path"], row.get("mask_same_user", False), row.get("sequence_batch", 64), row["seed"],
            row["epochs"])


def write_quality(args, rows: list[dict]) -> None:
    path = os.path.join(RESULTS, f"{results_name(args.dataset)}.json")
    result = json.load(open(path, encoding="utf-8")) if os.path.exists(path) else {
        "dataset": args.dataset, "history": args.history}
    done = {_quality_key(r) for r in rows}
    result["quality"] = [r for r in result.get("quality", []) if _quality_key(r) not in done] + rows
    render(result)


def _cost_table(result: dict) -> list[str]:
    cost, (per, seq) = result["cost"], result["throughput"]
    return ["| | per-interaction examples | sequence records | ratio |", "|---|---|---|---|",
            f"| TFRecord bytes per training interaction | {cost['per_interaction_bytes_per_interaction']:,.0f} | "
            f"{cost['sequence_bytes_per_interaction']:,.0f} | "
            f"{cost['sequence_bytes'] / cost['per_interaction_bytes']:.3f}x |",
            f"| history items read per training target | up to {result['history']} | "
            f"{cost['sequence_items_per_target']:.2f} | |",
            f"| training targets per second | {per['targets_per_second']:,.0f} | "
            f"{seq['targets_per_second']:,.0f} | {seq['targets_per_second'] / per['targets_per_second']:.1f}x |",
            f"| step (s) | {per['step_s']:.2f} (batch {per['batch']}) | {seq['step_s']:.2f} ({seq['batch']} "
            f"chunks, {seq['targets_per_step']:,.0f} targets) | |"]


def render(result: dict) -> None:
    lines = [f"Sequence records against per-interaction examples (`python -m benchmarks.sequence_training`), "
             f"{result['dataset']}, history {result['history']}, transformer tower (2 blocks, 1 head, 64-d), "
             "in_batch, 2 CPU cores.", ""]
    if "cost" in result:
        lines += _cost_table(result)
    if result.get("quality"):
        names = {"transformer": "per-interaction examples", "transformer_seq": "sequence records"}
        lines += ["", "Quality at equal epochs (`--quality`): same tower, in_batch, tied dot-product scoring, "
                  "history_ties input_order; leave_last_out, seen items excluded; mean ± std over seeds.", "",
                  "| path | epochs | seeds | HR@10 | NDCG@10 | HR@50 | training wall (s, cumulative) |",
                  "|---|---|---|---|---|---|---|"]
        groups: dict[tuple, list[dict]] = {}
        for r in result["quality"]:
            groups.setdefault(_quality_key(r)[:3] + (r["epochs"],), []).append(r)
        for (path, masked, chunks, epochs), runs in sorted(groups.items()):
            cells = " | ".join(f"{statistics.mean(r[m] for r in runs):.4f} ± "
                               f"{statistics.pstdev(r[m] for r in runs):.4f}" for m in ("hr10", "ndcg10", "hr50"))
            label = names.get(path, path) + (f", {chunks} chunks a step" if path == "transformer_seq" and chunks != 64
                                             else "") + (", own user's targets masked" if masked else "")
            lines.append(f"| {label} | {epochs} | {len(runs)} | {cells} | "
                         f"{statistics.mean(r['train_seconds'] for r in runs):,.0f} |")
    write_results(results_name(result["dataset"]), result, "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="ml1m_exact")
    parser.add_argument("--history", type=int, default=200)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--quality", action="store_true", help="train both paths for the same epochs and evaluate")
    parser.add_argument("--quality-epochs", default="1", help="epoch counts to evaluate at (one resumed run)")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--paths", default="transformer_seq,transformer")
    parser.add_argument("--sequence-batch", type=int, default=64,
                        help="sequence records: chunks a step (160 on Video Games holds about as many targets as a "
                             "per-interaction batch of 1,024)")
    parser.add_argument("--mask-same-user", action="store_true",
                        help="sequence records: the trainer's mask_same_user_in_batch (a target's in-batch negatives "
                             "leave out its own user's other targets)")
    parser.add_argument("--data-root", default=os.environ.get("DATA_ROOT", os.path.join("..", "shared", "data")))
    args = parser.parse_args()
    if args.quality:
        write_quality(args, quality(args))
        return
    from benchmarks.sequential_tower import cluster_tables

    examples, tables, source = cluster_tables(args.dataset, args.data_root, args.history, [0], "input_order")
    summary = json.load(open(os.path.join(examples, "summary.json"), encoding="utf-8"))
    if not summary.get("sequence_length"):
        raise SystemExit(f"no sequence records in {examples}: run benchmarks.sequential_tower on {args.dataset} first")
    interactions = summary["train_examples"]
    per_interaction = _bytes(os.path.join(examples, "train"))
    sequences = _bytes(os.path.join(examples, "train_sequences"))
    cost = {"train_interactions": interactions, "train_positives": summary["train_positives"],
            "sequence_targets": summary["train_sequence_targets"], "sequences": summary["train_sequences"],
            "per_interaction_bytes": per_interaction, "sequence_bytes": sequences,
            "per_interaction_bytes_per_interaction": per_interaction / interactions,
            "sequence_bytes_per_interaction": sequences / interactions,
            "per_interaction_items_per_target": args.history,  # every example carries up to `history` items
            "sequence_items_per_target": summary["train_sequence_items"] / summary["train_sequence_targets"]}
    result = {"dataset": args.dataset, "history": args.history, "cost": cost,
              "throughput": throughput(examples, os.path.join(tables[0], source), args.history, args.steps)}
    previous = os.path.join(RESULTS, f"{results_name(args.dataset)}.json")
    if os.path.exists(previous):  # keep the recorded quality runs
        result["quality"] = json.load(open(previous, encoding="utf-8")).get("quality", [])
    render(result)


if __name__ == "__main__":
    main()
