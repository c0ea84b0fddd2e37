"""Early stopping on example_gen's validation fold (`early_stopping_patience`).

After each epoch the towers score every validation example (a held-out user's last training positive,
example_gen `validation_share`) against the model's whole item vocabulary, with the evaluator's own
ranking code (evaluator.core.evaluate: exact search, ties counted against the target, each user's
training items excluded with `validation_exclude_seen`). Training stops once `early_stopping_patience`
epochs pass without a higher HR@`validation_k`, and the towers of the best epoch are the ones exported.
The scores, the best epoch and whether the run stopped are kept beside the checkpoints
(checkpoints/validation.json, the best towers in checkpoints/best/), so a resumed run goes on with them.
Under `distribute` every worker scores the fold itself (the same weights and data, so the same decision to
stop; no worker waits in a collective the others skipped), and the chief's files are the ones kept.

Cost per epoch: the candidate tower over the V vocabulary rows (once) and validation queries x V scores,
in query batches the evaluator's memory budget allows; the seen items kept are the validation users'
training items only (16 bytes each), read in one streaming pass over the training examples.
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

from llm_hardneg.components.evaluator.core import (
    NO_EXCLUSION,
    EvaluatorConfig,
    QueryBatch,
    SeenItems,
    evaluate,
    fingerprints,
)
from llm_hardneg.components.trainer.config import TrainerConfig
from llm_hardneg.components.trainer.data import example_files, make_dataset

STATE = "validation.json"


class EarlyStopping:
    """The validation fold of `examples_dir`, scored after each epoch; keeps the best towers."""

    def __init__(self, config: TrainerConfig, examples_dir: str, model, checkpoint_dir: str, write_dir: str,
                 batch_size: int = 4096):
        """checkpoint_dir: the chief's checkpoints (read on resume); write_dir: this worker's output."""
        try:
            self.files = example_files(examples_dir, "validation")
        except FileNotFoundError:
            raise ValueError(f"early_stopping_patience {config.early_stopping_patience} needs a validation fold: "
                             f"{examples_dir} has no validation/ examples (run example_gen with "
                             "--example_gen.validation_share, split leave_last_out)") from None
        self.config, self.model, self.batch_size = config, model, batch_size
        self.evaluator = EvaluatorConfig(ks=(config.validation_k,), exclude_seen=config.validation_exclude_seen)
        self.state_path = os.path.join(checkpoint_dir, STATE)  # read from the chief's directory, written to ours
        self.write_path = os.path.join(write_dir, "checkpoints", STATE)
        self.best_towers = tf.train.Checkpoint(query_tower=model.query_tower, candidate_tower=model.candidate_tower)
        self.best_prefix = os.path.join(write_dir, "checkpoints", "best", "towers")
        self.read_prefix = os.path.join(checkpoint_dir, "best", "towers")  # the chief's, as every checkpoint
        self.state = {"scores": [], "best_epoch": 0, "best": -1.0, "stopped": False}
        if os.path.exists(self.state_path):
            with open(self.state_path, encoding="utf-8") as f:
                self.state = json.load(f)
        self.seen = self._seen(examples_dir) if config.validation_exclude_seen else None

    def _seen(self, examples_dir: str) -> SeenItems:
        """The validation users' training items (vocabulary rows - 2: padding and unknown items left out)."""
        from llm_hardneg.components.evaluator.run import seen_items  # here: evaluator.run imports the trainer

        users = np.unique(np.concatenate([fingerprints(b["user_id"].numpy()) for b in self._batches()]))
        return seen_items(examples_dir, lambda ids: self.model.items.lookup(ids).numpy() - 2, users)

    def _batches(self):
        return make_dataset(self.files, self.batch_size, self.config.history_length, positives_only=True)

    @property
    def scored_epochs(self) -> int:
        return self.state["scores"][-1]["epoch"] if self.state["scores"] else 0

    @property
    def stopped(self) -> bool:
        return self.state["stopped"]

    def score(self) -> dict:
        """HR and NDCG at validation_k of the towers as they are now."""
        rows = self.model.items.vocabulary_size
        candidates = np.concatenate([self.model.candidate_tower(tf.range(start, min(rows, start + 65536),
                                                                         dtype=tf.int64)).numpy()
                                     for start in range(2, rows, 65536)])
        at_once = self.evaluator.query_batch(len(candidates))

        def batches():
            for batch in self._batches():
                queries = self.model.query_tower(batch["user_id"], batch["history_item_ids"], training=False).numpy()
                targets = self.model.items.lookup(batch["item_id"]).numpy() - 2
                targets = np.where(targets >= 0, targets, -1)  # padding or unknown: not in the corpus, a miss
                keys = fingerprints(batch["user_id"].numpy()) if self.seen is not None else None
                for start in range(0, len(targets), at_once):
                    part = slice(start, start + at_once)
                    excluded = self.seen.pairs_of_keys(keys[part]) if keys is not None else NO_EXCLUSION
                    yield QueryBatch(queries[part], targets[part], excluded)

        metrics = evaluate(batches(), candidates, self.evaluator)["metrics"]
        k = self.config.validation_k
        return {f"hit_rate@{k}": metrics[f"hit_rate@{k}"], f"ndcg@{k}": metrics[f"ndcg@{k}"],
                "queries": metrics["num_queries"]}

    def after_epoch(self, epoch: int) -> bool:
        """Scores the towers after `epoch` (1-based), keeps them if best; returns whether to stop."""
        scores = self.score()
        value = scores[f"hit_rate@{self.config.validation_k}"]
        state = self.state
        state["scores"].append({"epoch": epoch, **scores})
        if value > state["best"]:
            state["best"], state["best_epoch"] = value, epoch
            self.best_towers.write(self.best_prefix)
        state["stopped"] = epoch - state["best_epoch"] >= self.config.early_stopping_patience
        os.makedirs(os.path.dirname(self.write_path), exist_ok=True)  # each worker its own (the others': scratch)
        with open(self.write_path, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=2)
        print(f"[trainer] validation after epoch {epoch}: HR@{self.config.validation_k} {value:.4f} on "
              f"{scores['queries']:,} held-out targets (best {state['best']:.4f} at epoch {state['best_epoch']})"
              + (f"; no better for {self.config.early_stopping_patience} epochs: stopping" if state["stopped"]
                 else ""), flush=True)
        return state["stopped"]

    def restore_best(self, last_epoch: int) -> int:
        """Puts the best epoch's towers back (when a later epoch is the last trained); returns the epoch exported."""
        best = self.state["best_epoch"]
        if best and best != last_epoch:
            self.best_towers.read(self.read_prefix).assert_existing_objects_matched()
            print(f"[trainer] exporting the towers of epoch {best}, the best on validation "
                  f"(HR@{self.config.validation_k} {self.state['best']:.4f})", flush=True)
            return best
        return last_epoch

    def summary(self, exported_epoch: int) -> dict:
        return {"patience": self.config.early_stopping_patience, "k": self.config.validation_k,
                "exclude_seen": self.config.validation_exclude_seen, "scores": self.state["scores"],
                "best_epoch": self.state["best_epoch"], "stopped": self.state["stopped"],
                "exported_epoch": exported_epoch}
