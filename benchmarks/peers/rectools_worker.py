"""RecTools SASRec on split files; runs inside the peer's own virtualenv (pandas, torch, rectools; no llm-hardneg).

    <peer venv>/bin/python benchmarks/peers/rectools_worker.py --train train.csv --users users.txt --out recos.csv
        [--max-len 200] [--seed 0] [--k 50]

train.csv: user_id,item_id,datetime (the training positives, in any order); users.txt: the users to recommend
for. Trains SASRec with the softmax loss (2 blocks, 1 head, 64 factors, dropout 0.2, `--max-len` positions) the
way RecTools' advanced training guide does it: a leave-one-out validation fold of 2,048 users, early stopping on
the validation loss (patience 3), the weights of the best validation epoch restored. Writes the top-k of every
user with their training items filtered out (filter_viewed) and a JSON line of epochs and wall time; a user
cold to the model (each of its training items fell out of SASRec's training data) gets no list and is counted.

A run can be interrupted: every epoch leaves a full trainer checkpoint (weights, optimizer, early-stopping
state, the training wall time so far) in `<out>.state/`, and the same command resumes from it (the time of
an epoch cut short is not counted and the epoch is run again; a run whose early stopping had ended only ranks).
A state directory written with other arguments or another train file is discarded, never resumed.
"""

import argparse
import hashlib
import json
import os
import shutil
import time

import numpy as np
import pandas as pd
import torch
from lightning_fabric import seed_everything
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from rectools import Columns
from rectools.dataset import Dataset
from rectools.models import SASRecModel

VAL_USERS = 2048


class WallClock(Callback):
    """Training wall time, carried in the trainer's checkpoints so that a resumed run adds to it."""

    def __init__(self) -> None:
        self.before, self.started = 0.0, time.monotonic()

    def on_fit_start(self, trainer, pl_module) -> None:
        self.started = time.monotonic()

    def seconds(self) -> float:
        return self.before + time.monotonic() - self.started

    def state_dict(self) -> dict:
        return {"seconds": self.seconds()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.before = state_dict["seconds"]


class ResumableEarlyStopping(EarlyStopping):
    """Early stopping whose decision survives a restart: Lightning restores its wait count but not the trainer's
    stop flag, so a run resumed after it had stopped would train one epoch more."""

    @property
    def state_key(self) -> str:  # the parent's key: checkpoints keep their early-stopping state under it
        return f"EarlyStopping{({'monitor': self.monitor, 'mode': self.mode})!r}"

    def on_train_start(self, trainer, pl_module) -> None:
        if self.wait_count >= self.patience:
            trainer.should_stop = True

    def best_epoch(self, trainer) -> int:
        """The 1-based epoch of the best validation loss: the epochs trained less those without a new best."""
        return trainer.current_epoch - self.wait_count


class ResumingTrainer(Trainer):
    """A Trainer that resumes from `resume` (a checkpoint path, or None): RecTools' fit() takes no path."""

    def __init__(self, resume: str | None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.resume = resume

    def fit(self, module, *fit_args, **fit_kwargs):
        if self.resume:  # RecTools draws fresh weights at train start (after the restore) unless marked fitted
            module.is_fitted = True
        return super().fit(module, *fit_args, ckpt_path=self.resume, **fit_kwargs)


def state_dir(args: argparse.Namespace) -> str:
    """The run's checkpoint directory, emptied unless it was written by this very configuration."""
    path = args.out + ".state"
    with open(args.train, "rb") as f:
        key = {**vars(args), "train_sha256": hashlib.file_digest(f, "sha256").hexdigest()}
    key_path = os.path.join(path, "run.json")
    if os.path.exists(key_path) and json.load(open(key_path, encoding="utf-8")) != key:
        shutil.rmtree(path)
    os.makedirs(path, exist_ok=True)
    with open(key_path, "w", encoding="utf-8") as f:
        json.dump(key, f)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", required=True)
    parser.add_argument("--users", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-len", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--max-epochs", type=int, default=200)
    args = parser.parse_args()
    seed_everything(args.seed, workers=True)
    torch.use_deterministic_algorithms(True)
    train = pd.read_csv(args.train, dtype={"user_id": str, "item_id": str})
    train[Columns.Weight] = 1.0
    train[Columns.Datetime] = pd.to_datetime(train["datetime"], unit="s")
    dataset = Dataset.construct(train[[Columns.User, Columns.Item, Columns.Weight, Columns.Datetime]])
    rng = np.random.default_rng(args.seed)
    users = train[Columns.User].unique()
    val_users = set(rng.choice(users, size=min(VAL_USERS, len(users)), replace=False).tolist())

    def get_val_mask_func(interactions: pd.DataFrame) -> np.ndarray:  # each validation user's last interaction
        rank = (interactions.sort_values(Columns.Datetime, ascending=False, kind="stable")
                .groupby(Columns.User, sort=False).cumcount())
        return (interactions[Columns.User].isin(val_users) & (rank == 0)).values

    run_dir = state_dir(args)
    last = os.path.join(run_dir, "checkpoints", "last.ckpt")
    resume = last if os.path.exists(last) else None
    if resume:
        print(f"[peer worker] resuming from {resume}", flush=True)
    best = ModelCheckpoint(dirpath=os.path.join(run_dir, "checkpoints"), monitor="val_loss", mode="min",
                           save_top_k=1, filename="best", save_last=True)

    def get_trainer() -> Trainer:
        return ResumingTrainer(resume, accelerator="cpu", devices=1, min_epochs=1, max_epochs=args.max_epochs,
                               deterministic=True, enable_progress_bar=False, enable_model_summary=False,
                               logger=CSVLogger(run_dir),
                               callbacks=[ResumableEarlyStopping(monitor="val_loss", mode="min", patience=3), best,
                                          WallClock()])

    model = SASRecModel(n_factors=64, n_blocks=2, n_heads=1, dropout_rate=0.2, session_max_len=args.max_len,
                        loss="softmax", lr=1e-3, batch_size=128, deterministic=True, verbose=1,
                        get_val_mask_func=get_val_mask_func, get_trainer_func=get_trainer)
    model.fit(dataset)
    epochs = model.fit_trainer.current_epoch
    # RecTools trains with its own copy of the callbacks: the path and the clock are the fitted trainer's
    train_seconds = next(c for c in model.fit_trainer.callbacks if isinstance(c, WallClock)).seconds()
    stopping = next(c for c in model.fit_trainer.callbacks if isinstance(c, ResumableEarlyStopping))
    best_epoch = stopping.best_epoch(model.fit_trainer)
    best_path = model.fit_trainer.checkpoint_callback.best_model_path
    if not best_path:
        raise SystemExit("the peer's trainer saved no best checkpoint")
    model.load_weights_from_checkpoint(best_path)
    with open(args.users, encoding="utf-8") as f:
        targets = [line.strip() for line in f if line.strip()]
    trained = set(users)
    known = [u for u in targets if u in trained]
    # a user whose training items all fell out of SASRec's training data (users with one interaction are
    # dropped, and items only they had) is cold to the model: RecTools skips it with a warning; counted here
    recos = model.recommend(users=known, dataset=dataset, k=args.k, filter_viewed=True,
                            on_unsupported_targets="warn")
    recos[[Columns.User, Columns.Item, Columns.Rank]].to_csv(args.out, index=False)
    print(json.dumps({"epochs": epochs, "best_epoch": best_epoch, "best_epoch_path": best_path,
                      "train_seconds": train_seconds,
                      "users_without_training_items": len(targets) - len(known),
                      "users_cold_to_the_model": len(known) - recos[Columns.User].nunique(),
                      "rectools": __import__("rectools").__version__, "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
