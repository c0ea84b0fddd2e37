"""Configuration of example_gen."""

from __future__ import annotations

import dataclasses
import os

from llm_hardneg.components.example_gen.core import HISTORY_TIES, SPLITS

SOURCES = ("movielens", "generic", "amazon", "tfds")
BAD_ROW_POLICIES = ("fail", "dead_letter")


@dataclasses.dataclass(frozen=True)
class ExampleGenConfig:
    """What to read and how to split it (paper §5.1 defaults).

    source: 'movielens' (`user::item::rating::timestamp` ratings, `id::title::genres` movies,
      latin-1), 'amazon' (Amazon Reviews 2018 JSON lines, gzipped or not: reviews/ratings +
      meta_*.json) or 'generic' (CSV with a header, Parquet or JSON lines; columns as in
      schemas/interactions.pbtxt and schemas/items.pbtxt; CSV categories separated by '|'),
      or 'tfds' (a prepared TensorFlow Datasets directory `tfds_data_dir`; `interactions` and
      `items` name data sets, e.g. 'movielens/1m-ratings' and 'movielens/1m-movies').
    interactions: file path or glob of the interactions.
    items: file path or glob of the item catalogue; '' = none: the catalogue is the items of the
      interactions, without text or categories (no LLM embedding is made for them; use cluster
      sources that need no text).
    split: 'time' (global time cut, paper §5.1) or 'leave_last_out' (each user's last positive
      interaction, and anything after it, to evaluation); see core.py.
    train_fraction: share of interactions, in time order, that form the training period ('time').
    cut_timestamp: with 'time', the cut itself (training = timestamp < cut, evaluation = timestamp >= cut)
      instead of the train_fraction quantile; 0 = from train_fraction.
    window_start, window_end: with 'time', one window of continuous training (core.window_bounds cuts the
      time line into windows): training examples only from timestamps >= window_start, evaluation examples
      only from timestamps < window_end; every earlier interaction still fills histories. Interactions
      before window_start (history only) and at or after window_end (a later window) make no example and
      are counted in summary.json; 0 = unbounded. Train window t warm-started (trainer `warm_start_from`)
      from window t - 1's model, evaluate on window t + 1: the prequential protocol.
    positive_threshold: ratings >= this are positives (label 1), others label 0.
    history_length: the last N positive items before each example (see `history_ties`).
    history_ties: which earlier positives a history may hold when timestamps tie. 'exclude' (the
      paper's protocol, DESIGN.md): strictly earlier timestamps only; same-timestamp interactions never
      see each other. 'input_order': a user's interactions in (timestamp, input order), the order the
      leave_last_out split already uses, and a history holds the positives before the row in it (a
      stable sort by time, as SASRec's and RecBole's data preparation does). It matters where ties are
      common: in ML-1M half of a user's consecutive positives share their second. Training histories
      still never hold an evaluation item (an evaluation row comes after every training row of its
      user in that order, and after every training row under the time cut).
    sequence_length: L > 0 also writes train_sequences/: each user's training positives as sequence
      records of up to L + 1 items (core.sequence_chunks: consecutive chunks overlap by L // 2 + 1,
      each training positive but a user's first is a target once; with `window_start`, up to L // 2 + 1
      of the user's positives before the window lead the first chunk as context only), for the trainer's
      `sequence_training`, which reads each sequence once for all its targets instead of one L-item
      history per target; 0 = off.
    validation_share: with 'leave_last_out', a validation fold for the trainer's early stopping: for this
      share of users (chosen by a stable hash of the user id), the last training positive and anything
      of theirs after it go to validation/ instead of train/ (and out of the sequence records), as
      SASRec holds out each user's second-to-last item; 1 = every user. Their evaluation examples'
      histories still hold it (the model never trained on it). 0 = no validation fold.
    user_shards: users are processed in this many groups (ranges of the user id, cut at quantiles of a
      sample, so about equal numbers of interactions each), each with array operations in one worker's
      memory (about 100 bytes per interaction): raise it when interactions / user_shards passes ~10^7, or
      to spread a large input over more workers. Each output shard is the concatenation of one sorted
      run per user shard. Outputs do not depend on it.
    num_train_shards, num_eval_shards: TFRecord files written for the training and evaluation examples.
    tfds_data_dir: with source 'tfds', the prepared TensorFlow Datasets directory (never downloads).
    bad_rows: what a row that breaks the schema does (malformed line, wrong field count,
      non-numeric or out-of-range value, bytes not valid in the file's encoding):
      'fail' stops the step with file, line and field; 'dead_letter' drops the row, counts it
      and writes it with its reason to dead_letter/rows.jsonl. Whatever the policy: an empty
      input file stops the step; duplicate item ids with different text stop the step; an
      item with neither text nor a category and an interaction whose item is not in the item table
      are dropped, counted and dead-lettered (an item with a category and no text is kept: it gets
      no LLM embedding); users with only negative ratings are kept (counted).
    """

    source: str = "movielens"
    interactions: str = ""
    items: str = ""
    split: str = "time"
    train_fraction: float = 0.8
    cut_timestamp: int = 0
    window_start: int = 0
    window_end: int = 0
    positive_threshold: float = 3.0
    history_length: int = 20
    history_ties: str = "exclude"
    sequence_length: int = 0
    validation_share: float = 0.0
    num_train_shards: int = 8
    num_eval_shards: int = 4
    user_shards: int = 64
    bad_rows: str = "fail"
    tfds_data_dir: str = ""

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.bad_rows not in BAD_ROW_POLICIES:
            raise ValueError(f"bad_rows must be one of {BAD_ROW_POLICIES}, got {self.bad_rows!r}")
        if not 0.0 < self.train_fraction < 1.0:
            raise ValueError(f"train_fraction must be in (0, 1), got {self.train_fraction}")
        if self.user_shards < 1:
            raise ValueError(f"user_shards must be >= 1, got {self.user_shards}")
        if self.history_length < 1:
            raise ValueError(f"history_length must be >= 1, got {self.history_length}")
        if self.sequence_length < 0:
            raise ValueError(f"sequence_length must be >= 0 (0 = no sequence records), got {self.sequence_length}")
        if not self.interactions:
            raise ValueError("the 'interactions' path is required")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        windowed = {k: getattr(self, k) for k in ("cut_timestamp", "window_start", "window_end") if getattr(self, k)}
        if windowed and self.split != "time":
            raise ValueError(f"{', '.join(windowed)} need split 'time', got split {self.split!r}")
        if self.window_start and not self.cut_timestamp:
            raise ValueError(f"window_start {self.window_start} needs an explicit cut_timestamp (the window's end)")
        if self.window_start and self.cut_timestamp <= self.window_start:
            raise ValueError(f"cut_timestamp {self.cut_timestamp} must be after window_start {self.window_start}")
        if self.window_end and self.cut_timestamp and self.window_end <= self.cut_timestamp:
            raise ValueError(f"window_end {self.window_end} must be after cut_timestamp {self.cut_timestamp}")
        if not 0.0 <= self.validation_share <= 1.0:
            raise ValueError(f"validation_share must be in [0, 1] (0 = no validation fold), got "
                             f"{self.validation_share}")
        if self.validation_share and self.split != "leave_last_out":
            raise ValueError(f"validation_share needs split 'leave_last_out' (a user's last training positive is "
                             f"held out), got split {self.split!r}")
        if self.history_ties not in HISTORY_TIES:
            raise ValueError(f"history_ties must be one of {HISTORY_TIES}, got {self.history_ties!r}")

    @classmethod
    def movielens(cls, data_dir: str, **overrides) -> ExampleGenConfig:
        """MovieLens-1M layout: ratings from reconstructed/ratings.dat when present locally, else
        ratings.dat (remote URIs are not probed: pass `interactions` to choose)."""
        ratings = os.path.join(data_dir, "reconstructed", "ratings.dat")
        if "://" in data_dir or not os.path.exists(ratings):
            ratings = os.path.join(data_dir, "ratings.dat")
        overrides.setdefault("interactions", ratings)
        return cls(source="movielens", items=os.path.join(data_dir, "movies.dat"), **overrides)
