"""A peer library side by side: RecTools' SASRec on exactly our split files, scored with our metric code.

    python -m benchmarks.peers.rectools_sasrec [--datasets ml1m_exact] [--seeds 0] [--max-len 200]
        [--data-root ../shared/data]

For each data set (benchmarks.sequential_tower's names and examples: leave_last_out, history 200), the
training positives of our train split go to the peer as its interactions (user, item, timestamp) and our
evaluation positives are its targets. RecTools (pinned: RECTOOLS) and torch (pinned: TORCH, the CPU wheel)
are installed into their own virtualenv under benchmarks/work/peers (never into .venv);
benchmarks/peers/rectools_worker.py trains SASRec there (softmax loss, 200 positions, early stopping on
a validation fold, as RecTools' guide does) and writes each user's top-50 with training items filtered.
Here each target's rank in its user's list is scored with llm_hardneg.components.evaluator.core.rank_metrics, the
evaluator's own HR/NDCG (a target outside the list, or a user the peer cannot recommend for, is a miss).
Writes benchmarks/results/peer_rectools_sasrec.json, which benchmarks.sequential_tower reads into its table.
An interrupted peer run resumes from its last epoch when the same command is run again (rectools_worker.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess

import numpy as np

import llm_hardneg.components  # noqa: F401  (environment before TensorFlow)
from benchmarks.paper_tables import RESULTS, WORK, prepare
from benchmarks.sequential_tower import example_config
from llm_hardneg.components.evaluator.core import rank_metrics
from llm_hardneg.components.trainer.data import example_files, make_dataset

RECTOOLS, TORCH = "0.19.0", "2.13.0"
PEERS = os.path.join(WORK, "peers")
VENV = os.path.join(PEERS, "rectools-venv")
KS = (10, 50)


def peer_python() -> str:
    """The peer virtualenv's python, created and installed on first use."""
    python = os.path.join(VENV, "bin", "python")
    marker, pins = os.path.join(VENV, ".installed"), f"rectools=={RECTOOLS} torch=={TORCH}"
    if not os.path.exists(marker) or open(marker, encoding="utf-8").read() != pins:
        print(f"[peer] installing rectools {RECTOOLS} and torch {TORCH} into {VENV}", flush=True)
        subprocess.run(["python3", "-m", "venv", VENV], check=True)  # the system python, not .venv's
        subprocess.run([python, "-m", "pip", "install", "-q", f"rectools[torch]=={RECTOOLS}", f"torch=={TORCH}"],
                       check=True)
        with open(marker, "w", encoding="utf-8") as f:
            f.write(pins)
    return python


def split_files(examples: str, out: str) -> tuple[str, str, list[tuple[str, str]]]:
    """Our train positives as the peer's train.csv, the users to recommend for, and the (user, target) pairs."""
    os.makedirs(out, exist_ok=True)
    train_path, users_path = os.path.join(out, "train.csv"), os.path.join(out, "users.txt")
    with open(train_path, "w", encoding="utf-8") as f:
        f.write("user_id,item_id,datetime\n")
        for b in make_dataset(example_files(examples, "train"), 65536, 1, positives_only=True):
            for u, i, t in zip(b["user_id"].numpy(), b["item_id"].numpy(), b["timestamp"].numpy()):
                f.write(f"{u.decode()},{i.decode()},{int(t)}\n")
    targets = [(u.decode(), i.decode()) for b in make_dataset(example_files(examples, "eval"), 65536, 1,
                                                            positives_only=True)
               for u, i in zip(b["user_id"].numpy(), b["item_id"].numpy())]
    with open(users_path, "w", encoding="utf-8") as f:
        f.write("\n".join(sorted({u for u, _ in targets})) + "\n")
    return train_path, users_path, targets


def score(recos_path: str, targets: list[tuple[str, str]]) -> dict:
    """HR@K and NDCG@K of the peer's top-K lists (rank column 1-based) with the evaluator's rank_metrics."""
    rank_of: dict[tuple[str, str], int] = {}
    with open(recos_path, encoding="utf-8") as f:
        next(f)
        for line in f:
            user, item, rank = line.rstrip("\n").split(",")
            rank_of[(user, item)] = int(rank) - 1
    ranks = np.array([rank_of.get(pair, np.iinfo(np.int32).max) for pair in targets])
    metrics = rank_metrics(ranks, KS)
    return {**{f"hr{k}": hits / len(targets) for k, (hits, _) in metrics.items()},
            **{f"ndcg{k}": gain / len(targets) for k, (_, gain) in metrics.items()}, "queries": len(targets)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="ml1m_exact")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--max-len", type=int, default=200)
    parser.add_argument("--data-root", default=os.environ.get("DATA_ROOT", os.path.join("..", "shared", "data")))
    args = parser.parse_args()
    results = json.load(open(os.path.join(RESULTS, "peer_rectools_sasrec.json"))) if os.path.exists(
        os.path.join(RESULTS, "peer_rectools_sasrec.json")) else {"runs": []}
    python = peer_python()
    for name in args.datasets.split(","):
        examples, _ = prepare(f"seq_{name}_h200", example_config(name, args.data_root, 200))
        out = os.path.join(PEERS, name)
        train_path, users_path, targets = split_files(examples, out)
        for seed in (int(s) for s in args.seeds.split(",")):
            recos = os.path.join(out, f"recos_seed{seed}.csv")
            done = subprocess.run([python, os.path.join(os.path.dirname(__file__), "rectools_worker.py"),
                                   "--train", train_path, "--users", users_path, "--out", recos,
                                   "--max-len", str(args.max_len), "--seed", str(seed), "--k", str(max(KS))],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"the peer failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
            report = json.loads(done.stdout.strip().splitlines()[-1])
            run = {"dataset": name, "seed": seed, "version": report["rectools"], "loss": "softmax",
                   "max_len": args.max_len, "epochs": report["epochs"], "best_epoch": report["best_epoch"],
                   "train_seconds": report["train_seconds"],
                   "users_without_training_items": report["users_without_training_items"],
                   "users_cold_to_the_model": report["users_cold_to_the_model"],
                   **score(recos, targets)}
            print(f"[peer] {name} seed {seed}: HR@10 {run['hr10']:.4f} NDCG@10 {run['ndcg10']:.4f} HR@50 "
                  f"{run['hr50']:.4f} after {run['epochs']} epochs (best {run['best_epoch']}), "
                  f"{run['train_seconds']:.0f}s; {run['users_without_training_items']} users without training items "
                  f"and {run['users_cold_to_the_model']} cold to the model count as misses", flush=True)
            results["runs"] = [r for r in results["runs"] if (r["dataset"], r["seed"]) != (name, seed)] + [run]
            os.makedirs(RESULTS, exist_ok=True)
            with open(os.path.join(RESULTS, "peer_rectools_sasrec.json"), "w", encoding="utf-8") as f:
                json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
