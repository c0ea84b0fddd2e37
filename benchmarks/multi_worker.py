"""Two trainer workers on localhost against one process, on ML-1M; and the cost of the pool's all-gather.

    python -m benchmarks.multi_worker [--seeds 0,1,2] [--ml1m-dir ../shared/data/ml-1m]

Per seed, the default trainer (cluster_oob, LLM clusters, batch 1024, 3 epochs) runs as
  - one process with both cores (distribute 'none'), and
  - two worker processes (distribute 'multi_worker', TF_CONFIG on localhost), each pinned to one
    core (taskset, TF_NUM_INTRAOP_THREADS=TF_NUM_INTEROP_THREADS=1);
then each model is evaluated (HR@50/100, full corpus). Finally the pool's per-step all-gather
alone (ClusterPool.gather_replicas: each replica's B/2 item indices and clusters, one int64
tensor) is timed in the same two-worker cluster and set against the measured step time.
Runs are reused by tag when their summary and metrics exist. Writes benchmarks/results/multi_worker.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys

import llm_hardneg.components  # noqa: F401
from benchmarks.paper_tables import RECORDED_SHARING, WORK, prepare, write_results
from llm_hardneg.components.evaluator import EvaluatorConfig, run_evaluator
from llm_hardneg.components.example_gen import ExampleGenConfig
from llm_hardneg.components.trainer import TrainerConfig
from llm_hardneg.components.trainer.distribute import localhost_tf_configs

ONE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}


def _launch(commands: list[list[str]], envs: list[dict], log: str) -> None:
    """Runs the processes together; their output goes to `log` (one file per process)."""
    processes = []
    for i, (command, env) in enumerate(zip(commands, envs)):
        with open(f"{log}.{i}", "w", encoding="utf-8") as out:
            processes.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                              env={**os.environ, **env}))
    codes = [p.wait() for p in processes]
    if any(codes):
        raise RuntimeError(f"exit codes {codes}; see {log}.*")


def train(config: TrainerConfig, examples: str, clusters: str, tag: str, workers: int) -> dict:
    """Trains (or reuses) and evaluates one run: workers = 1 (one process, every core) or 2 (one core each)."""
    out = os.path.join(WORK, "models", tag)
    metrics_path = os.path.join(out, "eval", "metrics.json")
    if not (os.path.exists(metrics_path) and os.path.exists(os.path.join(out, "train_summary.json"))):
        trainer = [sys.executable, "-u", "-m", "llm_hardneg.components.trainer", "--examples-dir", examples,
                   "--clusters-dir", clusters, "--output-dir", out,
                   "--config-json", json.dumps(dataclasses.asdict(config))]
        os.makedirs(out, exist_ok=True)
        print(f"[multi_worker] {tag}: training ({workers} process{'es' if workers > 1 else ''})", flush=True)
        if workers == 1:
            _launch([trainer], [{}], os.path.join(out, "log"))
        else:
            _launch([["taskset", "-c", str(i), *trainer] for i in range(workers)],
                    [{**ONE_THREAD, "TF_CONFIG": c} for c in localhost_tf_configs(workers)],
                    os.path.join(out, "log"))
        run_evaluator(EvaluatorConfig(ks=(50, 100)), out, examples, os.path.join(out, "eval"), config.history_length)
    with open(os.path.join(out, "train_summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    with open(metrics_path, encoding="utf-8") as f:
        metrics = json.load(f)
    return {"hr50": metrics["hit_rate@50"], "hr100": metrics["hit_rate@100"],
            "examples_per_second": statistics.mean(summary["examples_per_second"]),
            "train_seconds": summary["train_seconds"], "replicas": summary.get("replicas", 1)}


# One worker of the all-gather probe (ClusterPool.gather_replicas, what a training step's pool update
# gathers), its own program: MultiWorkerMirroredStrategy comes first in a process. argv: batch size, steps.
PROBE = """
import json, statistics, sys, time
import llm_hardneg.components.common.env
import tensorflow as tf
batch_size, steps = int(sys.argv[1]), int(sys.argv[2])
strategy = tf.distribute.MultiWorkerMirroredStrategy()
from llm_hardneg.components.trainer.pool import ClusterPool
rows = batch_size // strategy.num_replicas_in_sync
with strategy.scope():  # the trainer's pool: item indices as keys and the one stored feature
    pool = ClusterPool(62, 128, {"item_index": ((), "int64")}, key_feature="item_index")

@tf.function
def gather(index):
    index = tf.identity(index)  # placed on the replica's device, as the trainer's ids are (an input has none)
    ids, clusters, features = pool.gather_replicas(index, index % 62, {"item_index": index})
    return ids

def step(index):
    return strategy.run(gather, args=(index,))

batches = iter(strategy.distribute_datasets_from_function(
    lambda _: tf.data.Dataset.from_tensors(tf.range(rows, dtype=tf.int64)).repeat()))
times = []
for i in range(steps + 20):
    index = next(batches)
    started = time.perf_counter()
    int(strategy.experimental_local_results(step(index))[0][0])  # waits for the collective
    if i >= 20:
        times.append(time.perf_counter() - started)
print(json.dumps({"all_gather_seconds": statistics.median(times), "rows_per_replica": rows}), flush=True)
"""


def probe_all_gather(batch_size: int, steps: int = 300) -> dict:
    log = os.path.join(WORK, "multi_worker_probe")
    command = [sys.executable, "-u", "-c", PROBE, str(batch_size), str(steps)]
    _launch([["taskset", "-c", str(i), *command] for i in range(2)],
            [{**ONE_THREAD, "TF_CONFIG": c} for c in localhost_tf_configs(2)], log)
    with open(f"{log}.0", encoding="utf-8") as f:
        return json.loads([line for line in f if line.startswith('{"all_gather_seconds"')][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ml1m-dir", default=os.environ.get("ML1M_DIR", os.path.join("..", "shared", "data", "ml-1m")))
    parser.add_argument("--batch-size", type=int, default=TrainerConfig().batch_size)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    examples, clusters = prepare("ml1m_reconstructed", ExampleGenConfig.movielens(os.path.abspath(args.ml1m_dir)))
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        single = train(TrainerConfig(seed=seed, **RECORDED_SHARING), examples, clusters, f"mw-single-{seed}", workers=1)
        two = train(TrainerConfig(seed=seed, distribute="multi_worker", **RECORDED_SHARING), examples, clusters,
                    f"mw-two-{seed}",
                    workers=2)
        rows.append({"seed": seed, "one_process": single, "two_workers": two})
    gather = probe_all_gather(args.batch_size, args.steps)
    step_seconds = statistics.mean(args.batch_size / r["two_workers"]["examples_per_second"] for r in rows)
    result = {"batch_size": args.batch_size, "rows": rows, "all_gather": gather,
              "two_worker_step_seconds": step_seconds, "all_gather_share": gather["all_gather_seconds"] / step_seconds}
    write_results("multi_worker", result, markdown(result))


def _mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.4f}"


def markdown(result: dict) -> str:
    rows = result["rows"]
    lines = [f"ML-1M (reconstructed protocol), default trainer (cluster_oob, LLM clusters, batch "
             f"{result['batch_size']}, 3 epochs), seeds {[r['seed'] for r in rows]}; this 2-core machine: one process "
             "with both cores against two MultiWorkerMirroredStrategy workers on localhost pinned to one core each.",
             "", "| setting | HR@50 | HR@100 | examples/s |", "|---|---|---|---|"]
    for key, name in (("one_process", "one process, 2 cores"), ("two_workers", "two workers, 1 core each")):
        lines.append(f"| {name} | {_mean_std([r[key]['hr50'] for r in rows])} | "
                     f"{_mean_std([r[key]['hr100'] for r in rows])} | "
                     f"{statistics.mean(r[key]['examples_per_second'] for r in rows):,.0f} |")
    gather, step = result["all_gather"], result["two_worker_step_seconds"]
    lines += ["", f"Pool all-gather per step (two workers, {gather['rows_per_replica']} rows each, one "
              f"[rows, 2] int64 tensor): {1000 * gather['all_gather_seconds']:.2f} ms against a "
              f"{1000 * step:.0f} ms step: {100 * result['all_gather_share']:.1f}% of the step."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
