import collections
import glob
import os

import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_hardneg.components.common.schema import SchemaViolation, load_schema, validate_row
from llm_hardneg.components.example_gen import ExampleGenConfig, core, run_example_gen
from tests import helpers


def read_examples(directory):
    out = []
    for path in sorted(glob.glob(os.path.join(directory, "*.tfrecord"))):
        for record in tf.data.TFRecordDataset(path):
            e = tf.train.Example.FromString(record.numpy()).features.feature
            out.append({
                "user_id": e["user_id"].bytes_list.value[0].decode(),
                "item_id": e["item_id"].bytes_list.value[0].decode(),
                "label": e["label"].int64_list.value[0],
                "timestamp": e["timestamp"].int64_list.value[0],
                "history": [v.decode() for v in e["history_item_ids"].bytes_list.value],
            })
    return out


def interactions_table(rows) -> pa.Table:
    """(user_id, item_id, rating, timestamp[, input order]) tuples -> a core.INTERACTIONS table (input order
    defaults to the position)."""
    columns = list(zip(*rows)) if rows else [[]] * 4
    order = columns[4] if len(columns) > 4 else range(len(rows))
    return pa.table([pa.array(columns[0], pa.string()), pa.array(columns[1], pa.string()),
                     pa.array(columns[2], pa.float64()), pa.array(columns[3], pa.int64()),
                     pa.array(order, pa.int64())], schema=core.INTERACTIONS)


def readable(examples: core.UserExamples) -> list[tuple[str, dict]]:
    """(split, example dict) per row of core.user_examples' result, in row order."""
    return [(core.EVAL if examples.in_eval[i] else core.TRAIN if examples.in_train[i] else
             core.VALIDATION if examples.in_validation[i] else "history only", {
        "user_id": examples.users[examples.user[i]], "item_id": examples.items[examples.item[i]],
        "rating": float(examples.rating[i]), "label": int(examples.label[i]),
        "timestamp": int(examples.timestamp[i]), "history_item_ids": examples.history(i)})
        for i in range(len(examples.user))]


def example_key(user_id: str, timestamp: int, item_id: str) -> bytes:
    return f"{user_id}\x1f{timestamp:020d}\x1f{item_id}".encode()


def examples_of(log, cut, history_length, split="time", validation_share=0.0):
    """(split, example dict) of every row of (user, item, rating, timestamp[, input order]) tuples."""
    table = interactions_table([tuple(map(str, row[:2])) + tuple(row[2:]) for row in log])
    return readable(core.user_examples(table, cut, history_length, 3.0, split, validation_share=validation_share))


# -- schema ------------------------------------------------------------------------------------
def test_validate_row_coerces_types():
    row = validate_row(load_schema("interactions"), {"user_id": 7, "item_id": "12", "rating": "4",
                                                     "timestamp": "1000"}, "f", 3)
    assert row == {"user_id": "7", "item_id": "12", "rating": 4.0, "timestamp": 1000}


@pytest.mark.parametrize("field,value,problem", [
    ("rating", "x", "not a number"), ("rating", "9", "above maximum"), ("timestamp", "-5", "below minimum"),
    ("timestamp", "1.5e", "not an integer"), ("user_id", "", "missing"), ("rating", "nan", "not finite"),
])
def test_validate_row_names_file_line_field(field, value, problem):
    row = {"user_id": "1", "item_id": "2", "rating": "3", "timestamp": "10", field: value}
    with pytest.raises(SchemaViolation) as info:
        validate_row(load_schema("interactions"), row, "ratings.dat", 42)
    assert (info.value.source, info.value.line, info.value.field) == ("ratings.dat", 42, field)
    assert problem in str(info.value) and "ratings.dat:42" in str(info.value)


# -- split and histories against brute-force oracles ---------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fraction", [0.5, 0.8, 0.95])
def test_cut_matches_sorted_position(seed, fraction):
    ts = np.random.default_rng(seed).integers(0, 50, size=500)
    cut = core.compute_cut(ts, fraction)
    assert cut == np.sort(ts)[int(len(ts) * fraction)]
    assert (ts < cut).sum() <= int(len(ts) * fraction) < (ts <= cut).sum()


def test_cut_rejects_empty_input():
    with pytest.raises(ValueError, match="empty"):
        core.compute_cut([], 0.8)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(1, 5), st.integers(0, 30)), max_size=40),
       st.integers(1, 4), st.integers(0, 30))
def test_history_is_strictly_before_and_most_recent_positives(rows, history_length, cut):
    out = examples_of([("u", *row) for row in rows], cut, history_length)
    assert len(out) == len(rows)
    for split, e in out:
        assert split == (core.TRAIN if e["timestamp"] < cut else core.EVAL)
        earlier = sorted((t, i) for i, r, t in rows if t < e["timestamp"] and r >= 3)
        # history = last N earlier positives, most recent first (ties ordered by item id)
        assert e["history_item_ids"] == [i for _, i in earlier][::-1][:history_length]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(1, 5), st.integers(0, 8)), max_size=40),
       st.integers(1, 4), st.integers(0, 8), st.sampled_from(core.SPLITS), st.randoms(use_true_random=False))
def test_input_order_ties_history_is_the_positives_before_in_time_then_input_order(rows, history_length, cut, split,
                                                                                   random):
    orders = random.sample(range(1000), len(rows))  # input order, independent of the timestamps
    log = [("u" if n % 3 else "v", i, r, t, o) for n, ((i, r, t), o) in enumerate(zip(rows, orders))]
    table = interactions_table([(u, i, float(r), t, o) for u, i, r, t, o in log])
    out = readable(core.user_examples(table, cut, history_length, 3.0, split, history_ties="input_order"))
    by_key = sorted(log, key=lambda x: (x[0], x[3], x[4]))  # (user, timestamp, input order): the rows' order
    assert len(out) == len(by_key)
    for k, ((part, e), (u, i, _, t, _)) in enumerate(zip(out, by_key)):
        assert (e["user_id"], e["item_id"], e["timestamp"]) == (u, i, t)
        before = [x for x in by_key[:k] if x[0] == u and x[2] >= 3]  # earlier in (timestamp, input order)
        assert e["history_item_ids"] == [x[1] for x in before[::-1][:history_length]]
        if split == "time":
            assert (part == core.EVAL) == (t >= cut)
    for user in ("u", "v"):  # leave_last_out: a user's evaluation rows come after all their training rows, so no
        parts = [part for part, e in out if e["user_id"] == user]  # training history holds an evaluation row
        if split == "leave_last_out" and core.EVAL in parts:
            assert core.TRAIN not in parts[parts.index(core.EVAL):]


# -- the Beam pipeline ---------------------------------------------------------------------------
def test_pipeline_outputs_match_oracle(examples_dir, movielens_dir):
    log = helpers.synthetic_log()
    ts = np.array([t for *_, t in log])
    cut = np.sort(ts)[int(len(ts) * 0.8)]
    train = read_examples(os.path.join(examples_dir, "train"))
    evaluation = read_examples(os.path.join(examples_dir, "eval"))
    assert len(train) == (ts < cut).sum() and len(evaluation) == (ts >= cut).sum()
    assert max(e["timestamp"] for e in train) < cut <= min(e["timestamp"] for e in evaluation)
    by_user = {}
    for u, i, r, t in log:
        by_user.setdefault(str(u), []).append((str(i), r, t))
    for e in train + evaluation:
        assert e["label"] in (0, 1)
        positives_before = {i for i, r, t in by_user[e["user_id"]] if r >= 3 and t < e["timestamp"]}
        assert set(e["history"]) <= positives_before and len(e["history"]) <= 5
    assert sorted(open(os.path.join(examples_dir, "users.txt")).read().split()) == sorted({e["user_id"] for e in train})
    import pyarrow.parquet as pq

    items = pq.read_table(os.path.join(examples_dir, "items", "items.parquet")).to_pylist()
    assert len(items) == 40
    counts = {}
    for e in train:
        counts[e["item_id"]] = counts.get(e["item_id"], 0) + 1
    assert all(row["train_count"] == counts.get(row["item_id"], 0) for row in items)


def test_pipeline_is_deterministic_whatever_the_user_shards(tmp_path, movielens_dir):
    outputs = []
    for run, user_shards in (("a", 1), ("b", 7)):
        out = str(tmp_path / run)
        run_example_gen(ExampleGenConfig.movielens(movielens_dir, num_train_shards=3, num_eval_shards=2,
                                                   user_shards=user_shards), out)
        outputs.append([open(p, "rb").read() for p in sorted(glob.glob(os.path.join(out, "*", "*.tfrecord")))])
        outputs[-1].append(open(os.path.join(out, "users.txt"), "rb").read())
    assert len(outputs[0]) == 6 and outputs[0] == outputs[1]


def test_user_ids_that_hold_the_key_separator_give_the_reference_files_whatever_the_user_shards(tmp_path):
    """User shards are ranges of user ids and output files concatenate their runs: ids that are prefixes of
    each other, hold the key's separator \\x1f, control characters or non-ASCII text must still give every
    file sorted by key, equal to the plain-Python reference."""
    import csv

    users = ["a", "a\x1fb", "a\x05", "a\x1fa", "ab", "é", "日本", "z\x1fz", "0", "00", "b"]
    log = [(users[u % len(users)], f"i{i}", r, t) for u, i, r, t in helpers.synthetic_log(seed=3, users=40, rows=800)]
    with open(tmp_path / "inter.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("user_id", "item_id", "rating", "timestamp"), *log])
    with open(tmp_path / "items.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("item_id", "text"), *((f"i{i}", f"item {i}") for i in range(1, 41))])
    expected = reference_shards(log, 20, 0.8, {core.TRAIN: 3, core.EVAL: 2})
    for user_shards in (1, 4, 64):
        out = str(tmp_path / f"out{user_shards}")
        run_example_gen(ExampleGenConfig(source="generic", interactions=str(tmp_path / "inter.csv"),
                                         items=str(tmp_path / "items.csv"), num_train_shards=3, num_eval_shards=2,
                                         user_shards=user_shards), out)
        for split, files in expected.items():
            paths = sorted(glob.glob(os.path.join(out, split, "*.tfrecord")))
            assert [[r.numpy() for r in tf.data.TFRecordDataset(p)] for p in paths] == files


def test_unknown_items_are_dropped_and_counted(tmp_path):
    data = str(tmp_path / "ml")
    helpers.write_movielens(data, extra_lines=("1::999::5::1100", "2::998::4::1200"))
    summary = run_example_gen(ExampleGenConfig.movielens(data), str(tmp_path / "out"))
    assert summary["dropped"]["unknown_item"] == 2
    assert summary["interactions_in"] == 602
    assert summary["train_examples"] + summary["eval_examples"] == 600


def test_bad_line_stops_with_file_line_field(tmp_path):
    data = str(tmp_path / "ml")
    helpers.write_movielens(data, extra_lines=("1::2::five::1100",))
    with pytest.raises(Exception, match=r"ratings.dat:601: field 'rating': not a number"):
        run_example_gen(ExampleGenConfig.movielens(data), str(tmp_path / "out"))


def test_generic_csv_source(tmp_path):
    (tmp_path / "inter.csv").write_text(
        "user_id,item_id,rating,timestamp\na,x,5,1\na,y,4,2\nb,x,1,3\nb,y,5,4\na,x,3,5\n")
    (tmp_path / "items.csv").write_text("item_id,text,categories\nx,Item X,cat1|cat2\ny,Item Y,cat2\n")
    summary = run_example_gen(ExampleGenConfig(source="generic", interactions=str(tmp_path / "inter.csv"),
                                               items=str(tmp_path / "items.csv")), str(tmp_path / "out"))
    assert (summary["train_examples"], summary["eval_examples"]) == (4, 1)
    evaluation = read_examples(str(tmp_path / "out" / "eval"))
    assert evaluation[0]["history"] == ["y", "x"]  # a's positives before t=5, most recent first


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("uvw"), st.sampled_from("abcdef"), st.integers(1, 5), st.integers(0, 20)),
                min_size=1, max_size=60),
       st.sampled_from([0.5, 0.8, 0.9]))
def test_split_has_no_leakage_over_random_logs(log, fraction):
    cut = core.compute_cut([t for *_, t in log], fraction)
    examples = {core.TRAIN: [], core.EVAL: []}
    for split, e in examples_of(log, cut, 3):
        examples[split].append(e)
    train, evaluation = examples[core.TRAIN], examples[core.EVAL]
    assert len(train) + len(evaluation) == len(log)
    # exact at the cut: train is every interaction strictly before it, eval the rest
    assert len(train) == sum(t < cut for *_, t in log) <= int(len(log) * fraction)
    assert all(e["timestamp"] < cut for e in train) and all(e["timestamp"] >= cut for e in evaluation)
    # no eval interaction appears among the training examples
    train_keys = {(e["user_id"], e["item_id"], e["timestamp"]) for e in train}
    assert not any((e["user_id"], e["item_id"], e["timestamp"]) in train_keys for e in evaluation)
    # every history item is an earlier positive of the same user
    for e in train + evaluation:
        earlier = {i for u, i, r, t in log if u == e["user_id"] and r >= 3 and t < e["timestamp"]}
        assert set(e["history_item_ids"]) <= earlier


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("uvw"), st.sampled_from("abcdef"), st.integers(1, 5), st.integers(0, 8)),
                min_size=1, max_size=60))
def test_leave_last_out_over_random_logs(log):
    """Per user: the last positive (timestamp, then input order) and what follows go to eval; no leakage."""
    examples = {core.TRAIN: [], core.EVAL: []}
    for split, e in examples_of(log, None, 3, split="leave_last_out"):
        examples[split].append(e)
    train, evaluation = examples[core.TRAIN], examples[core.EVAL]
    assert len(train) + len(evaluation) == len(log)
    for user in {u for u, *_ in log}:
        rows = [(t, n, i, r) for n, (u, i, r, t) in enumerate(log) if u == user]
        positives = [row for row in rows if row[3] >= 3]
        user_eval = [e for e in evaluation if e["user_id"] == user]
        if not positives:
            assert not user_eval
            continue
        last = max(positives)
        expected = sorted((t, i) for t, n, i, r in rows if (t, n) >= last[:2])
        assert sorted((e["timestamp"], e["item_id"]) for e in user_eval) == expected
        assert sum(e["label"] for e in user_eval) == 1  # exactly one positive to score per user
    for e in train + evaluation:  # histories: earlier positives of the same user only
        earlier = {i for u, i, r, t in log if u == e["user_id"] and r >= 3 and t < e["timestamp"]}
        assert set(e["history_item_ids"]) <= earlier
    for e in train:  # no training example is later than its user's evaluation positive
        ev = [x for x in evaluation if x["user_id"] == e["user_id"] and x["label"]]
        assert not ev or e["timestamp"] <= ev[0]["timestamp"]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("uvwxyz"), st.sampled_from("abcdef"), st.integers(1, 5),
                          st.integers(0, 8)), min_size=1, max_size=60), st.sampled_from([1.0, 0.5]))
def test_validation_fold_holds_out_each_chosen_users_last_training_positive(log, share):
    """validation_share: a chosen user's last training positive (by timestamp, then input order) and what
    follows it before evaluation go to validation; evaluation is unchanged; no training row comes after a
    validation positive, so no training history holds it; the users are those of validation_users."""
    plain = examples_of(log, None, 3, split="leave_last_out")
    folded = examples_of(log, None, 3, split="leave_last_out", validation_share=share)
    assert [e for split, e in folded if split == core.EVAL] == [e for split, e in plain if split == core.EVAL]
    users = sorted({u for u, *_ in log})
    chosen = {u for u, c in zip(users, core.validation_users(users, share)) if c}
    if share == 1.0:
        assert chosen == set(users)
    expected = collections.Counter()  # (user, item, timestamp, label) of the validation rows, from the log
    for user in chosen:
        rows = [(t, n, i, int(r >= 3)) for n, (u, i, r, t) in enumerate(log) if u == user]
        positives = sorted(row for row in rows if row[3])
        if not positives:
            continue
        train = [row for row in rows if row[:2] < positives[-1][:2]]  # before the evaluation positive
        if any(row[3] for row in train):
            last = max(row[:2] for row in train if row[3])
            expected.update((user, i, t, label) for t, n, i, label in train if (t, n) >= last)

    def rows_of(examples, split):
        return collections.Counter((e["user_id"], e["item_id"], e["timestamp"], e["label"])
                                   for s, e in examples if s == split)

    assert rows_of(folded, core.VALIDATION) == expected
    assert rows_of(folded, core.TRAIN) == rows_of(plain, core.TRAIN) - expected
    validation = [e for split, e in folded if split == core.VALIDATION]
    assert sum(e["label"] for e in validation) == len({e["user_id"] for e in validation})  # one positive a user
    for e in validation:  # every training example of the user is earlier: none sees the validation item
        assert all(t["timestamp"] <= e["timestamp"] for _, t in folded if _ == core.TRAIN and t["user_id"] ==
                   e["user_id"])


def test_validation_users_are_a_stable_hash_share():
    users = [f"user{i}" for i in range(4000)]
    half = core.validation_users(users, 0.5)
    assert 0.45 < half.mean() < 0.55 and not core.validation_users(users, 0.0).any()
    assert core.validation_users(users, 1.0).all()
    assert (half <= core.validation_users(users, 0.7)).all()  # a larger share keeps the smaller one's users
    import zlib

    np.testing.assert_array_equal(half, [zlib.crc32(u.encode()) < 2**31 for u in users])


def test_example_gen_writes_the_validation_fold_and_keeps_it_out_of_training(tmp_path):
    (tmp_path / "inter.csv").write_text(
        "user_id,item_id,rating,timestamp\na,x,5,0\na,y,5,1\na,w,2,2\na,z,5,3\nb,x,5,0\nb,y,5,1\nb,z,5,2\n"
        "c,y,5,0\n")
    config = ExampleGenConfig(source="generic", interactions=str(tmp_path / "inter.csv"), split="leave_last_out",
                              validation_share=1.0, sequence_length=4)
    summary = run_example_gen(config, str(tmp_path / "out"))
    # a: z to eval, y (its last training positive) and w (after it) to validation; b: z to eval, y to validation;
    # c: its only positive to eval, none left for validation
    validation = read_examples(str(tmp_path / "out" / "validation"))
    assert sorted((e["user_id"], e["item_id"], e["label"]) for e in validation) == [
        ("a", "w", 0), ("a", "y", 1), ("b", "y", 1)]
    assert [e["history"] for e in validation if e["item_id"] == "y"] == [["x"], ["x"]]
    assert (summary["validation_examples"], summary["validation_positives"]) == (3, 2)
    assert sorted((e["user_id"], e["item_id"]) for e in read_examples(str(tmp_path / "out" / "train"))) == [
        ("a", "x"), ("b", "x")]
    evaluation = read_examples(str(tmp_path / "out" / "eval"))
    assert [e["history"] for e in evaluation if e["user_id"] == "a"] == [["y", "x"]]  # it is history at test time
    records = glob.glob(str(tmp_path / "out" / "train_sequences" / "*.tfrecord"))
    held = {(e["user_id"], e["item_id"]) for e in validation}
    for record in tf.data.TFRecordDataset(records):
        f = tf.train.Example.FromString(record.numpy()).features.feature
        user = f["user_id"].bytes_list.value[0].decode()
        assert not {(user, i.decode()) for i in f["item_ids"].bytes_list.value} & held
    with pytest.raises(ValueError, match="validation_share needs split 'leave_last_out'.*got split 'time'"):
        ExampleGenConfig(interactions="x", validation_share=0.1)
    with pytest.raises(ValueError, match=r"validation_share must be in \[0, 1\].*got 1.5"):
        ExampleGenConfig(interactions="x", split="leave_last_out", validation_share=1.5)


def test_generic_without_item_file_and_leave_last_out(tmp_path):
    (tmp_path / "inter.csv").write_text(
        "user_id,item_id,rating,timestamp\na,x,5,0\na,y,5,1\na,z,5,1\nb,x,5,0\nb,z,2,1\nc,y,1,0\n")
    summary = run_example_gen(ExampleGenConfig(source="generic", interactions=str(tmp_path / "inter.csv"),
                                               split="leave_last_out"), str(tmp_path / "out"))
    # a: z (tie at t=1 broken by input order) to eval; b: x is its only positive, then z (negative) after it
    assert (summary["train_examples"], summary["eval_examples"], summary["eval_positives"]) == (3, 3, 2)
    assert summary["split"] == "leave_last_out" and summary["cut_timestamp"] is None
    evaluation = read_examples(str(tmp_path / "out" / "eval"))
    assert sorted((e["user_id"], e["item_id"]) for e in evaluation) == [("a", "z"), ("b", "x"), ("b", "z")]
    assert [e["history"] for e in evaluation if e["item_id"] == "z" and e["user_id"] == "a"] == [["x"]]
    import pyarrow.parquet as pq

    items = pq.read_table(str(tmp_path / "out" / "items" / "items.parquet")).to_pylist()
    assert [(r["item_id"], r["text"], r["categories"], r["train_count"]) for r in items] == [
        ("x", "", [], 1), ("y", "", [], 2), ("z", "", [], 0)]


def test_bad_split_names_value():
    with pytest.raises(ValueError, match="split must be one of .* got 'random'"):
        ExampleGenConfig(interactions="x", split="random")


def test_csv_quoted_multiline_fields_bom_and_crlf(tmp_path):
    """RFC 4180: a quoted text with a line break, a comma and a doubled quote; a spreadsheet's BOM and CRLF."""
    from llm_hardneg.components.example_gen import readers

    items = tmp_path / "items.csv"
    items.write_bytes("\ufeffitem_id,text,categories\r\nx,\"Item X, the \"\"best\"\"\r\nsecond line\",a|b\r\n"
                      "y,Item Y,b\r\n\r\nz,only two\r\n".encode("utf-8") + b"w,caf\xe9,c\r\n")
    records = list(readers.generic_rows(str(items)))
    good = [r for r in records if r.row is not None]
    assert [r.row["item_id"] for r in good] == ["x", "y"]
    assert good[0].row["text"] == 'Item X, the "best"\r\nsecond line' and good[0].row["categories"] == ["a", "b"]
    assert (good[0].line, good[1].line) == (2, 4)  # a record's line is where it starts
    bad = [(r.line, r.field, r.problem) for r in records if r.row is None]
    assert bad == [(6, "<line>", "expected 3 fields, got 2"), (7, "<bytes>", "bytes not valid utf-8")]


def test_json_lines_with_bom_crlf_and_gzip(tmp_path):
    import gzip

    from llm_hardneg.components.example_gen import readers

    text = '\ufeff{"user_id": "a", "item_id": "x"}\r\n\r\n{"user_id": "b", "item_id": "y"}\r\n[1]\r\n'
    (tmp_path / "rows.jsonl").write_bytes(text.encode("utf-8"))
    with gzip.open(tmp_path / "rows.jsonl.gz", "wb") as f:
        f.write(text.encode("utf-8"))
    for name in ("rows.jsonl", "rows.jsonl.gz"):
        records = list(readers.generic_rows(str(tmp_path / name)))
        assert [(r.line, r.row["user_id"]) for r in records if r.row] == [(1, "a"), (3, "b")]
        assert [(r.line, r.problem) for r in records if r.row is None] == [(4, "a line must be a JSON object")]


def test_csv_with_bom_runs_through_example_gen(tmp_path):
    (tmp_path / "inter.csv").write_bytes(b"\xef\xbb\xbfuser_id,item_id,rating,timestamp\r\na,x,5,1\r\nb,x,4,2\r\n")
    summary = run_example_gen(ExampleGenConfig(source="generic", interactions=str(tmp_path / "inter.csv")),
                              str(tmp_path / "out"))
    assert summary["interactions_in"] == 2 and sum(summary["dropped"].values()) == 0


@pytest.mark.parametrize("rows,split,message", [
    ("a,x,5,7\nb,y,4,7\nc,x,5,7\n", "time", r"no training examples: the time cut at timestamp 7 .* 3 interactions in, "
                                             r"0 train examples .*split leave_last_out"),
    ("a,x,1,1\nb,y,2,2\nc,x,1,3\na,y,2,4\nb,x,1,5\n", "time", r"no positive training examples .*positive_threshold"),
    ("a,x,5,1\nb,y,4,2\na,y,5,3\nb,x,5,4\nc,x,1,5\n", "time", r"no positive evaluation examples .*0 positive"),
    ("a,x,5,1\nb,y,4,2\n", "leave_last_out", r"no training examples: the per-user split .*two or more"),
])
def test_degenerate_splits_stop_early_and_say_why(tmp_path, rows, split, message):
    (tmp_path / "inter.csv").write_text("user_id,item_id,rating,timestamp\n" + rows)
    with pytest.raises(ValueError, match=message):
        run_example_gen(ExampleGenConfig(source="generic", interactions=str(tmp_path / "inter.csv"), split=split),
                        str(tmp_path / "out"))


@pytest.mark.parametrize("rows,train,eval_", [
    ("a,x,5,1\na,y,4,2\na,z,5,3\na,w,5,4\na,v,5,5\n", 4, 1),  # one user: the time cut still splits its sequence
    ("a,x,5,1\nb,x,4,2\nc,x,5,3\nd,x,5,4\ne,x,5,5\n", 4, 1),  # one item: every example is that item
])
def test_one_user_or_one_item_runs(tmp_path, rows, train, eval_):
    (tmp_path / "inter.csv").write_text("user_id,item_id,rating,timestamp\n" + rows)
    summary = run_example_gen(ExampleGenConfig(source="generic", interactions=str(tmp_path / "inter.csv")),
                              str(tmp_path / "out"))
    assert (summary["train_examples"], summary["eval_examples"]) == (train, eval_)


def test_more_clusters_asked_than_items_gives_one_cluster_per_item():
    from llm_hardneg.components.item_clusterer import ItemClustererConfig

    assert ItemClustererConfig(num_clusters=50).clusters_for(7) == 7
    assert ItemClustererConfig().clusters_for(1) == 1 and ItemClustererConfig().clusters_for(10**8) == 1024


def tf_example(e: dict) -> bytes:
    """The reference serialisation: tf.train.Example, deterministic (map entries by key)."""
    def _bytes(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode("utf-8") for v in values]))

    feature = {"user_id": _bytes([e["user_id"]]), "item_id": _bytes([e["item_id"]]),
               "history_item_ids": _bytes(e["history_item_ids"]),
               "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[e["label"]])),
               "timestamp": tf.train.Feature(int64_list=tf.train.Int64List(value=[e["timestamp"]])),
               "rating": tf.train.Feature(float_list=tf.train.FloatList(value=[e["rating"]]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["u", "ü" * 70, "7"]), st.sampled_from(["a", "é", "x" * 150, "中"]),
                          st.sampled_from([0.0, 1.0, 3.0, 3.5, 1 / 3, 5.0]), st.sampled_from([0, 5, 7, 2**31, 2**62])),
                min_size=1, max_size=60), st.integers(1, 25))
def test_serialized_bytes_equal_tf_train_example(log, history_length):
    """The hand-written encoder writes exactly tf.train.Example's deterministic bytes (long and non-ASCII
    ids, histories over 127 bytes, empty histories, large timestamps, fractional ratings)."""
    examples = core.user_examples(interactions_table(log), 7, history_length, 3.0)
    rows = readable(examples)
    serialized = list(core.serialized(examples))
    assert [row for row, *_ in serialized] == list(range(len(log)))
    for (_, key, record), (_, e) in zip(serialized, rows):
        assert record == tf_example(e)
        assert key == example_key(e["user_id"], e["timestamp"], e["item_id"])


def reference_shards(log: list, history_length: int, fraction: float, shards: dict) -> dict:
    """example_gen's output by its definition, row by row in plain Python: per user, rows sorted by (timestamp,
    item, input order); history = the last positives strictly earlier; the time cut; tf.train.Example bytes;
    shard = crc32(key) % n; a shard's records sorted by key."""
    import zlib

    cut = sorted(t for *_, t in log)[int(len(log) * fraction)]
    out = {split: [[] for _ in range(n)] for split, n in shards.items()}
    for user in {u for u, *_ in log}:
        rows = sorted((t, str(i), n, r) for n, (u, i, r, t) in enumerate(log) if u == user)
        for t, item, _, r in rows:
            earlier = [i for t2, i, _, r2 in rows if t2 < t and r2 >= 3]
            e = {"user_id": str(user), "item_id": item, "rating": float(r), "label": int(r >= 3), "timestamp": t,
                 "history_item_ids": earlier[::-1][:history_length]}
            key = example_key(e["user_id"], t, item)
            split = core.TRAIN if t < cut else core.EVAL
            out[split][zlib.crc32(key) % shards[split]].append((key, tf_example(e)))
    return {split: [[record for _, record in sorted(shard)] for shard in files] for split, files in out.items()}


def test_pipeline_files_equal_the_reference_byte_for_byte(examples_dir):
    """The shared fixture (600 interactions with ties and repeats, 64 user shards) against reference_shards."""
    expected = reference_shards(helpers.synthetic_log(), 5, 0.8, {core.TRAIN: 3, core.EVAL: 2})
    for split, files in expected.items():
        paths = sorted(glob.glob(os.path.join(examples_dir, split, "*.tfrecord")))
        assert len(paths) == len(files)
        for path, records in zip(paths, files):
            assert [r.numpy() for r in tf.data.TFRecordDataset(path)] == records
    assert not os.path.exists(os.path.join(examples_dir, "_runs"))  # the sorted runs are removed


@settings(max_examples=80, deadline=None)
@given(st.lists(st.fixed_dictionaries({
    "user_id": st.sampled_from(["a", " b ", "", None, 7]), "item_id": st.sampled_from(["x", "y ", "  "]),
    "rating": st.sampled_from(["4", 3.5, "5.0", "x", "nan", "9", " 2 ", None, "1e0"]),
    "timestamp": st.sampled_from(["10", 12, "-5", "1.5", " 3", "99999999999999999999", "+4"])}), min_size=1,
    max_size=8))
def test_validate_columns_agrees_with_validate_row(rows):
    """The columnar fast path gives validate_row's values, or None exactly when some row breaks the schema."""
    from llm_hardneg.components.common.schema import validate_columns

    schema = load_schema("interactions")
    columns = validate_columns(schema, rows)
    expected = []
    for row in rows:
        try:
            expected.append(validate_row(schema, row, "f", 1))
        except SchemaViolation:
            expected = None
            break
    if columns is None:  # None also for an int64 overflow, which validate_row accepts as a Python int
        assert expected is None or any(abs(r["timestamp"]) >= 2**63 for r in expected)
        return
    assert expected is not None
    assert [dict(zip(columns, values)) for values in zip(*(list(c) for c in columns.values()))] == expected


# -- time windows (continuous training) ----------------------------------------------------------


def test_window_bounds_are_quantiles_after_the_first_share():
    assert core.window_bounds(np.arange(100)[::-1], 4, 0.6) == [60, 70, 80, 90, 100]
    assert core.window_bounds([5, 5, 6, 7], 1, 0.5) == [6, 8]
    with pytest.raises(ValueError, match="share bounds"):
        core.window_bounds([1] * 10 + [2], 3, 0.5)
    with pytest.raises(ValueError, match="windows >= 1"):
        core.window_bounds([1, 2], 0, 0.5)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("uvw"), st.sampled_from("abcdef"), st.integers(1, 5), st.integers(0, 20)),
                min_size=1, max_size=60),
       st.lists(st.integers(1, 21), min_size=3, max_size=3, unique=True))
def test_a_window_keeps_its_own_rows_and_every_earlier_history(log, bounds):
    start, cut, end = sorted(bounds)
    table = interactions_table([tuple(map(str, row[:2])) + tuple(row[2:]) for row in log])
    whole = core.user_examples(table, cut, 3, 3.0)
    window = core.user_examples(table, cut, 3, 3.0, window_start=start, window_end=end)
    t = window.timestamp
    np.testing.assert_array_equal(window.in_train, (t >= start) & (t < cut))
    np.testing.assert_array_equal(window.in_eval, (t >= cut) & (t < end))
    np.testing.assert_array_equal(whole.in_train, t < cut)
    # histories still come from everything earlier, inside the window or not
    np.testing.assert_array_equal(window.history_start, whole.history_start)
    np.testing.assert_array_equal(window.history_end, whole.history_end)


def test_windowed_example_gen_writes_one_window_and_counts_the_rest(tmp_path):
    rows = "".join(f"a,i{t},5,{t}\n" for t in range(1, 11)) + "b,i1,5,2\nb,i9,5,8\n"
    (tmp_path / "inter.csv").write_text("user_id,item_id,rating,timestamp\n" + rows)
    config = ExampleGenConfig(source="generic", interactions=str(tmp_path / "inter.csv"), history_length=20,
                              cut_timestamp=7, window_start=4, window_end=9)
    summary = run_example_gen(config, str(tmp_path / "out"))
    train, evaluation = read_examples(str(tmp_path / "out" / "train")), read_examples(str(tmp_path / "out" / "eval"))
    assert sorted(e["timestamp"] for e in train) == [4, 5, 6]
    assert sorted(e["timestamp"] for e in evaluation) == [7, 8, 8]
    assert summary["window"] == {"start": 4, "cut": 7, "end": 9, "rows_before_window": 4, "rows_after_window": 2}
    assert summary["train_examples"] + summary["eval_examples"] + 4 + 2 == summary["interactions_in"] == 12
    first = min(train, key=lambda e: e["timestamp"])
    assert first["history"] == ["i3", "i2", "i1"]  # the rows before the window fill the history
    assert open(tmp_path / "out" / "users.txt").read() == "a\n"  # the window's training users


@pytest.mark.parametrize("fields, message", [
    ({"split": "leave_last_out", "cut_timestamp": 5}, "need split 'time'"),
    ({"window_start": 3}, "needs an explicit cut_timestamp"),
    ({"window_start": 5, "cut_timestamp": 5}, "must be after window_start"),
    ({"cut_timestamp": 5, "window_end": 4}, "must be after cut_timestamp"),
])
def test_bad_windows_name_the_values(fields, message):
    with pytest.raises(ValueError, match=message):
        ExampleGenConfig(source="generic", interactions="x.csv", **fields)
