"""Runs the pipeline on this machine: kfp.local subprocess runner, Beam DirectRunner in the steps.

    python -m tfx_pipeline.local_runner [--data-dir ../shared/data/ml-1m] [--trainer.strategy oob] ...
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from collections.abc import Sequence

import components.common.env  # noqa: F401  (before TensorFlow)
from tfx_pipeline.config import parse
from tfx_pipeline.pipeline import create_pipeline

OUTPUTS = {"example-gen": "examples", "item-embedder": "embeddings", "item-clusterer": "clusters",
           "trainer": "model", "evaluator": "metrics", "exporter": "export"}


def _artifacts(run_dir: str) -> dict[str, str]:
    """{task: artifact directory} of one local run; of a step that runs twice (behavioural clusters:
    trainer, trainer-2) the last, which feeds what follows."""
    found = {}
    for task, output in OUTPUTS.items():
        matches = glob.glob(os.path.join(run_dir, task, output)) + glob.glob(os.path.join(run_dir, f"{task}-[0-9]*",
                                                                                          output))
        if matches:  # task, task-2, task-3, ...: the highest number
            found[task] = max(matches, key=lambda p: int(os.path.basename(os.path.dirname(p))[len(task) + 1:] or 1))
    return found


def _report(run_dir: str, total_seconds: float) -> None:
    artifacts = _artifacts(run_dir)
    print("\n== llm-hardneg: results ==")
    metrics_path = os.path.join(artifacts.get("evaluator", ""), "metrics.json")
    if os.path.exists(metrics_path):
        with open(metrics_path, encoding="utf-8") as f:
            metrics = json.load(f)
        print("| metric | value |\n|---|---|")
        for key in sorted(k for k in metrics if k.startswith("hit_rate@")):
            print(f"| {key.replace('hit_rate@', 'HitRate@')} | {metrics[key]:.4f} |")
        print(f"| eval queries | {metrics['num_queries']:,} |\n| corpus size | {metrics['corpus_size']:,} |")
    print("\n| step | wall time (s) | peak memory (MB) | artifact |\n|---|---|---|---|")
    for task, path in artifacts.items():
        timing = os.path.join(path, "step.json")
        step = json.load(open(timing, encoding="utf-8")) if os.path.exists(timing) else {}
        reused = " (reused)" if step.get("reused") else ""
        print(f"| {task} | {step.get('wall_seconds', float('nan')):,.1f}{reused} | "
              f"{step.get('peak_rss_mb', float('nan')):,.0f} | {path} |")
    print(f"\ntotal wall time {total_seconds:,.0f}s; run directory {run_dir}")
    _next_steps(artifacts)


def _next_steps(artifacts: dict[str, str]) -> None:
    """Where to look next: training curves, the serving model with a query, the cluster report."""
    lines = []
    if "trainer" in artifacts:
        lines.append(f"training curves:  .venv/bin/tensorboard --logdir {os.path.join(artifacts['trainer'], 'logs')}")
    if "exporter" in artifacts:
        model = os.path.join(artifacts["exporter"], "serving_model")
        lines.append(f"serving model:    {model}")
        lines.append("  query it:       .venv/bin/python -c \"import tensorflow as tf; m = tf.saved_model.load("
                     f"'{model}'); print(m(tf.constant(['1']), tf.constant([['1193', '661']]))['item_ids'][0, :10])\"")
    if "item-clusterer" in artifacts:
        lines.append(f"cluster report:   {os.path.join(artifacts['item-clusterer'], 'cluster_sizes.png')}")
    if lines:
        print("\nnext:\n" + "\n".join(f"  {line}" for line in lines))


def main(argv: Sequence[str] | None = None) -> int:
    from kfp import local

    config = parse(argv, description=__doc__)
    os.makedirs(config.pipeline_root, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=config.pipeline_root,
               raise_on_error=True)
    before = set(glob.glob(os.path.join(config.pipeline_root, "*")))
    before.add(os.path.join(config.pipeline_root, "cache"))
    started = time.monotonic()
    create_pipeline(config)()
    new = sorted(set(glob.glob(os.path.join(config.pipeline_root, "*"))) - before, key=os.path.getmtime)
    if not new:
        print("no run directory was created", file=sys.stderr)
        return 1
    _report(new[-1], time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
