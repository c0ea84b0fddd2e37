"""RecTools SASRec on split files; runs inside the peer's own virtualenv (pandas, torch, rectools; no llm-hardneg).

    <peer venv>/bin/python benchmarks/peers/rectools_worker.py --train train.csv --users users.txt --out recos.csv
        [--max-len 200] [--seed 0] [--k 50]

train.csv: user_id,item_id,datetime (the training positives, in any order); users.txt: the users to recommend
for. Trains SASRec with the softmax loss (2 blocks, 1 head, 64 factors, dropout 0.2, `--max-len` positions) the
way RecTools' advanced training guide does it: a leave-one-out validation fold of 2,048 users, early stopping on
the validation loss (patience 3), the weights of the best validation epoch restored. Writes the top-k of every
user with their training items filtered out (filter_viewed) and a JSON line of epochs and wall time.
"""

import argparse
import json
import os
import time

import numpy as np
import pandas as pd
import torch
from lightning_fabric import seed_everything
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from rectools import Columns
from rectools.dataset import Dataset
from rectools.models import SASRecModel

VAL_USERS = 2048


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

    log_dir = os.path.join(os.path.dirname(args.out), "lightning")
    best = ModelCheckpoint(monitor="val_loss", mode="min", save_top_k=1, filename="best")

    def get_trainer() -> Trainer:
        return Trainer(accelerator="cpu", devices=1, min_epochs=1, max_epochs=args.max_epochs, deterministic=True,
                       enable_progress_bar=False, enable_model_summary=False, logger=CSVLogger(log_dir),
                       callbacks=[EarlyStopping(monitor="val_loss", mode="min", patience=3), best])

    model = SASRecModel(n_factors=64, n_blocks=2, n_heads=1, dropout_rate=0.2, session_max_len=args.max_len,
                        loss="softmax", lr=1e-3, batch_size=128, deterministic=True, verbose=1,
                        get_val_mask_func=get_val_mask_func, get_trainer_func=get_trainer)
    started = time.monotonic()
    model.fit(dataset)
    train_seconds = time.monotonic() - started
    epochs = model.fit_trainer.current_epoch
    # RecTools trains with its own copy of the callbacks: the path is on the fitted trainer's, not on `best`
    best_path = model.fit_trainer.checkpoint_callback.best_model_path or best.best_model_path
    if not best_path:
        raise SystemExit("the peer's trainer saved no best checkpoint")
    model.load_weights_from_checkpoint(best_path)
    with open(args.users, encoding="utf-8") as f:
        targets = [line.strip() for line in f if line.strip()]
    known = [u for u in targets if u in set(users)]
    recos = model.recommend(users=known, dataset=dataset, k=args.k, filter_viewed=True)
    recos[[Columns.User, Columns.Item, Columns.Rank]].to_csv(args.out, index=False)
    print(json.dumps({"epochs": epochs, "best_epoch_path": best_path, "train_seconds": train_seconds,
                      "users_without_training_items": len(targets) - len(known),
                      "rectools": __import__("rectools").__version__, "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
