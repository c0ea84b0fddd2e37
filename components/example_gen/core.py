"""Pure logic of example_gen: the split, per-user example construction and tf.Example encoding,
on columns (Arrow/NumPy) rather than one Python object per interaction.

Split rules.
'time' (paper §5.1): order all interactions by timestamp; the cut is the timestamp of the
interaction at position floor(train_fraction * N) in that order. Training = timestamp < cut,
evaluation = timestamp >= cut. Every training interaction is therefore strictly earlier than
every evaluation interaction; ties at the cut go to evaluation (so training holds at most
floor(train_fraction * N) rows). A window (window_start, window_end) keeps training examples at
timestamps >= window_start and evaluation examples at timestamps < window_end; rows outside make no
example but fill histories as before (continuous training: train on window t, evaluate on t + 1).
'leave_last_out' (per user, the protocol of most sequential-recommendation results): a user's
last positive interaction (by timestamp, ties broken by input order) and anything of theirs after
it go to evaluation, the rest to training; users without a positive stay in training. It needs
only each user's order of interactions, so it also fits data whose timestamps are positions.
A validation fold (leave_last_out, `validation_share`): for a share of users chosen by a stable hash of
their id, the last training positive (and anything of theirs after it) leaves training for validation,
as SASRec's protocol holds out each user's second-to-last item; the trainer's early stopping scores it.
In both, an example's history holds only positives strictly before its own timestamp (history_ties
'exclude'), or before it in the user's (timestamp, input order) ('input_order'); either way no
evaluation item is in a training history.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

TRAIN, EVAL, SEQUENCES, VALIDATION = "train", "eval", "train_sequences", "validation"
SPLITS = ("time", "leave_last_out")
HISTORY_TIES = ("exclude", "input_order")
# The columns of a batch of validated interactions; `order` = the row's input position (file rank, line).
INTERACTIONS = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("rating", pa.float64()),
                          ("timestamp", pa.int64()), ("order", pa.int64())])


def compute_cut(timestamps: np.ndarray, train_fraction: float) -> int:
    """The cut timestamp of all interactions' timestamps; see the module docstring."""
    timestamps = np.asarray(timestamps, dtype=np.int64)
    if timestamps.size == 0:
        raise ValueError("no interactions to split: the input is empty")
    target = int(timestamps.size * train_fraction)  # 0-based position of the first evaluation row
    return int(np.partition(timestamps, target)[target])


def _ranks(column: pa.Array) -> tuple[np.ndarray, list[str]]:
    """Dense codes of a string column that sort as the strings do (UTF-8 byte order = code point order),
    and the distinct strings in that order."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    encoded = pc.dictionary_encode(column)
    order = pc.sort_indices(encoded.dictionary).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank[encoded.indices.to_numpy()], encoded.dictionary.take(pa.array(order)).to_pylist()


@dataclasses.dataclass
class UserExamples:
    """The examples of a set of whole users, one row per interaction, sorted by (user, timestamp, item id,
    input order)."""

    users: list[str]  # distinct user ids, sorted; `user` indexes them
    items: list[str]  # distinct item ids, sorted; `item` indexes them
    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray
    label: np.ndarray  # int64 0/1
    in_eval: np.ndarray  # bool
    in_train: np.ndarray  # bool; neither (a row outside a time window) = history only, no example
    in_validation: np.ndarray  # bool: the validation fold's rows (neither training nor evaluation)
    history_start: np.ndarray  # row i's history = item codes positive_item[history_start[i]:history_end[i]],
    history_end: np.ndarray  # most recent first when reversed
    order_key: np.ndarray  # "earlier" for histories: a strictly smaller key (timestamp, or rank with input_order)
    positive_item: np.ndarray  # the item codes of the positive rows, in row order
    users_without_positives: int

    def history(self, i: int) -> list[str]:
        return [self.items[c] for c in self.positive_item[self.history_start[i]:self.history_end[i]][::-1]]


def _from_last(user: np.ndarray, rank: np.ndarray, marked: np.ndarray, users: int) -> np.ndarray:
    """[n] bool: the rows at or after (by `rank`, a user's order) their user's last `marked` row; a user
    without a marked row has none."""
    last = np.full(users, -1, dtype=np.int64)
    np.maximum.at(last, user[marked], rank[marked])
    return (last[user] >= 0) & (rank >= last[user])


def validation_users(users: list[str], share: float) -> np.ndarray:
    """[U] bool: whether each user id is in the validation fold, by a stable hash (CRC-32 of its UTF-8) below
    `share` of the hash range: the same users whatever the sharding, the run or the machine."""
    hashes = np.fromiter((zlib.crc32(u.encode("utf-8")) for u in users), dtype=np.uint64, count=len(users))
    return hashes < np.uint64(int(share * 2**32))


def window_bounds(timestamps: np.ndarray, windows: int, first_fraction: float) -> list[int]:
    """windows + 1 timestamps that cut the time line into consecutive windows: the first window holds the
    first `first_fraction` of the interactions (the base model's data), the rest is cut into `windows` windows
    of equal interaction counts. Bound i is the timestamp of the row at that quantile (ties go to the
    later window, as the time split's cut). The last bound is one past the latest timestamp."""
    timestamps = np.sort(np.asarray(timestamps, dtype=np.int64))
    if timestamps.size == 0:
        raise ValueError("no interactions to cut into windows: the input is empty")
    if windows < 1 or not 0.0 < first_fraction < 1.0:
        raise ValueError(f"need windows >= 1 and 0 < first_fraction < 1, got {windows} and {first_fraction}")
    fractions = first_fraction + (1.0 - first_fraction) * np.arange(windows) / windows
    bounds = [int(timestamps[int(f * timestamps.size)]) for f in fractions] + [int(timestamps[-1]) + 1]
    if len(set(bounds)) < len(bounds):
        raise ValueError(f"{windows} windows after the first {first_fraction:.0%} of {timestamps.size:,} "
                         f"interactions share bounds {bounds} (too many timestamps tie): use fewer windows")
    return bounds


def user_examples(table: pa.Table | pa.RecordBatch, cut: int | None, history_length: int,
                  positive_threshold: float, split: str = "time", history_ties: str = "exclude",
                  window_start: int = 0, window_end: int = 0, validation_share: float = 0.0) -> UserExamples:
    """Examples of every interaction in `table` (columns as INTERACTIONS; it must hold every row of each of
    its users). The history of an example is the last `history_length` positive item ids with timestamp
    strictly before its own, most recent first; same-timestamp interactions never see each other. With
    history_ties 'input_order', the positives before it in the user's (timestamp, input order) instead.
    cut: the 'time' split's cut timestamp (unused by 'leave_last_out'); window_start, window_end: its window
    (0 = unbounded). validation_share: with 'leave_last_out', the share of users (`validation_users`) whose
    last training positive, and what follows it, goes to validation. O(n log n) array operations."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if history_ties not in HISTORY_TIES:
        raise ValueError(f"history_ties must be one of {HISTORY_TIES}, got {history_ties!r}")
    input_order = history_ties == "input_order"
    user, users = _ranks(table.column("user_id"))
    item, items = _ranks(table.column("item_id"))
    timestamp = np.asarray(table.column("timestamp"))
    order = np.asarray(table.column("order"))
    rows = np.lexsort((item, order, timestamp, user) if input_order else (order, item, timestamp, user))
    user, item, timestamp, order = user[rows], item[rows], timestamp[rows], order[rows]
    rating = np.asarray(table.column("rating"))[rows]
    label = (rating >= positive_threshold).astype(np.int64)
    n = len(rows)
    index = np.arange(n)
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = user[1:] != user[:-1]
    new_time = new_user.copy()
    new_time[1:] |= timestamp[1:] != timestamp[:-1]
    user_start = np.maximum.accumulate(np.where(new_user, index, 0))
    time_start = np.maximum.accumulate(np.where(new_time, index, 0))
    positives_before = np.concatenate([[0], np.cumsum(label)])  # [j] = positive rows before row j
    # positives strictly before the row's timestamp, or before the row in (timestamp, input order)
    history_end = positives_before[index] if input_order else positives_before[time_start]
    history_start = np.maximum(positives_before[user_start], history_end - history_length)
    positives_per_user = np.bincount(user, weights=label, minlength=len(users))
    if split == "time":
        in_eval = timestamp >= cut
        in_train = ~in_eval & (timestamp >= window_start)
        if window_end:
            in_eval &= timestamp < window_end
    else:  # each user's last positive by (timestamp, input order), and what follows it, to evaluation
        by_time = np.lexsort((order, timestamp, user))
        rank = np.empty(n, dtype=np.int64)
        rank[by_time] = index
        in_eval = _from_last(user, rank, label == 1, len(users))
        in_train = ~in_eval
    in_validation = np.zeros(n, dtype=bool)
    if validation_share:
        if split != "leave_last_out":
            raise ValueError(f"validation_share needs split 'leave_last_out', got {split!r}")
        in_validation = in_train & validation_users(users, validation_share)[user] & _from_last(
            user, rank, in_train & (label == 1), len(users))  # the last training positive, and what follows
        in_train &= ~in_validation
    return UserExamples(users, items, user, item, rating, timestamp, label, in_eval, in_train, in_validation,
                        history_start, history_end,
                        index if input_order else timestamp, item[label == 1], int((positives_per_user == 0).sum()))


# -- tf.train.Example encoding ------------------------------------------------------------------
# protobuf's Python API takes ~40 us to build and serialise one Example, most of example_gen's time at scale.
# `serialized` writes the same bytes (the deterministic wire form: map entries sorted by key) from pieces
# encoded once per user and item; tests/test_example_gen.py checks them byte for byte against
# tf.train.Example.SerializeToString(deterministic=True).
def _encode_varint(n: int) -> bytes:
    out = bytearray()
    n &= 0xFFFFFFFFFFFFFFFF  # a negative int64 takes ten bytes (two's complement)
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = 1 << 14  # varints below this (one or two bytes: every length inside an example) come from a table
_VARINTS = [_encode_varint(n) for n in range(_SMALL)]


def _varint(n: int) -> bytes:
    return _VARINTS[n] if 0 <= n < _SMALL else _encode_varint(n)


def _varints(values: np.ndarray) -> list[bytes]:
    """_varint of every value of an int64 array, computed per 7-bit group for all values at once."""
    values = values.astype(np.uint64)  # two's complement, as protobuf writes negative int64
    groups = np.stack([(values >> np.uint64(7 * g)) & np.uint64(0x7F) for g in range(10)], axis=1).astype(np.uint8)
    nonzero = groups != 0
    sizes = np.where(nonzero.any(axis=1), 10 - np.argmax(nonzero[:, ::-1], axis=1), 1)  # up to the last nonzero
    groups[np.arange(10) < (sizes[:, None] - 1)] |= 0x80
    return [row[:size].tobytes() for row, size in zip(groups, sizes.tolist())]


def _field(tag: bytes, payload: bytes) -> bytes:  # a length-delimited protobuf field
    return tag + _varint(len(payload)) + payload


def _entry(key: str, feature: bytes) -> bytes:
    """One entry of Features' map<string, Feature>; feature = the Feature message (bytes_list = 1,
    float_list = 2, int64_list = 3)."""
    return _field(b"\x0a", _field(b"\x0a", key.encode("utf-8")) + _field(b"\x12", feature))


def _value(text: str) -> bytes:  # one value of a BytesList
    return _field(b"\x0a", text.encode("utf-8"))


def _int64(value: int) -> bytes:
    return _field(b"\x1a", _field(b"\x0a", _varint(value)))


_HISTORY_KEY = _field(b"\x0a", b"history_item_ids")
_LABELS = (_entry("label", _int64(0)), _entry("label", _int64(1)))
# the timestamp entry = a prefix that depends only on the varint's byte count, then the varint
_TIMESTAMPS = [b""] + [_entry("timestamp", _int64(1 << (7 * (size - 1))))[:-size] for size in range(1, 11)]


def serialized(examples: UserExamples) -> Iterator[tuple[int, bytes, bytes]]:
    """(row, key, serialised tf.train.Example) for every row of `examples`, in row order. The key, unique and
    stable, is UTF-8 of f"{user_id}\\x1f{timestamp:020d}\\x1f{item_id}" (UTF-8 byte order = code point order)."""
    user_keys = [user.encode("utf-8") + b"\x1f" for user in examples.users]  # the key's parts
    item_keys = [b"\x1f" + item.encode("utf-8") for item in examples.items]
    values = [_value(item) for item in examples.items]
    item_entries = [_entry("item_id", _field(b"\x0a", value)) for value in values]
    user_entries = [_entry("user_id", _field(b"\x0a", _value(user))) for user in examples.users]
    positive_values = [values[c] for c in examples.positive_item]
    ratings: dict[float, bytes] = {}
    varints, small = _VARINTS, _SMALL
    for i, (user, item, timestamp, stamp, label, rating, start, end) in enumerate(zip(
            examples.user.tolist(), examples.item.tolist(), examples.timestamp.tolist(),
            _varints(examples.timestamp), examples.label.tolist(), examples.rating.tolist(),
            examples.history_start.tolist(), examples.history_end.tolist())):
        rating_entry = ratings.get(rating)
        if rating_entry is None:
            rating_entry = ratings[rating] = _entry("rating", _field(b"\x12", _field(b"\x0a",
                                                                                  struct.pack("<f", rating))))
        history = b"".join(positive_values[start:end][::-1])
        size = len(history)
        if size < small - 64:  # the three nested lengths come from the table
            history = varints[size] + history
            history = b"\x12" + varints[len(history) + 1] + b"\x0a" + history
            history = b"\x0a" + varints[len(history) + 18] + _HISTORY_KEY + history
        else:
            history = _field(b"\x0a", _HISTORY_KEY + _field(b"\x12", _field(b"\x0a", history)))
        features = b"".join((history, item_entries[item], _LABELS[label], rating_entry,
                             _TIMESTAMPS[len(stamp)], stamp, user_entries[user]))
        yield i, user_keys[user] + b"%020d" % timestamp + item_keys[item], _field(b"\x0a", features)


# -- sequence records ---------------------------------------------------------------------------
def sequence_chunks(positives: int, length: int, first_target: int = 1) -> list[tuple[int, int, int]]:
    """(start, end, first target) of the chunks of a user's `positives` positives (in time order) for windows
    of `length` history positions: each chunk holds up to length + 1 consecutive positives [start, end); its
    targets are positions first..end - 1 (chunk-relative first - start). Every positive from `first_target`
    on (at least 1: the user's first positive is context only; a time window's earlier positives are context
    too) is the target of exactly one chunk, and consecutive chunks overlap by length // 2 + 1 positives, so
    every target has at least length // 2 earlier positives of context (all of them, when it has fewer).
    Tokens written per target: about 2."""
    stride = max(1, length - length // 2)  # new targets per chunk after the first
    first_target = max(1, first_target)
    if positives <= first_target:
        return []
    start = max(0, first_target - (length // 2 + 1))
    end = min(positives, start + length + 1)
    chunks = [(start, end, first_target)]
    while end < positives:
        new_end = min(positives, end + stride)
        chunks.append((max(0, new_end - length - 1), new_end, end))
        end = new_end
    return chunks


def _sequence_rows(examples: UserExamples, length: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows of the sequence records in (user, time) order, and for each row its user's count of context rows.
    They are each user's training positives, after up to length // 2 + 1 positives from before a time window
    (`window_start`: history-only rows, neither training nor evaluation), which are context only: a window's
    first targets see the positives before it, as its per-interaction examples' histories do. Without a
    window a user's positives before the first training one are none, and the count is 0."""
    positive = np.flatnonzero(examples.label == 1)
    if not len(positive):
        return positive, np.zeros([0], np.int64)
    train, user, index = examples.in_train[positive], examples.user[positive], np.arange(len(positive))
    new_user = np.r_[True, user[1:] != user[:-1]]
    segment = np.cumsum(new_user) - 1  # each positive's user, 0..U-1
    first_train = np.minimum.reduceat(np.where(train, index, len(positive)), np.flatnonzero(new_user))
    first_train = np.where(first_train < len(positive), first_train, -1)[segment]  # -1: no training positive
    before = ~train & ~examples.in_eval[positive] & (index < first_train) & (first_train - index <= length // 2 + 1)
    keep = train | before
    counts = np.bincount(segment[before], minlength=int(segment[-1]) + 1)
    return positive[keep], counts[segment[keep]]


def serialized_sequences(examples: UserExamples, length: int) -> Iterator[tuple[bytes, bytes, int, int]]:
    """(key, serialised tf.train.Example, targets, items) of every chunk (`sequence_chunks`) of every user's training
    positives, in user order. Features: user_id; item_ids [T] and timestamps [T] (time order; ties in
    the rows' order; with history_ties 'input_order' the rows' ranks, so each position is later than the
    one before); target_from: the chunk position of the first target (the positives before it are
    context only). Which earlier positions a target may see (strictly smaller timestamps) is the
    trainer's to apply (data.parse_sequences). The key is UTF-8 of f"{user_id}\x1f{chunk:010d}"."""
    rows, context = _sequence_rows(examples, length)
    users, items, stamps = examples.user[rows], examples.item[rows], examples.order_key[rows]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(rows) else np.zeros([0], np.int64)
    ends = np.r_[starts[1:], len(rows)].astype(np.int64)
    values = [_value(item) for item in examples.items]
    for first, last, before in zip(starts.tolist(), ends.tolist(), context[starts].tolist()):
        user = examples.users[users[first]]
        user_entry = _entry("user_id", _field(b"\x0a", _value(user)))
        user_key = user.encode("utf-8") + b"\x1f"
        for number, (start, end, target) in enumerate(sequence_chunks(last - first, length, before)):
            chunk = slice(first + start, first + end)
            ids = b"".join(values[c] for c in items[chunk].tolist())
            times = _field(b"\x1a", _field(b"\x0a", b"".join(_varints(stamps[chunk]))))  # a packed Int64List
            features = b"".join((_entry("item_ids", _field(b"\x0a", ids)),
                                 _entry("target_from", _int64(target - start)), _entry("timestamps", times),
                                 user_entry))
            yield user_key + b"%010d" % number, _field(b"\x0a", features), end - target, end - start
