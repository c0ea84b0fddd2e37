"""Continuous training over time windows: warm-started per-window training against retraining from scratch.

    python -m benchmarks.windows [--windows 4] [--first-fraction 0.8] [--seeds 0] [--warm-epochs 1[,3,6]]
        [--ml1m-dir ../shared/data/ml-1m] [--dataset ml1m|epinions]

ML-1M (the `make run` file), time line cut by example_gen.core.window_bounds: the first 80% of the
interactions (by time) are window 0, the rest `--windows` windows of equal interaction counts.
Prequential protocol: the model trained through window t is evaluated on window t + 1 (example_gen's
`cut_timestamp` / `window_end`; histories always from everything earlier).
- scratch: every window retrains from scratch on all data before the window's end (the trainer's
  defaults: 3 epochs);
- warm: window 0's model is the scratch one; window t >= 1 trains `--warm-epochs` on window t's
  interactions only (`window_start`), warm-started from window t - 1's model (`warm_start_from`: rows
  carried by id, new items at their cluster's mean, the user vocabulary grows, optimizer reset).
Both models of a window are scored on the same evaluation examples over the full catalogue; HR@50 is also
split by the target's training examples in all data before the window (0 = an item new in the evaluation
window, 1-4, 5+) and by user (returning: with interactions before the window's end; new: without).
Writes benchmarks/results/windows.{json,md,png}.

`--dataset epinions [--evict N]`: Epinions (296,277 items, most rated once: a catalogue whose items keep arriving),
time as 11 periods; window 0 is periods 1-7 (the time split's cut at 8), evaluated on period 8, then one
window per period (9, 10, 11). Category clusters. Besides scratch and warm (whose vocabulary is the whole
item table, `item_vocabulary catalogue`), two warm chains whose vocabulary is what was trained on:
`warm_trained` (`item_vocabulary trained`: the vocabulary grows, an item first rated in window t gets its
row, at its cluster's mean, in window t's model) and `warm_base` (`item_vocabulary base`: frozen at window 0's
trained items, every later item on the shared unknown-item row: the out-of-vocabulary baseline), and
`warm_trained_late_pool` (as warm_trained, but the pool is preloaded with the base's items only: a new item
enters it with its first batch instead of at step 1, `preload_new_items false`). The vocabulary chains
start from one window-0 model trained from scratch with `item_vocabulary trained`; `--evict N` adds a
warm_trained chain that evicts ids idle for N windows (`evict_idle_windows`). Writes
benchmarks/results/windows_epinions.{json,md,png}.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import statistics

import numpy as np

import llm_hardneg.components  # noqa: F401  (environment before TensorFlow)
from benchmarks.paper_tables import RESULTS, WORK, prepare, write_results
from llm_hardneg.components.common.step import step_run
from llm_hardneg.components.evaluator import EvaluatorConfig, run_evaluator
from llm_hardneg.components.example_gen import ExampleGenConfig, core, run_example_gen
from llm_hardneg.components.trainer import TrainerConfig, run_trainer

KS = (10, 50, 100)
EPINIONS_BOUNDS = (8, 9, 10, 11, 12)
VOCABULARY_CHAINS = {"warm_trained": {"item_vocabulary": "trained"}, "warm_base": {"item_vocabulary": "base"},
                     "warm_trained_late_pool": {"item_vocabulary": "trained", "preload_new_items": False}}


def ml1m_timestamps(path: str) -> np.ndarray:
    """The timestamps of a MovieLens `user::item::rating::timestamp` file."""
    with open(path, encoding="latin-1") as f:
        return np.fromiter((int(line.rsplit("::", 1)[1]) for line in f if line.strip()), dtype=np.int64)


def examples(name: str, config: ExampleGenConfig) -> str:
    out = os.path.join(WORK, "windows", name)
    with step_run("example_gen", out, json.dumps(dataclasses.asdict(config)), [], os.path.join(WORK, "cache")) as run:
        if run.needed:
            run_example_gen(config, out)
    return out


def window_new_items(scratch_examples: str, warm_examples: str, name: str) -> str | None:
    """Evaluation examples (of `scratch_examples`) whose target is an item new in window t: every training
    example of it so far is in window t (`warm_examples`' training examples). Written once under
    benchmarks/work/windows/<name> (eval/ filtered, items/ and users.txt as they are); None without any."""
    import shutil

    import tensorflow as tf

    from llm_hardneg.components.common.tables import read_item_table

    out = os.path.join(WORK, "windows", name)
    if os.path.exists(os.path.join(out, "summary.json")):
        return out if json.load(open(os.path.join(out, "summary.json")))["eval_examples"] else None
    so_far, window = (read_item_table(os.path.join(d, "items")) for d in (scratch_examples, warm_examples))
    assert (so_far["item_id"] == window["item_id"]).all()  # the same item table, in the same order
    new = set(so_far["item_id"][(window["train_count"] > 0) & (window["train_count"] == so_far["train_count"])])
    os.makedirs(os.path.join(out, "eval"), exist_ok=True)
    kept = positives = 0
    with tf.io.TFRecordWriter(os.path.join(out, "eval", "part-00000.tfrecord")) as writer:
        for path in sorted(glob.glob(os.path.join(scratch_examples, "eval", "*.tfrecord"))):
            for record in tf.data.TFRecordDataset(path):
                example = tf.train.Example.FromString(record.numpy())
                if example.features.feature["item_id"].bytes_list.value[0].decode() in new:
                    writer.write(record.numpy())
                    kept += 1
                    positives += example.features.feature["label"].int64_list.value[0] > 0
    shutil.copytree(os.path.join(scratch_examples, "items"), os.path.join(out, "items"), dirs_exist_ok=True)
    shutil.copy(os.path.join(scratch_examples, "users.txt"), os.path.join(out, "users.txt"))
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump({"eval_examples": kept, "eval_positives": int(positives), "new_items": len(new)}, f)
    print(f"[windows] {name}: {len(new):,} items new in the window, {kept:,} evaluation examples target one",
          flush=True)
    return out if kept else None


def train(config: TrainerConfig, examples_dir: str, clusters: str, tag: str, eval_examples: str,
          new_items: str | None = None) -> dict:
    """Trains (or reuses the finished run of `tag`), evaluates on `eval_examples` (and on `new_items`' examples:
    `window_new_items`); metrics and wall time."""
    out = os.path.join(WORK, "models", tag)
    done = os.path.join(out, "eval", "metrics.json")
    summary_path = os.path.join(out, "train_summary.json")
    if not os.path.exists(summary_path):
        run_trainer(config, examples_dir, clusters, out)
    if stale(done, "by_user"):  # scored before the tie rule or the split by user: scored again
        run_evaluator(EvaluatorConfig(ks=KS), out, eval_examples, os.path.join(out, "eval"), config.history_length)
    new_done = os.path.join(out, "eval_new_items", "metrics.json")
    if new_items and stale(new_done):
        run_evaluator(EvaluatorConfig(ks=KS), out, new_items, os.path.join(out, "eval_new_items"),
                      config.history_length)
    new_metrics = json.load(open(new_done, encoding="utf-8")) if new_items else None
    metrics = json.load(open(done, encoding="utf-8"))
    summary = json.load(open(summary_path, encoding="utf-8"))
    by = metrics["by_target_frequency"]
    return {"model_dir": out, "train_seconds": summary["train_seconds"], "train_examples": summary[
        "train_examples_per_epoch"], **{f"hr{k}": metrics[f"hit_rate@{k}"] for k in KS},
            "ndcg10": metrics["ndcg@10"], "popularity": metrics.get("popularity"),
            "hr50_by_frequency": {g: v["hit_rate@50"] for g, v in by.items()},
            "queries_by_frequency": {g: v["queries"] for g, v in by.items()},
            "hr50_by_user": {g: v["hit_rate@50"] for g, v in metrics["by_user"].items()},
            "queries_by_user": {g: v["queries"] for g, v in metrics["by_user"].items()},
            "warm_start": summary.get("warm_start"), "item_vocabulary": summary.get("item_vocabulary"),
            "pool_new_item_share": (summary.get("pool") or {}).get("new_item_share"),
            **({"hr50_new_items": new_metrics["hit_rate@50"], "queries_new_items": new_metrics["num_queries"]}
               if new_metrics else {})}


def stale(metrics_path: str, *keys: str) -> bool:
    """Whether an evaluation is missing, lacks one of `keys`, or ranked ties by another rule than today's."""
    if not os.path.exists(metrics_path):
        return True
    metrics = json.load(open(metrics_path, encoding="utf-8"))
    return metrics.get("ties") != EvaluatorConfig().ties or any(key not in metrics for key in keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--first-fraction", type=float, default=0.8)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--warm-epochs", default="1", help="epochs of a warm-started window; a list (1,3,6) adds a "
                        "warm chain per further value (warm_3ep, ...)")
    parser.add_argument("--ml1m-dir", default=os.path.join(os.environ.get("DATA_ROOT", os.path.join("..", "shared",
                                                                                                    "data")), "ml-1m"))
    parser.add_argument("--dataset", default="ml1m", choices=("ml1m", "epinions"))
    parser.add_argument("--evict", type=int, default=0,
                        help="epinions: also a warm_trained chain that evicts ids idle for this many windows")
    parser.add_argument("--replay-windows", type=int, default=0,
                        help="ml1m: also a warm chain that trains window t with the K windows before it (replay)")
    parser.add_argument("--data-root", default=os.environ.get("DATA_ROOT", os.path.join("..", "shared", "data")))
    args = parser.parse_args()
    epochs = [int(e) for e in args.warm_epochs.split(",")]
    args.warm_epochs = epochs[0]
    if args.dataset == "ml1m":
        base = ExampleGenConfig.movielens(args.ml1m_dir)
        bounds = core.window_bounds(ml1m_timestamps(base.interactions), args.windows, args.first_fraction)
        _, clusters = prepare("ml1m", base)  # LLM clusters of the catalogue (the same items in every window)
        trainer, name, prefix = TrainerConfig(), "windows", ""
        chains = {f"warm_replay{args.replay_windows}": {"replay": args.replay_windows}} if args.replay_windows else {}
        chains.update({f"warm_{e}ep": {"epochs": e, "tag": f"warm{e}"} for e in epochs[1:]})
    else:
        data = os.path.join(os.path.abspath(args.data_root), "epinions-2012")
        base = ExampleGenConfig(source="generic", interactions=os.path.join(data, "interactions.csv.gz"),
                                items=os.path.join(data, "items.csv.gz"), split="time")
        bounds = list(EPINIONS_BOUNDS)  # periods 1-11: window 0 ends at the time split's cut (8), then one a period
        args.windows = len(bounds) - 1
        _, clusters = prepare("epinions_time", base)  # the catalogue's 27 categories
        trainer, chains, name = TrainerConfig(cluster_source="category"), dict(VOCABULARY_CHAINS), "windows_epinions"
        prefix = "epinions_"
        if args.evict:
            chains[f"warm_trained_evict{args.evict}"] = {"item_vocabulary": "trained", "evict_idle_windows": args.evict}
    print(f"[windows] {args.dataset}: bounds {bounds}", flush=True)
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        previous = {"warm": None, **{chain: None for chain in chains}}
        for t in range(args.windows):  # the model trained through window t, evaluated on window t + 1
            cut, end = bounds[t], bounds[t + 1]
            scratch_examples = examples(f"{prefix}scratch_{t}", dataclasses.replace(
                base, cut_timestamp=cut, window_end=end))
            scratch = train(dataclasses.replace(trainer, seed=seed), scratch_examples, clusters,
                            f"{name}-scratch-{t}-{seed}", scratch_examples)
            row = {"seed": seed, "window": t, "train_until": cut, "eval_until": end, "scratch": scratch}
            if t == 0:
                row["warm"], previous["warm"] = scratch, scratch["model_dir"]
                for chain, spec in chains.items():  # one window-0 model of the trained items starts both
                    first = scratch  # vocabulary chains; the others start from the scratch model
                    if spec.get("item_vocabulary", "catalogue") != "catalogue":
                        first = train(dataclasses.replace(trainer, seed=seed, item_vocabulary="trained"),
                                      scratch_examples, clusters, f"{name}-scratch_trained-{t}-{seed}",
                                      scratch_examples)
                    row[chain], previous[chain] = first, first["model_dir"]
            else:
                warm_examples = examples(f"{prefix}warm_{t}", dataclasses.replace(
                    base, window_start=bounds[t - 1], cut_timestamp=cut, window_end=end))
                new_items = window_new_items(scratch_examples, warm_examples, f"{prefix}new_items_{t}") \
                    if chains and args.dataset == "epinions" else None
                if new_items:  # the scratch model on the window's new items too
                    row["scratch"] = train(dataclasses.replace(trainer, seed=seed), scratch_examples, clusters,
                                           f"{name}-scratch-{t}-{seed}", scratch_examples, new_items)
                for chain, spec in {"warm": {}, **chains}.items():
                    config = dataclasses.replace(trainer, seed=seed, epochs=spec.get("epochs", args.warm_epochs),
                                                 warm_start_from=previous[chain],
                                                 item_vocabulary=spec.get("item_vocabulary", "catalogue"),
                                                 evict_idle_windows=spec.get("evict_idle_windows", 0),
                                                 preload_new_items=spec.get("preload_new_items", True))
                    data = warm_examples
                    if spec.get("replay") and t - 1 - spec["replay"] < 0:  # no K whole windows before yet
                        row[chain], previous[chain] = row["warm"], row["warm"]["model_dir"]
                        continue
                    if spec.get("replay"):  # also the K windows before
                        data = examples(f"{prefix}replay{spec['replay']}_{t}", dataclasses.replace(
                            base, window_start=bounds[t - 1 - spec["replay"]], cut_timestamp=cut, window_end=end))
                    tag = spec.get("tag", f"{chain}{args.warm_epochs}")  # warm3: a warm chain of 3 epochs
                    row[chain] = train(config, data, clusters, f"{name}-{tag}-{t}-{seed}",
                                       scratch_examples, new_items)
                    previous[chain] = row[chain]["model_dir"]
            print(f"[windows] seed {seed} window {t}: HR@50 " + ", ".join(
                f"{m} {row[m]['hr50']:.4f} ({row[m]['train_seconds']:.0f}s)" for m in ("scratch", "warm", *chains)),
                flush=True)
            runs.append(row)
            # after every window: an interrupted run leaves the windows it finished (a rerun reuses their models)
            result = {"dataset": args.dataset, "bounds": bounds, "windows": len({r["window"] for r in runs}),
                      "first_fraction": args.first_fraction, "warm_epochs": args.warm_epochs,
                      "chains": list(chains), "runs": runs}
            write_results(name, result, markdown(result))
            plot(result, name)


def _mean(rows: list[dict], path: tuple) -> float:
    values = []
    for r in rows:
        for key in path:
            r = r[key]
        values.append(r)
    return statistics.mean(values)


def markdown(result: dict) -> str:
    if result.get("dataset", "ml1m") == "ml1m":
        intro = (f"Continuous training on ML-1M (`python -m benchmarks.windows`): the first "
                 f"{result['first_fraction']:.0%} of the interactions, then {result['windows']} windows of equal "
                 "interaction counts")
    else:
        intro = ("Continuous training on Epinions (`python -m benchmarks.windows --dataset epinions`): periods 1-7, "
                 f"then one window a period (bounds {result['bounds']})")
    lines = [intro + "; the model trained through window t is evaluated on window t + 1 over the "
             "full catalogue. scratch: 3 epochs on all data so far; warm: "
             f"{result['warm_epochs']} epoch{'s' if result['warm_epochs'] != 1 else ''} on window t only, "
             "warm-started from window t - 1 (window 0 is the "
             "scratch model). HR@50 by the target's training examples in all data so far: 0 (new item) / 1-4 / "
             f"5+. Mean over seeds {sorted({r['seed'] for r in result['runs']})}.", "",
             "| window | trained until | eval queries (new users) | scratch HR@50 | warm HR@50 | warm / scratch "
             "| scratch HR@50 0 / 1-4 / 5+ | warm HR@50 0 / 1-4 / 5+ | scratch HR@50 returning / new users "
             "| warm HR@50 returning / new users | scratch train (s) | warm train (s) | warm / scratch time |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in range(result["windows"]):
        rows = [r for r in result["runs"] if r["window"] == t]
        s, w = _mean(rows, ("scratch", "hr50")), _mean(rows, ("warm", "hr50"))
        st, wt = _mean(rows, ("scratch", "train_seconds")), _mean(rows, ("warm", "train_seconds"))
        groups = rows[0]["scratch"]["hr50_by_frequency"].keys()
        by = {m: " / ".join(f"{_mean(rows, (m, 'hr50_by_frequency', g)):.4f}" for g in groups)
              for m in ("scratch", "warm")}
        users = {m: " / ".join(f"{_mean(rows, (m, 'hr50_by_user', g)):.4f}" for g in ("returning", "new"))
                 for m in ("scratch", "warm")}
        queries, new = sum(rows[0]["scratch"]["queries_by_frequency"].values()), rows[0]["scratch"]["queries_by_user"]
        lines.append(f"| {t} | {rows[0]['train_until']} | {queries:,} ({new['new']:,})"
                     f" | {s:.4f} | {w:.4f} | {w / s:.3f} | {by['scratch']} | {by['warm']} | {users['scratch']} | "
                     f"{users['warm']} | {st:,.0f} | {wt:,.0f} | {wt / st:.2f} |")
    if result.get("chains"):
        lines += ["", "Item vocabulary (`--trainer.item_vocabulary`): catalogue = every item of the table has a row "
                  "from the start (scratch, warm); trained = the items trained on so far, growing (warm_trained); base "
                  "= window 0's trained items, frozen, later items on the unknown-item row (warm_base); "
                  "warm_trained_late_pool: new items enter the pool with their first batch, not at step 1. "
                  "warm_replayK: warm-started like warm, trained on window t and the K windows before it "
                  "(window t's own model where fewer precede it). warm_Nep: warm with N epochs a window.", "",
                  "| window | model | item vocabulary | items with rows (new to the base) | evicted items / users (MB "
                  "freed) | pool's share of new items | HR@10 | NDCG@10 | HR@50 | HR@50 0 / 1-4 / 5+ | HR@50 on the "
                  "window's new items (queries) | top-100 items' share of lists / catalogue share listed | train (s) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for t in range(result["windows"]):
            rows = [r for r in result["runs"] if r["window"] == t]
            for m in ("scratch", "warm", *result["chains"]):
                vocabulary = rows[0][m].get("item_vocabulary") or {"kind": "catalogue"}
                size = (f"{vocabulary['items']:,}" + (f" ({vocabulary['new_items']:,})" if "new_items" in vocabulary
                                                      else "")) if vocabulary["kind"] != "catalogue" else "all"
                groups = rows[0][m]["hr50_by_frequency"].keys()
                by = " / ".join(f"{_mean(rows, (m, 'hr50_by_frequency', g)):.4f}" for g in groups)
                share = rows[0][m].get("pool_new_item_share")
                share = "-" if share is None else f"{share:.3f}"
                evicted = (f"{vocabulary.get('evicted', 0):,} / {vocabulary.get('users_evicted', 0):,} "
                           f"({vocabulary.get('evicted_bytes', 0) / 2**20:.1f})") if "evicted_bytes" in vocabulary \
                    else "-"
                fresh = (f"{_mean(rows, (m, 'hr50_new_items')):.4f} ({rows[0][m]['queries_new_items']:,})"
                         if "hr50_new_items" in rows[0][m] else "-")
                popularity = "-" if not rows[0][m].get("popularity") else (
                    f"{_mean(rows, (m, 'popularity', 'top100_popular_share_of_top100')):.3f} / "
                    f"{_mean(rows, (m, 'popularity', 'share_of_catalogue_recommended_at_least_1x')):.3f}")
                lines.append(f"| {t} | {m} | {vocabulary['kind']} | {size} | {evicted} | {share} | "
                             f"{_mean(rows, (m, 'hr10')):.4f} | {_mean(rows, (m, 'ndcg10')):.4f} | "
                             f"{_mean(rows, (m, 'hr50')):.4f} | {by} | {fresh} | {popularity} | "
                             f"{_mean(rows, (m, 'train_seconds')):,.0f} |")
    if "warm_base" in result.get("chains", []):
        lines += ["", "warm_base is the OOV-fallback baseline: every item outside its frozen vocabulary shares the "
                  "unknown-item row, so such a target ties with every other such item. The evaluator counts tied "
                  "candidates ahead of the target (`--evaluator.ties pessimistic`, the default): a list of K slots "
                  "cannot tell those items apart."]
    return "\n".join(lines) + "\n"


def plot(result: dict, name: str = "windows") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    windows = list(range(result["windows"]))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    colours = ("tab:blue", "tab:red", "tab:green", "tab:grey")
    for mode, colour in zip(("scratch", "warm", *result.get("chains", [])), colours):
        rows = [[r for r in result["runs"] if r["window"] == t] for t in windows]
        a.plot(windows, [_mean(r, (mode, "hr50")) for r in rows], marker="o", color=colour, label=mode)
        b.plot(windows, [_mean(r, (mode, "train_seconds")) for r in rows], marker="o", color=colour, label=mode)
    a.set(xlabel="model trained through window", ylabel="HR@50 on the next window", title="quality")
    b.set(xlabel="model trained through window", ylabel="training wall time (s, 2 CPU cores)", title="cost")
    for ax in (a, b):
        ax.set_xticks(windows)
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, f"{name}.png"), dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
