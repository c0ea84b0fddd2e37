"""Hard negatives at in-batch cost: shared pool draws, deduplicated embedding, and the full-softmax ceiling.

    python -m benchmarks.negative_sharing [--parts speed,quality] [--sizes 10000,1000000] [--seeds 0,1,2]
        [--datasets ml1m,cds,videogames] [--data-root ../shared/data] [--repeats 2]

speed: training steps of every variant in SPEED at each size (benchmarks.scale's step: SYNTHETIC
  catalogue of zipf popularity, sqrt(items) clusters, users = items, batch 1024, history 20, 16 pool
  negatives per example or M per step shared, lazy Adam), all variants built in one process per size and
  interleaved (--rounds x 10 steps each, median), so a busy machine slows them alike. `embedded_rows`:
  the rows the candidate tower embeds in a step.
quality: HR@10/50/100 over seeds of every variant in QUALITY, and the trainer's examples/s (epoch mean,
  input pipeline included) of the same runs:
  - ml1m: reconstructed ML-1M, global time split, LLM clusters: the `make run` configuration;
  - cds, videogames: Amazon CDs / Video Games 2014, leave_last_out, behavioural clusters (per seed, k-means
    of that seed's first-pass in_batch model, as benchmarks.larger_catalogues does).
  Headroom: full minus in_batch; each sampler's share of it closed: (sampler - in_batch) / headroom.
Writes benchmarks/results/negative_sharing.{json,md,png} after every part and data set (reruns reuse
finished trainings under benchmarks/work).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

import llm_hardneg.components  # noqa: F401  (environment before TensorFlow)
from benchmarks.larger_catalogues import AMAZON, behavioural
from benchmarks.paper_tables import RESULTS, mass_cell, prepare, train_and_evaluate, write_results
from llm_hardneg.components.example_gen import ExampleGenConfig
from llm_hardneg.components.trainer import TrainerConfig

# SHARED: M = the batch (shared_negatives 0), the variants' meaning since they were first measured; the trainer's
# default is M = 256 (the "M=256" variants)
PER_EXAMPLE, SHARED = {"negative_sharing": "per_example"}, {"negative_sharing": "shared", "shared_negatives": 0}
PER_CLUSTER = {"negative_sharing": "per_cluster"}
CACHED = {"negative_embeddings": "cached"}
NO_DEDUP = {"deduplicate_candidates": False}
SPEED = {  # name: (strategy, overrides)
    "in_batch (no dedup)": ("in_batch", NO_DEDUP),
    "in_batch": ("in_batch", {}),
    "oob per-example (no dedup)": ("oob", {**PER_EXAMPLE, **NO_DEDUP}),
    "oob per-example dedup": ("oob", PER_EXAMPLE),
    "oob shared": ("oob", SHARED),
    "cluster_oob per-example (no dedup)": ("cluster_oob", {**PER_EXAMPLE, **NO_DEDUP}),
    "cluster_oob per-example dedup": ("cluster_oob", PER_EXAMPLE),
    "cluster_oob per-cluster": ("cluster_oob", PER_CLUSTER),
    "cluster_oob shared": ("cluster_oob", SHARED),
    "cluster_oob shared M=256": ("cluster_oob", {**SHARED, "shared_negatives": 256}),
    "cluster_oob shared M=128": ("cluster_oob", {**SHARED, "shared_negatives": 128}),
    "full": ("full", {}),
    "cluster_oob per-example cached": ("cluster_oob", {**PER_EXAMPLE, **CACHED}),
    "cluster_oob shared M=256 cached": ("cluster_oob", {**SHARED, "shared_negatives": 256, **CACHED}),
}
# measured in two processes per size (five [10^6, 64] towers with Adam moments at most in one), each with in_batch
SPEED_GROUPS = (("in_batch", "in_batch (no dedup)", "oob per-example (no dedup)", "oob per-example dedup",
                 "cluster_oob per-example (no dedup)", "full"),
                ("in_batch", "cluster_oob per-example dedup", "cluster_oob per-cluster", "cluster_oob shared",
                 "cluster_oob shared M=256", "cluster_oob shared M=128"),
                ("in_batch", "oob shared"),
                ("in_batch", "cluster_oob per-example dedup", "cluster_oob per-example cached",
                 "cluster_oob shared M=256 cached"))
QUALITY = {  # deduplication changes no figure (tests/test_negative_sharing.py), so it is on throughout
    "in_batch": ("in_batch", {}),  # in the order they are trained: the most telling first
    "full": ("full", {}),
    "cluster_oob per-example": ("cluster_oob", PER_EXAMPLE),
    "cluster_oob per-cluster": ("cluster_oob", PER_CLUSTER),
    "cluster_oob shared": ("cluster_oob", SHARED),
    "cluster_oob shared M=256": ("cluster_oob", {**SHARED, "shared_negatives": 256}),
    "oob": ("oob", PER_EXAMPLE),
    "cluster_oob per-example cached": ("cluster_oob", {**PER_EXAMPLE, **CACHED}),
}
METRICS = ("hr10", "hr50", "hr100")
KS = (10, 50, 100)
DATASETS = {"ml1m": ("ml1m_reconstructed", "ml-1m"), "cds": ("amazon_cds_2014", AMAZON["amazon_cds_2014"]),
            "videogames": ("amazon_videogames_2014", AMAZON["amazon_videogames_2014"])}  # name: (work folder, data)


def speed(sizes: list[str], rounds: int) -> list[dict]:
    """Every SPEED variant at each size, one process per size (its peak memory apart)."""
    rows = []
    for items in sizes:
        for group, variants in enumerate(SPEED_GROUPS):
            print(f"[negative_sharing] speed on {items}: {', '.join(variants)}", flush=True)
            done = subprocess.run([sys.executable, "-m", "benchmarks.negative_sharing", "--one-size", items,
                                   "--variants", ",".join(variants), "--rounds", str(rounds)],
                                  capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("[{")]
            if done.returncode != 0 or not lines:
                print(done.stdout[-2000:], done.stderr[-4000:], file=sys.stderr)
                rows.append({"items": items, "variant": ", ".join(variants), "error": f"exit {done.returncode}"})
                continue
            rows += [{**r, "group": group} for r in json.loads(lines[-1]) if group == 0 or r["variant"] != "in_batch"]
    return rows


def _synthetic(items: int):
    """benchmarks.scale's SYNTHETIC catalogue, users and 8 batches."""
    from benchmarks.scale import HISTORY, catalogue_of, synthetic_batches

    catalogue, cdf = catalogue_of(items)
    users = np.char.add("u", np.arange(items).astype(str)).tolist()
    return catalogue, users, synthetic_batches(catalogue, cdf, items), HISTORY


def _ml1m():
    """Reconstructed ML-1M as the quality part prepared it (examples and LLM clusters under benchmarks/work):
    its catalogue, users and the first 8 shuffled training batches of 1024 (history 20, the default)."""
    from benchmarks.paper_tables import WORK
    from llm_hardneg.components.common.fileio import read_lines
    from llm_hardneg.components.trainer.data import example_files, load_catalogue, make_dataset

    root = os.path.join(WORK, "ml1m_reconstructed")
    examples = os.path.join(root, "examples")
    if not os.path.exists(os.path.join(examples, "users.txt")):
        raise SystemExit(f"no ML-1M examples in {examples}: run the quality part on ml1m first")
    catalogue = load_catalogue(os.path.join(examples, "items"), os.path.join(root, "clusters_auto", "llm"))
    history = TrainerConfig().history_length
    data = make_dataset(example_files(examples, "train"), 1024, history, shuffle_buffer=100_000)
    batches = [{k: v.numpy() for k, v in b.items() if k != "timestamp"} for b in data.take(8)]
    return catalogue, read_lines(os.path.join(examples, "users.txt")), batches, history


def measure_size(size: str, variants: list[str], rounds: int, steps: int = 10) -> list[dict]:
    """The SPEED variants' training steps on one catalogue (a number of SYNTHETIC items, or 'ml1m'),
    interleaved: `rounds` times, `steps` steps of each variant in turn (a busy machine slows every variant
    alike); median step time per variant."""
    import tensorflow as tf

    from llm_hardneg.components.trainer.model import TwoTowerModel
    from llm_hardneg.components.trainer.optimizer import make_optimizer

    catalogue, users, batches, history_length = _ml1m() if size == "ml1m" else _synthetic(int(size))
    items, batch_size = (size if size == "ml1m" else int(size)), len(batches[0]["label"])
    data = tf.data.Dataset.from_tensor_slices({k: np.stack([b[k] for b in batches]) for k in batches[0]}).repeat()
    trains, rows = {}, {}
    for name in variants:
        strategy, overrides = SPEED[name]
        config = TrainerConfig(strategy=strategy, history_length=history_length, **overrides)
        try:
            model = TwoTowerModel(config, catalogue, users)
        except ValueError as error:  # 'full' beyond its memory
            rows[name] = {"items": items, "variant": name, "error": str(error)}
            continue
        model.compile(optimizer=make_optimizer(config.optimizer, config.learning_rate))
        model.preload_pool(catalogue)
        train, iterator = model.make_train_function(), iter(data)
        for _ in range(5):  # tracing and warm-up
            logs = train(iterator)
        trains[name] = (train, iterator)
        rows[name] = {"items": items, "variant": name, "times": []}
    for _ in range(rounds):
        for name, (train, iterator) in trains.items():
            for _ in range(steps):
                started = time.perf_counter()
                logs = train(iterator)
                float(logs["loss"])
                rows[name]["times"].append(time.perf_counter() - started)
            rows[name]["embedded_rows"] = float(logs["embedded_rows"])
            rows[name]["pool_draws"] = float(logs.get("pool_draws", 0.0))
    for row in rows.values():
        if "times" in row:
            step = statistics.median(row.pop("times"))
            row.update(step_ms=1e3 * step, examples_per_second=batch_size / step)
    base = rows["in_batch"]
    for row in rows.values():
        if "error" not in row:
            row["vs_in_batch"] = row["examples_per_second"] / base["examples_per_second"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return [{**row, "process_peak_mb": peak} for row in rows.values()]


def quality(name: str, root: str, seeds: list[int], variants=tuple(QUALITY), written=lambda partial: None,
            full_seeds: list[int] | None = None, previous: dict | None = None) -> dict:
    """Every QUALITY variant over seeds on one data set; the headroom and the share each sampler closes.
    `full_seeds`: the seeds of the `full` row alone (the costliest: 0.06x of in_batch's speed at 35k items),
    by default `seeds`. `previous`: rows of an earlier results table of this data set to keep instead of
    training them again (same code for that variant; marked `kept_from_previous_results`). `written(partial)`
    is called after every variant with the table so far."""
    dataset, folder = DATASETS[name]
    if name == "ml1m":
        examples, clusters = prepare(dataset, ExampleGenConfig.movielens(os.path.join(root, folder)))
        tables, source = {seed: clusters for seed in seeds}, "llm"
    else:
        examples, clusters = prepare(dataset, ExampleGenConfig(
            source="generic", interactions=os.path.join(root, folder, "interactions.csv.gz"), split="leave_last_out"))
        tables, source = {}, "behavioural"
        for seed in seeds:  # larger_catalogues' first pass: its tags, so either benchmark reuses the other's runs
            first = TrainerConfig(strategy="in_batch", cluster_source="category", seed=seed, **PER_EXAMPLE)
            model = train_and_evaluate(first, examples, clusters, f"{dataset}-in_batch-category-{seed}", KS)
            tables[seed] = behavioural(model["model_dir"], examples, dataset, seed)
    with open(os.path.join(examples, "summary.json"), encoding="utf-8") as f:
        items = json.load(f)["items_out"]
    rows = {}
    table = {"dataset": name, "items": items, "clusters": source, "seeds": seeds, "rows": rows}
    for variant in variants:
        strategy, overrides = QUALITY[variant]
        row_seeds = full_seeds if variant == "full" and full_seeds else seeds
        if variant in (previous or {}):
            rows[variant] = {**previous[variant], "kept_from_previous_results": True}
            print(f"[negative_sharing] {name}: {variant} kept from the previous results", flush=True)
        else:
            runs = [train_and_evaluate(TrainerConfig(strategy=strategy, cluster_source=source, seed=seed,
                                                     **overrides),
                                       examples, tables[seed], f"sharing-{name}-{variant.replace(' ', '_')}-{seed}",
                                       KS)
                    for seed in row_seeds]
            rows[variant] = {"seeds": row_seeds,
                             **{f"{m}_{f.__name__}": f([r[m] for r in runs]) for m in METRICS
                                for f in (statistics.mean, statistics.pstdev)},
                             "per_seed": {m: [r[m] for r in runs] for m in METRICS},
                             "examples_per_second": statistics.mean(r["examples_per_second"] for r in runs
                                                                    if r["examples_per_second"]),
                             "mass": {s: statistics.mean(r["mass"].get(s, 0.0) for r in runs)
                                      for s in runs[0]["mass"]}}
        _relative(rows)
        written(table)
    return table


def _relative(rows: dict) -> None:
    """Each row's speed against in_batch, and the share of the headroom (full - in_batch) it closes."""
    base, ceiling = rows["in_batch"], rows.get("full")
    for row in rows.values():
        if not (row.get("kept_from_previous_results") and "vs_in_batch_speed" in row):  # a kept row keeps the
            row["vs_in_batch_speed"] = row["examples_per_second"] / base["examples_per_second"]  # ratio of its run
        for m in METRICS:
            headroom = ceiling[f"{m}_mean"] - base[f"{m}_mean"] if ceiling else 0.0
            closed = (row[f"{m}_mean"] - base[f"{m}_mean"]) / headroom if headroom > 0 else None
            row[f"{m}_headroom_closed"] = closed  # None: full is not above in_batch


def markdown(result: dict) -> str:
    lines = ["Shared pool draws, deduplicated candidate embedding and the full softmax (`python -m "
             "benchmarks.negative_sharing`).", ""]
    if result.get("speed"):
        lines += ["**Training step, SYNTHETIC catalogue** (batch 1024, history 20, 16 pool negatives per example or "
                  "M shared per step (M = the batch unless named; the trainer's default is M = 256), lazy Adam; "
                  "variants interleaved in one process, "
                  f"{result.get('rounds')} rounds x 10 steps, median; ratio to `in_batch` with its default "
                  "deduplication, same process)",
                  "", "| items | variant | step (ms) | examples/s | vs in_batch | rows embedded per step |",
                  "|---|---|---|---|---|---|"]
        for r in result["speed"]:
            size = "ML-1M (real batches)" if r["items"] == "ml1m" else f"{r['items']:,} synthetic"
            if "error" in r:
                lines.append(f"| {size} | {r['variant']} | {r['error'][:160]} | | | |")
                continue
            lines.append(f"| {size} | {r['variant']} | {r['step_ms']:.1f} | {r['examples_per_second']:,.0f} "
                         f"| {r.get('vs_in_batch', 0):.2f}x | {r.get('embedded_rows', 0):,.0f} |")
        lines.append("")
    for q in result.get("quality", []):
        lines += [f"**{q['dataset']}** ({q['items']:,} items, {q['clusters']} clusters, seeds {q['seeds']}, mean ± "
                  "std; trainer examples/s: epoch mean of the same runs; headroom closed: (variant - in_batch) / "
                  "(full - in_batch))", "",
                  "| variant | HR@10 | HR@50 | HR@100 | headroom closed (HR@10 / HR@50) | examples/s | vs in_batch "
                  "| softmax mass |", "|---|---|---|---|---|---|---|---|"]
        for name, r in q["rows"].items():
            cells = " | ".join(f"{r[f'{m}_mean']:.4f} ± {r[f'{m}_pstdev']:.4f}" for m in METRICS)
            if r.get("seeds", q["seeds"]) != q["seeds"]:
                name = f"{name} (seeds {r['seeds']})"
            closed = " / ".join(_closed(q["rows"], r, m) for m in ("hr10", "hr50"))
            if r.get("kept_from_previous_results"):
                name = f"{name} (kept from an earlier run; its speed against that run's in_batch)"
            lines.append(f"| {name} | {cells} | {closed} | {r['examples_per_second']:,.0f} | "
                         f"{r['vs_in_batch_speed']:.2f}x | {mass_cell(r['mass'])} |")
        lines.append("")
    return "\n".join(lines)


def _closed(rows: dict, row: dict, metric: str) -> str:
    """The share of the headroom (full minus in_batch) a variant closes; 'no headroom' when full is not above."""
    if "full" not in rows or row is rows["in_batch"] or row is rows["full"]:
        return "-"
    base = rows["in_batch"][f"{metric}_mean"]
    headroom = rows["full"][f"{metric}_mean"] - base
    if headroom <= 0:
        return f"no headroom ({100 * (row[f'{metric}_mean'] / base - 1):+.1f}% vs in_batch)"
    return f"{100 * (row[f'{metric}_mean'] - base) / headroom:.0f}%"


def plot(result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("speed", None)] if result.get("speed") else []
    panels += [("quality", q) for q in result.get("quality", [])]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (kind, q) in zip(axes[0], panels):
        if kind == "speed":
            sizes = list(dict.fromkeys(r["items"] for r in result["speed"]))
            names = list(dict.fromkeys(r["variant"] for r in result["speed"]))
            width = 0.8 / len(sizes)
            for k, items in enumerate(sizes):
                values = {r["variant"]: r.get("vs_in_batch", 0.0) for r in result["speed"] if r["items"] == items}
                ax.barh([i + k * width for i in range(len(names))], [values.get(n, 0.0) for n in names], width,
                        label="ML-1M" if items == "ml1m" else f"{items:,} items")
            ax.set_yticks([i + width * (len(sizes) - 1) / 2 for i in range(len(names))], names, fontsize=7)
            ax.axvline(0.9, color="k", ls="--", lw=0.8)
            ax.set_xlabel("training step examples/s vs in_batch")
            ax.legend(fontsize=7)
        else:
            names = list(q["rows"])
            ax.bar(range(len(names)), [q["rows"][n]["hr50_mean"] for n in names],
                   yerr=[q["rows"][n]["hr50_pstdev"] for n in names], color="tab:blue")
            ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=7)
            low = min(q["rows"][n]["hr50_mean"] for n in names)
            ax.set_ylim(low * 0.95, max(q["rows"][n]["hr50_mean"] for n in names) * 1.02)
            ax.set_title(f"{q['dataset']} ({q['items']:,} items)", fontsize=9)
            ax.set_ylabel("HR@50")
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "negative_sharing.png"), dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="speed,quality")
    parser.add_argument("--sizes", default="10000,1000000,ml1m",
                        help="speed: SYNTHETIC catalogue sizes, and 'ml1m' (the real catalogue and batches)")
    parser.add_argument("--rounds", type=int, default=4, help="speed: interleaved rounds of 10 steps per variant")
    parser.add_argument("--quality-variants", default=",".join(QUALITY), help="quality: these, in this order "
                        "(in_batch first)")
    parser.add_argument("--one-size", help=argparse.SUPPRESS)
    parser.add_argument("--variants", default=",".join(SPEED), help=argparse.SUPPRESS)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--full-seeds", default="", help="quality: the seeds of the `full` row (default: --seeds)")
    parser.add_argument("--keep-previous", default="", help="quality: variants whose rows in the existing results "
                        "file are kept instead of trained again (e.g. 'full', when its code has not changed)")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--data-root", default=os.environ.get("DATA_ROOT", os.path.join("..", "shared", "data")))
    args = parser.parse_args()
    if args.one_size:
        print(json.dumps(measure_size(args.one_size, args.variants.split(","), args.rounds)), flush=True)
        return
    unknown = sorted(set(args.datasets.split(",")) - set(DATASETS))
    if unknown:
        raise SystemExit(f"unknown data sets {unknown}: choose from {sorted(DATASETS)}")
    unknown = sorted(set(args.quality_variants.split(",")) - set(QUALITY))
    if unknown or not args.quality_variants.startswith("in_batch"):
        raise SystemExit(f"--quality-variants: unknown {unknown} or not in_batch first; choose from {list(QUALITY)}")
    path = os.path.join(RESULTS, "negative_sharing.json")
    result = json.load(open(path, encoding="utf-8")) if os.path.exists(path) else {}
    started = time.monotonic()
    for part in args.parts.split(","):
        if part == "speed":
            result.update(speed=speed(args.sizes.split(","), args.rounds), rounds=args.rounds)
        elif part == "quality":
            keep = set(args.keep_previous.split(",")) - {""}
            previous = {q["dataset"]: {v: {"seeds": q["seeds"], **r} for v, r in q["rows"].items() if v in keep}
                        for q in result.get("quality", [])}
            kept = [q for q in result.get("quality", []) if q["dataset"] not in args.datasets.split(",")]
            result["quality"] = kept
            for name in args.datasets.split(","):
                def written(partial: dict, done: list = result["quality"]) -> None:
                    result["quality"] = [*done, partial]
                    write_results("negative_sharing", result, markdown(result))
                    plot(result)

                quality(name, os.path.abspath(args.data_root), [int(s) for s in args.seeds.split(",")],
                        args.quality_variants.split(","), written,
                        [int(s) for s in args.full_seeds.split(",") if s], previous.get(name))
        elif part != "render":  # render: the Markdown and plot again from the JSON
            raise SystemExit(f"unknown part {part!r}: use speed, quality, render")
        result["wall_seconds"] = time.monotonic() - started
        write_results("negative_sharing", result, markdown(result))
        plot(result)


if __name__ == "__main__":
    main()
