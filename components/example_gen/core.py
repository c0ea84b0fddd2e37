"""Pure logic of example_gen: the global time split and per-user example construction.

Split rules.
'time' (paper §5.1): order all interactions by timestamp; the cut is the timestamp of the
interaction at position floor(train_fraction * N) in that order. Training = timestamp < cut,
evaluation = timestamp >= cut. Every training interaction is therefore strictly earlier than
every evaluation interaction; ties at the cut go to evaluation (so training holds at most
floor(train_fraction * N) rows).
'leave_last_out' (per user, the protocol of most sequential-recommendation results): a user's
last positive interaction (by timestamp, ties broken by input order) and anything of theirs after
it go to evaluation, the rest to training; users without a positive stay in training. It needs
only each user's order of interactions, so it also fits data whose timestamps are positions.
In both, an example's history holds only positives strictly before its own timestamp, so no
evaluation item is in a training history.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator

TRAIN, EVAL = "train", "eval"
SPLITS = ("time", "leave_last_out")


def compute_cut(timestamp_counts: Iterable[tuple[int, int]], train_fraction: float) -> int:
    """Returns the cut timestamp from (timestamp, count) pairs; see the module docstring."""
    pairs = sorted(timestamp_counts)
    total = sum(count for _, count in pairs)
    if total == 0:
        raise ValueError("no interactions to split: the input is empty")
    target = int(total * train_fraction)  # 0-based position of the first evaluation row
    seen = 0
    for timestamp, count in pairs:
        if seen + count > target:
            return timestamp
        seen += count
    return pairs[-1][0]


def user_examples(
    user_id: str,
    interactions: Iterable[tuple],
    cut: int | None,
    history_length: int,
    positive_threshold: float,
    split: str = "time",
) -> Iterator[tuple[str, dict]]:
    """Yields (split, example dict) for every interaction of one user.

    interactions: (item_id, rating, timestamp, input order) in any order; the input order (any
    sortable key) is used only by 'leave_last_out' to break timestamp ties. cut: the 'time'
    split's cut timestamp (unused by 'leave_last_out'). The history of an example is the last
    `history_length` positive item ids with timestamp strictly before its own, most recent
    first; same-timestamp interactions never see each other.
    """
    rows = sorted(interactions, key=lambda r: (r[2], r[0]))
    if split == "leave_last_out":
        last = max(((r[2], r[3]) for r in rows if r[1] >= positive_threshold), default=None)
        in_eval = (lambda r: False) if last is None else (lambda r: (r[2], r[3]) >= last)
    elif split == "time":
        in_eval = lambda r: r[2] >= cut  # noqa: E731
    else:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    pos_times: list[int] = []
    pos_items: list[str] = []
    for row in rows:
        item_id, rating, timestamp = row[:3]
        label = int(rating >= positive_threshold)
        end = bisect.bisect_left(pos_times, timestamp)  # positives strictly before `timestamp`
        history = pos_items[max(0, end - history_length):end][::-1]
        yield (EVAL if in_eval(row) else TRAIN), {
            "user_id": user_id,
            "item_id": item_id,
            "rating": float(rating),
            "label": label,
            "timestamp": int(timestamp),
            "history_item_ids": history,
        }
        if label:
            pos_times.append(timestamp)
            pos_items.append(item_id)


def example_key(example: dict) -> str:
    """A unique, stable sort key of an example (user, time, item)."""
    return f"{example['user_id']}\x1f{example['timestamp']:020d}\x1f{example['item_id']}"


def to_tf_example(example: dict) -> bytes:
    """Serializes an example dict to a tf.train.Example."""
    import tensorflow as tf

    def _bytes(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode("utf-8") for v in values]))

    feature = {
        "user_id": _bytes([example["user_id"]]),
        "item_id": _bytes([example["item_id"]]),
        "history_item_ids": _bytes(example["history_item_ids"]),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[example["label"]])),
        "timestamp": tf.train.Feature(int64_list=tf.train.Int64List(value=[example["timestamp"]])),
        "rating": tf.train.Feature(float_list=tf.train.FloatList(value=[example["rating"]])),
    }
    # deterministic: map entries sorted by key. Otherwise their order follows the process's string hash seed,
    # so two runs (or two Beam workers) write different bytes for the same example.
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)
