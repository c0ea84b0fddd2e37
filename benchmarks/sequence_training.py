"""Sequence records and sequence training against per-interaction examples, same transformer tower.

    python -m benchmarks.sequence_training [--dataset ml1m_exact] [--history 200] [--steps 5]

On the examples benchmarks.sequential_tower prepares (leave_last_out, `--history` items of history and
sequence records of that length): bytes per training interaction of train/ (one example per
interaction, each with its history) against train_sequences/; items read per training target; and the
training throughput of both paths on real batches, in one process (batch 1024 examples against 64
sequence chunks, in_batch, 2 blocks, 1 head, 64-d; `--steps` timed steps after 2 warm-up steps,
median). Quality and wall time to a given HR@10 of the sequence path: benchmarks.sequential_tower.
Writes benchmarks/results/sequence_training.{json,md}.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import time

import components  # noqa: F401  (environment before TensorFlow)
from benchmarks.paper_tables import WORK, write_results


def _bytes(directory: str) -> int:
    return sum(os.path.getsize(p) for p in glob.glob(os.path.join(directory, "*.tfrecord")))


def throughput(examples: str, clusters: str, history: int, steps: int) -> list[dict]:
    import tensorflow as tf

    from components.trainer import TrainerConfig
    from components.trainer.data import example_files, load_catalogue, make_dataset
    from components.trainer.model import TwoTowerModel
    from components.trainer.optimizer import make_optimizer

    catalogue = load_catalogue(os.path.join(examples, "items"), os.path.join(clusters, "llm"))
    rows = []
    for name, sequences in (("per-interaction examples", False), ("sequence records", True)):
        config = TrainerConfig(strategy="in_batch", query_tower="transformer", history_length=history,
                               sequence_training=sequences)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="ml1m_exact")
    parser.add_argument("--history", type=int, default=200)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    root = os.path.join(WORK, f"seq_{args.dataset}_h{args.history}")
    examples = os.path.join(root, "examples")
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
    clusters = os.path.join(root, "clusters_auto")
    result = {"dataset": args.dataset, "history": args.history, "cost": cost,
              "throughput": throughput(examples, clusters, args.history, args.steps)}
    per, seq = result["throughput"]
    lines = [f"Sequence records against per-interaction examples (`python -m benchmarks.sequence_training`), "
             f"{args.dataset}, history {args.history}, transformer tower (2 blocks, 1 head, 64-d), in_batch, 2 CPU "
             "cores.", "",
             "| | per-interaction examples | sequence records | ratio |", "|---|---|---|---|",
             f"| TFRecord bytes per training interaction | {cost['per_interaction_bytes_per_interaction']:,.0f} | "
             f"{cost['sequence_bytes_per_interaction']:,.0f} | "
             f"{cost['sequence_bytes'] / cost['per_interaction_bytes']:.3f}x |",
             f"| history items read per training target | up to {args.history} | "
             f"{cost['sequence_items_per_target']:.2f} | |",
             f"| training targets per second | {per['targets_per_second']:,.0f} | {seq['targets_per_second']:,.0f} | "
             f"{seq['targets_per_second'] / per['targets_per_second']:.1f}x |",
             f"| step (s) | {per['step_s']:.2f} (batch {per['batch']}) | {seq['step_s']:.2f} ({seq['batch']} chunks, "
             f"{seq['targets_per_step']:,.0f} targets) | |"]
    write_results("sequence_training", result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
