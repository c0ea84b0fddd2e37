"""Runs the pipeline on this machine: kfp.local subprocess runner, Beam DirectRunner in the steps.

    python -m llm_hardneg.tfx_pipeline.local_runner [--data-dir ../shared/data/ml-1m] [--trainer.strategy oob] ...
        [--verbose]      (or the console script: llm-hardneg ...)

The console shows each step's own lines (start, progress, summary) and the final table; the
whole output of every step (TensorFlow, Beam and KFP logs, the executor's JSON) goes to
<pipeline-root>/logs/<time>.log, whose path is printed first (--verbose: everything on the console).
An error the input or the flags cause ends the run with its one-line message and exit status 1
(the traceback is in the log); any other error shows its traceback.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import io
import json
import os
import re
import sys
import time
from collections.abc import Sequence

import numpy as np

import llm_hardneg.components.common.env  # noqa: F401  (before TensorFlow)
from llm_hardneg.components.common.fileio import read_json
from llm_hardneg.components.common.tables import read_item_table
from llm_hardneg.tfx_pipeline.config import parse, windows
from llm_hardneg.tfx_pipeline.pipeline import create_pipeline

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


def _example_history(examples_dir: str) -> list[str]:
    """A history to show a query with: the run's two most trained items (MovieLens' '1193', '661' without one)."""
    try:
        table = read_item_table(os.path.join(examples_dir, "items"), ("item_id", "train_count"))
    except (OSError, ValueError):
        return ["1193", "661"]
    top = np.argsort(-table["train_count"], kind="stable")[:2]
    return [str(table["item_id"][i]) for i in top]


def _next_steps(artifacts: dict[str, str]) -> None:
    """Where to look next: training curves, the serving model with a query, the cluster report."""
    lines = []
    if "trainer" in artifacts:
        lines.append(f"training curves:  .venv/bin/tensorboard --logdir {os.path.join(artifacts['trainer'], 'logs')}")
    if "exporter" in artifacts:
        model = os.path.join(artifacts["exporter"], "serving_model")
        lines.append(f"serving model:    {model}")
        history = _example_history(artifacts.get("example-gen", ""))
        lines.append("  query it:       .venv/bin/python -c \"import tensorflow as tf; m = tf.saved_model.load("
                     f"'{model}'); print(m(tf.constant(['1']), tf.constant([{history!r}]))['item_ids'][0, :10])\"")
    if "item-clusterer" in artifacts:
        lines.append(f"cluster report:   {os.path.join(artifacts['item-clusterer'], 'cluster_sizes.png')}")
    if lines:
        print("\nnext:\n" + "\n".join(f"  {line}" for line in lines))


# The steps' own lines ("[trainer] epoch 1/3 ...") and KFP's task start/end lines reach the console.
_CONSOLE = re.compile(r"^\s*(\[[a-z][\w\-]*\] |.*Executing task '|.*Task '[\w\-]+' finished with status)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION = re.compile(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception|Exit|Violation|Split)\w*): (.*)$")
# What a user's input, flags or files cause: one line is enough. Anything else is a bug: traceback.
# The names, as they appear in a step's output, of llm_hardneg.components.common.cli.USER_ERRORS (ValueError and
# OSError) and their subclasses the steps raise; a step runs in another process, so only its text is seen.
USER_ERRORS = ("ValueError", "SchemaViolation", "DegenerateSplit", "FileNotFoundError", "NotADirectoryError",
               "IsADirectoryError", "PermissionError", "SystemExit")


class _Console(io.TextIOBase):
    """sys.stdout during a run: every line to the log file, the steps' own lines to the terminal."""

    def __init__(self, log, terminal, verbose: bool):
        self.log, self.terminal, self.verbose, self.pending = log, terminal, verbose, ""
        self.tail: collections.deque[str] = collections.deque(maxlen=2000)

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            line = _ANSI.sub("", line)
            self.tail.append(line)
            if self.verbose or _CONSOLE.match(line):
                self.terminal.write(line.strip() + "\n" if not self.verbose else line + "\n")
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.terminal.flush()


def failure(lines: Sequence[str]) -> tuple[str, str, str]:
    """(exception type, message, traceback) of the last traceback in a step's output."""
    start = max((i for i, line in enumerate(lines) if line.strip().startswith("Traceback (most recent call")),
                default=0)
    block = list(lines)[start:]
    for line in reversed(block):
        match = _EXCEPTION.match(line)
        if match:
            message = re.sub(r" \[while running '[^']*'\]", "", match.group(2)).strip()
            return match.group(1), message, "\n".join(block)
    return "", "", "\n".join(block)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    try:
        config = parse(argv, description=__doc__)
        if config.trainer_job.custom_job:
            raise ValueError("--trainer_job.* describes a Vertex AI custom job; a local run trains in this process "
                             "(two localhost workers: see benchmarks/multi_worker.py)")
    except ValueError as error:  # a flag value the config refuses (argparse exits itself for unknown flags)
        print(f"error: {error}", file=sys.stderr)
        return 1
    os.makedirs(os.path.join(config.pipeline_root, "logs"), exist_ok=True)
    log_path = os.path.join(config.pipeline_root, "logs", time.strftime("%Y-%m-%d_%H%M%S") + ".log")
    print(f"[pipeline] full output of every step: {log_path}", flush=True)
    if not config.window_bounds:
        started = time.monotonic()
        run_dir = _run(config, log_path, verbose)
        if run_dir:
            _report(run_dir, time.monotonic() - started)
        return 0 if run_dir else 1
    rows, base = [], config.base_model
    for t, window in enumerate(windows(config)):
        eg = window.example_gen
        print(f"[pipeline] window {t}: train on [{eg.window_start or 'start'}, {eg.cut_timestamp}), evaluate on "
              f"[{eg.cut_timestamp}, {eg.window_end})" + (f", warm-started from {base}" if base else ""), flush=True)
        started = time.monotonic()
        run_dir = _run(dataclasses.replace(window, base_model=base), log_path, verbose)
        if not run_dir:
            return 1
        _report(run_dir, time.monotonic() - started)
        artifacts = _artifacts(run_dir)
        base = artifacts["trainer"]
        metrics = read_json(os.path.join(artifacts["evaluator"], "metrics.json"))
        summary = read_json(os.path.join(base, "train_summary.json"))
        rows.append((t, eg.cut_timestamp, eg.window_end, metrics, summary))
    print("\n== llm-hardneg: continuous training, one model per window (evaluated on the next) ==")
    print(window_table(rows))
    return 0


def window_table(rows: list[tuple]) -> str:
    """The loop's closing table: per window (t, trained until, evaluated until, metrics.json, train_summary.json),
    HR and NDCG at the evaluator's first K, HR of returning and new users, the top-100 popular items' share of
    the top-K lists, the pool's share of items new to the base model, and the training time."""
    k = min(int(key.split("@")[1]) for key in rows[0][3] if key.startswith("hit_rate@"))
    lines = [f"| window | trained until | evaluated until | eval queries (new users) | HitRate@{k} | NDCG@{k} | "
             f"HitRate@{k} returning / new users | top-100 items' share of lists | pool's share of new items | "
             "train (s) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for t, cut, end, metrics, summary in rows:
        users = metrics.get("by_user", {})
        new = users.get("new", {}).get("queries", 0)
        by_user = " / ".join(f"{users[g][f'hit_rate@{k}']:.4f}" if g in users else "-" for g in ("returning", "new"))
        share = next((v for key, v in metrics.get("popularity", {}).items() if key.startswith("top100_popular")), None)
        pool = (summary.get("pool") or {}).get("new_item_share")
        lines.append(f"| {t} | {cut} | {end} | {metrics['num_queries']:,} ({new:,}) | {metrics[f'hit_rate@{k}']:.4f} | "
                     f"{metrics[f'ndcg@{k}']:.4f} | {by_user} | {'-' if share is None else f'{share:.3f}'} | "
                     f"{'-' if pool is None else f'{pool:.3f}'} | {summary['train_seconds']:,.0f} |")
    return "\n".join(lines)


def _run(config, log_path: str, verbose: bool) -> str:
    """Runs one pipeline with kfp.local; its run directory, or '' after printing why it failed."""
    before = set(glob.glob(os.path.join(config.pipeline_root, "*")))
    before |= {os.path.join(config.pipeline_root, name) for name in ("cache", "logs")}
    terminal = sys.stdout
    with open(log_path, "a", encoding="utf-8") as log:
        console = _Console(log, terminal, verbose)
        sys.stdout = console
        try:
            from kfp import local

            local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=config.pipeline_root,
                       raise_on_error=True)
            create_pipeline(config)()
        except RuntimeError as error:  # a step failed (kfp.local raises when a task ends in FAILURE)
            sys.stdout = terminal
            kind, message, trace = failure(console.tail)
            step = re.findall(r"Task '([\w\-]+)' finished with status FAILURE", "\n".join(console.tail))
            where = f"{step[0]} failed" if step else "the pipeline failed"
            if kind in USER_ERRORS:
                print(f"error: {where}: {message}\n(traceback in {log_path})", file=sys.stderr)
            else:
                print(f"error: {where} ({error}):\n{trace}\n(full output in {log_path})", file=sys.stderr)
            return ""
        finally:
            sys.stdout = terminal
    new = sorted(set(glob.glob(os.path.join(config.pipeline_root, "*"))) - before, key=os.path.getmtime)
    if not new:
        print("no run directory was created", file=sys.stderr)
        return ""
    return new[-1]


if __name__ == "__main__":
    sys.exit(main())
