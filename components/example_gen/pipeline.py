"""example_gen as a Beam pipeline. Elements are batches (lists of input records, Arrow record batches packed
as zstd-compressed IPC bytes, which is how runners hold them between steps), never one Python object per
interaction; users are processed a shard of users at a time with array
operations (core.user_examples).

    interactions --parse+validate (per batch)--> drop rows whose item is not in the catalogue (counted)
      |-> timestamps -> cut (side input)
      |-> sampled user ids -> user shard bounds (side input)
      |-> by user shard (a range of user ids) -> histories + split + tf.Examples -> sorted runs per output shard
      |       -> concatenated in user shard order -> train/, eval/ (deterministic shards, sorted by key)
      |-> training counts per item --join catalogue--> items/items.parquet
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import zlib
from collections.abc import Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics
from apache_beam.transforms.stats import ApproximateQuantiles

from llm_hardneg.components.common import fileio
from llm_hardneg.components.common.beam_io import (
    ConcatenateRuns,
    Counted,
    ReadNumberedRecords,
    expand_patterns,
    pack_batch,
    stable_shard,
    unpack_batch,
    write_tfrecords,
)
from llm_hardneg.components.common.beam_run import run_pipeline
from llm_hardneg.components.common.schema import SchemaViolation, load_schema, validate_columns, validate_row
from llm_hardneg.components.example_gen import core, readers
from llm_hardneg.components.example_gen.config import ExampleGenConfig

log = logging.getLogger(__name__)
NAMESPACE = "example_gen"

ITEM_TABLE_SCHEMA = pa.schema([
    ("item_id", pa.string()),
    ("text", pa.string()),
    ("categories", pa.list_(pa.string())),
    ("train_count", pa.int64()),
    ("train_positive_count", pa.int64()),
])


DEAD_LETTER = "dead_letter"
DROP_REASONS = ("bad_interactions_row", "bad_items_row", "unknown_item", "item_without_text_or_category",
                "repeated_item_row")


class _Validate(beam.DoFn):
    """A batch of records -> validated rows, or per the policy: stop with the problem, or a dead letter.

    Always fatal: an empty input file. Always a counted drop (dead letter), whatever the policy:
    an item with neither text nor a category (its interactions then drop as unknown items). An item
    with a category and no text is kept with text '' (no LLM embedding; category and behavioural
    clusters cover it).
    """

    def __init__(self, schema_name: str, policy: str, count_as: str):
        self._schema_name, self._policy = schema_name, policy
        self.rows_in = Metrics.counter(NAMESPACE, count_as)
        self.bad = Metrics.counter(NAMESPACE, f"dropped_bad_{schema_name}_row")
        self.no_text = Metrics.counter(NAMESPACE, "dropped_item_without_text_or_category")

    def _dead(self, record: readers.Record, field: str, problem: str) -> beam.pvalue.TaggedOutput:
        return beam.pvalue.TaggedOutput(DEAD_LETTER, {"input": self._schema_name, "source": record.source,
                                                      "line": record.line, "field": field, "problem": problem,
                                                      "raw": record.raw})

    def _one(self, record: readers.Record):
        field, problem = record.field, record.problem
        if not problem:
            try:
                row = validate_row(load_schema(self._schema_name), record.row, record.source, record.line)
            except SchemaViolation as violation:
                field, problem = violation.field, violation.problem
            else:
                if self._schema_name == "items":  # blank text is None: kept as '' when the item has a category
                    row["text"] = row["text"] or ""
                if self._schema_name != "items" or row["text"] or row["categories"]:
                    yield row
                    return
                field, problem = "text", "missing, and no category"
        if field == "<file>":
            raise SchemaViolation(record.source, record.line, field, problem)
        if self._schema_name == "items" and field == "text":
            self.no_text.inc()
            yield self._dead(record, field, f"item with neither text nor category ({problem})")
        elif self._policy == "fail":
            raise SchemaViolation(record.source, record.line, field,
                                  f"{problem} (set bad_rows='dead_letter' to drop such rows instead)")
        else:
            self.bad.inc()
            yield self._dead(record, field, problem)

    def process(self, batch: list[readers.Record]):
        self.rows_in.inc(len(batch))
        for record in batch:
            yield from self._one(record)


_LINE_BITS = 40  # input order = file rank << 40 | line number


class _ValidateInteractions(_Validate):
    """A batch of interaction records (all of one file) -> one Arrow record batch (core.INTERACTIONS) of its
    valid rows. The columns are converted and checked at once (schema.validate_columns); a batch with a bad
    row goes row by row, so every problem is reported as validate_row words it."""

    def __init__(self, policy: str, sources: list[str]):
        super().__init__("interactions", policy, "interactions_in")
        self._rank = {source: rank for rank, source in enumerate(sorted(sources))}

    def process(self, batch: list[readers.Record]):
        self.rows_in.inc(len(batch))
        columns = None
        if not any(record.problem for record in batch):
            columns = validate_columns(load_schema("interactions"), [record.row for record in batch])
            lines = [record.line for record in batch]
        if columns is None:
            rows, lines = [], []
            for record in batch:
                for out in self._one(record):
                    if isinstance(out, dict):
                        rows.append(out)
                        lines.append(record.line)
                    else:
                        yield out
            if not rows:
                return
            columns = {name: [row[name] for row in rows] for name in ("user_id", "item_id", "rating", "timestamp")}
        order = (self._rank[batch[0].source] << _LINE_BITS) + np.asarray(lines, dtype=np.int64)
        yield pack_batch(pa.RecordBatch.from_arrays(
            [pa.array(columns["user_id"], pa.string()), pa.array(columns["item_id"], pa.string()),
             pa.array(columns["rating"], pa.float64()), pa.array(columns["timestamp"], pa.int64()),
             pa.array(order)], schema=core.INTERACTIONS))


def _input_order(order: int, sorted_sources: list[str]) -> list:
    return [sorted_sources[order >> _LINE_BITS], order & ((1 << _LINE_BITS) - 1)]


class _KeepKnownItems(beam.DoFn):
    """Drops (counts, dead-letters) interactions whose item is not in the catalogue."""

    def __init__(self, sources: list[str]):
        self._sources = sorted(sources)
        self.kept = Metrics.counter(NAMESPACE, "interactions_kept")
        self.unknown = Metrics.counter(NAMESPACE, "dropped_unknown_item")

    def process(self, packed: bytes, catalogue_ids):
        batch = unpack_batch(packed)
        known = np.fromiter((i in catalogue_ids for i in batch.column("item_id").to_pylist()), bool, len(batch))
        self.kept.inc(int(known.sum()))
        if known.all():
            yield packed
            return
        self.unknown.inc(int((~known).sum()))
        for row in batch.filter(pa.array(~known)).to_pylist():
            row["input_order"] = _input_order(row.pop("order"), self._sources)
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, {"input": "interactions", "field": "item_id",
                                                         "problem": "item not in the item table", "row": row})
        if known.any():
            yield pack_batch(batch.filter(pa.array(known)))


class _OneRowPerItem(beam.DoFn):
    """Keeps one catalogue row per id: repeats with the same text are dropped and counted;
    the same id with different texts stops the step (which one is right cannot be known)."""

    def __init__(self):
        self.repeats = Metrics.counter(NAMESPACE, "dropped_repeated_item_row")

    def process(self, element):
        item_id, rows = element
        rows = list(rows)
        texts = sorted({r["text"] for r in rows})
        if len(texts) > 1:
            raise ValueError(f"item id {item_id!r} appears {len(rows)} times with different text: {texts[:3]}")
        self.repeats.inc(len(rows) - 1)
        yield item_id, rows[0]


# Users go to user shards by ranges of their key, so that the runs of shard k sort before those of shard
# k+1 and each output file is their concatenation (no merge). A user's examples' keys all start with
# "<user id up to its first \x1f>\x1f"; ordering users by that prefix (code point order = UTF-8 byte order)
# orders their keys, even for ids that hold \x1f. The range bounds are approximate quantiles (Beam's
# ApproximateQuantiles: memory O(log n) whatever the input size; 0.3 s for the 312k sampled ids of 2·10^7
# interactions) of every USER_SAMPLE_STRIDE-th interaction's prefix, so shards get about equal numbers of
# interactions. Outputs do not depend on the bounds.
USER_SAMPLE_STRIDE = 64


def _user_prefixes(users: pa.Array) -> np.ndarray:
    first = pc.list_element(pc.split_pattern(users, "\x1f", max_splits=1), 0)
    return pc.binary_join_element_wise(first, "", "\x1f").to_numpy(zero_copy_only=False)


def _user_sample(packed: bytes) -> list[str]:
    users = unpack_batch(packed).column("user_id")
    return _user_prefixes(users.take(pa.array(np.arange(0, len(users), USER_SAMPLE_STRIDE)))).tolist()


class UserRanges(beam.PTransform):
    """Packed interaction batches -> one list: the upper bounds of the first user_shards - 1 user shards
    (sorted, distinct; fewer when users are few)."""

    def __init__(self, user_shards: int):
        super().__init__()
        self._shards = user_shards

    def expand(self, batches):
        return (
            batches
            | "SampleUsers" >> beam.Map(_user_sample)
            | "Quantiles" >> ApproximateQuantiles.Globally(self._shards + 1, input_batched=True)
            | "Bounds" >> beam.Map(lambda quantiles: sorted(set(quantiles[1:-1])))  # [min, q1, ..., max]
        )


def _by_user_range(packed: bytes, bounds: list[str]):
    """Splits a batch by user shard (range of user keys): (shard, the batch's rows of its users, packed)."""
    batch = unpack_batch(packed)
    users = pc.dictionary_encode(batch.column("user_id"))  # the range key once per distinct user, not per row
    shard = np.searchsorted(np.asarray(bounds, dtype=object), _user_prefixes(users.dictionary),
                            side="right")[users.indices.to_numpy()]
    rows = np.argsort(shard, kind="stable")
    cuts = np.searchsorted(shard[rows], np.arange(len(bounds) + 2))
    for s in range(len(bounds) + 1):
        if cuts[s] < cuts[s + 1]:
            yield int(s), pack_batch(batch.take(pa.array(rows[cuts[s]:cuts[s + 1]])))


COUNTS, USERS = "counts", "users"
ITEM_BUCKETS = 64  # training counts are summed per bucket of items (a hash of the id), in parallel


class _ShardExamples(beam.DoFn):
    """All interactions of a user shard (a range of users) -> their examples as sorted TFRecord runs per
    (split, output shard), the training counts per item, the training users."""

    def __init__(self, config: ExampleGenConfig, runs_dir: str):
        self._config = config
        self._runs_dir = runs_dir
        self._shards = {core.TRAIN: config.num_train_shards, core.EVAL: config.num_eval_shards,
                        core.VALIDATION: config.num_eval_shards}
        splits = (core.TRAIN, core.EVAL, core.VALIDATION)
        self.counters = {s: Metrics.counter(NAMESPACE, f"{s}_examples") for s in splits}
        self.positives = {s: Metrics.counter(NAMESPACE, f"{s}_positives") for s in splits}
        self.no_positive_users = Metrics.counter(NAMESPACE, "users_without_positives")
        self.outside = {w: Metrics.counter(NAMESPACE, f"rows_{w}_window") for w in ("before", "after")}
        self.sequences = Metrics.counter(NAMESPACE, "train_sequences")
        self.sequence_targets = Metrics.counter(NAMESPACE, "train_sequence_targets")
        self.sequence_tokens = Metrics.counter(NAMESPACE, "train_sequence_items")

    def process(self, element, cut):
        shard, batches = element
        config = self._config
        table = pa.Table.from_batches([unpack_batch(b) for b in batches])
        examples = core.user_examples(table, cut, config.history_length, config.positive_threshold, config.split,
                                      config.history_ties, config.window_start, config.window_end,
                                      config.validation_share)
        train, validation = examples.in_train, examples.in_validation
        outside = ~(train | examples.in_eval | validation)
        if outside.any():  # history only: before the window, or in a later one
            before = outside & (examples.timestamp < config.window_start)
            self.outside["before"].inc(int(before.sum()))
            self.outside["after"].inc(int((outside & ~before).sum()))
        for split, rows in ((core.TRAIN, train), (core.EVAL, examples.in_eval), (core.VALIDATION, validation)):
            self.counters[split].inc(int(rows.sum()))
            self.positives[split].inc(int(examples.label[rows].sum()))
        self.no_positive_users.inc(examples.users_without_positives)  # kept: their items are in-batch candidates

        runs = collections.defaultdict(list)
        in_eval, in_train, in_validation = examples.in_eval.tolist(), train.tolist(), validation.tolist()
        train_shards, eval_shards = self._shards[core.TRAIN], self._shards[core.EVAL]
        for row, key, record in core.serialized(examples):  # crc32 inline: stable_shard per row costs ~1 us more
            if in_eval[row]:
                runs[core.EVAL, zlib.crc32(key) % eval_shards].append((key, record))
            elif in_train[row]:
                runs[core.TRAIN, zlib.crc32(key) % train_shards].append((key, record))
            elif in_validation[row]:
                runs[core.VALIDATION, zlib.crc32(key) % eval_shards].append((key, record))
        if config.sequence_length:
            for key, record, targets, items in core.serialized_sequences(examples, config.sequence_length):
                runs[core.SEQUENCES, zlib.crc32(key) % train_shards].append((key, record))
                self.sequences.inc()
                self.sequence_targets.inc(targets)
                self.sequence_tokens.inc(items)  # tokens read per target = items / targets
        for (split, out), pairs in sorted(runs.items()):
            pairs.sort()  # by key, then record (a repeated user, time and item row repeats the key)
            path = fileio.join(self._runs_dir, split, f"run-{shard:05d}-{out:05d}.tfrecord")
            yield beam.pvalue.TaggedOutput(split, (out, (shard, write_tfrecords(path, (r for _, r in pairs)))))

        items = examples.item[train]
        counts = np.bincount(items, minlength=len(examples.items))
        positives = np.bincount(items, weights=examples.label[train], minlength=len(examples.items))
        buckets = collections.defaultdict(dict)
        for i in np.flatnonzero(counts).tolist():
            item_id = examples.items[i]
            buckets[stable_shard(item_id, ITEM_BUCKETS)][item_id] = (int(counts[i]), int(positives[i]))
        for bucket, bucket_counts in sorted(buckets.items()):
            yield beam.pvalue.TaggedOutput(COUNTS, (bucket, bucket_counts))
        yield beam.pvalue.TaggedOutput(USERS, [examples.users[u] for u in np.unique(examples.user[train])])


class _SumCounts(beam.CombineFn):
    """{item: (examples, positives)} dicts (of one bucket of items, from every user shard) -> their sum."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, counts):
        for item, (total, positives) in counts.items():
            old = acc.get(item, (0, 0))
            acc[item] = (old[0] + total, old[1] + positives)
        return acc

    def merge_accumulators(self, accs):
        accs = iter(accs)
        merged = next(accs)
        for acc in accs:
            self.add_input(merged, acc)
        return merged

    def extract_output(self, acc):
        return acc


def _item_rows(element):
    """(bucket, its catalogue rows and its summed counts) -> the item table's rows of that bucket."""
    _, grouped = element
    counts = grouped["counts"][0] if grouped["counts"] else {}
    for item_id, item in grouped["items"]:
        total, positives = counts.get(item_id, (0, 0))
        yield {"item_id": item_id, "text": item["text"], "categories": list(item["categories"]),
               "train_count": total, "train_positive_count": positives}


def _timestamps(packed: bytes) -> bytes:
    """A batch's timestamps, sorted (they compress better) and packed."""
    timestamps = np.sort(np.asarray(unpack_batch(packed).column("timestamp")))
    return pack_batch(pa.record_batch([pa.array(timestamps)], names=["t"]))


def _cut(packed: list[bytes], train_fraction: float) -> int:
    timestamps = [np.asarray(unpack_batch(p).column(0)) for p in packed]
    if not sum(len(t) for t in timestamps):
        return 0  # nothing left to split: _check_split stops with the counts of why
    return core.compute_cut(np.concatenate(timestamps), train_fraction)


RUNS = "_runs"


def build(pipeline: beam.Pipeline, config: ExampleGenConfig, output_dir: str) -> None:
    """Adds the example_gen transforms to `pipeline`."""
    if config.source == "tfds":  # data set names, not files
        ratings_reader = items_reader = functools.partial(readers.tfds_records, data_dir=config.tfds_data_dir)
        interaction_paths, item_paths = [config.interactions], [config.items]
        sources = [f"tfds:{config.interactions}"]
    else:
        ratings_reader, items_reader = readers.READERS[config.source]
        interaction_paths = expand_patterns([config.interactions])
        item_paths = expand_patterns([config.items]) if config.items else []
        sources = interaction_paths
    dead_letters = []

    parsed = pipeline | "ReadInteractions" >> ReadNumberedRecords(
        interaction_paths, ratings_reader, _ValidateInteractions(config.bad_rows, sources), (DEAD_LETTER,))
    dead_letters.append(parsed[DEAD_LETTER])
    if config.items:
        items = pipeline | "ReadItems" >> ReadNumberedRecords(
            item_paths, items_reader, _Validate("items", config.bad_rows, "item_rows_in"), (DEAD_LETTER,))
        dead_letters.append(items[DEAD_LETTER])
        catalogue = (
            items.rows
            | "KeyItems" >> beam.Map(lambda r: (r["item_id"], r))
            | "GroupItemIds" >> beam.GroupByKey()
            | "OneRowPerItem" >> beam.ParDo(_OneRowPerItem())
        )
        catalogue_ids = catalogue | "Ids" >> beam.Keys()
        known = parsed.rows | "KnownItems" >> beam.ParDo(
            _KeepKnownItems(sources), catalogue_ids=beam.pvalue.AsDict(catalogue_ids | beam.Map(lambda i: (i, None)))
        ).with_outputs(DEAD_LETTER, main="rows")
        dead_letters.append(known[DEAD_LETTER])
        interactions = known.rows
    else:  # no item file: the catalogue is the interactions' items, without text or categories
        interactions = parsed.rows
        catalogue = (
            interactions
            | "InteractionItems" >> beam.FlatMap(lambda b: pc.unique(unpack_batch(b).column("item_id")).to_pylist())
            | "DistinctItems" >> beam.Distinct()
            | "TextlessItems" >> beam.Map(lambda i: (i, {"item_id": i, "text": "", "categories": []}))
        )
    _ = (
        dead_letters
        | "AllDeadLetters" >> beam.Flatten()
        | "DeadLetterJson" >> beam.Map(lambda d: json.dumps(d, sort_keys=True, default=str))
        | "WriteDeadLetters" >> beam.io.WriteToText(fileio.join(output_dir, DEAD_LETTER, "rows"),
                                                    file_name_suffix=".jsonl", shard_name_template="")
    )

    if config.cut_timestamp:
        cut = pipeline | "GivenCut" >> beam.Create([config.cut_timestamp])
    elif config.split == "time":
        cut = (
            interactions
            | "Timestamps" >> beam.Map(_timestamps)
            | "AllTimestamps" >> beam.combiners.ToList()
            | "Cut" >> beam.Map(_cut, train_fraction=config.train_fraction)
        )
    else:  # per-user split: no global cut
        cut = pipeline | "NoCut" >> beam.Create([None])

    user_ranges = interactions | "UserRanges" >> UserRanges(config.user_shards)
    runs_dir = fileio.join(output_dir, RUNS)
    examples = (
        interactions
        | "ByUserShard" >> beam.FlatMap(_by_user_range, bounds=beam.pvalue.AsSingleton(user_ranges))
        | "GroupByUserShard" >> beam.GroupByKey()
        | "Examples" >> beam.ParDo(_ShardExamples(config, runs_dir), cut=beam.pvalue.AsSingleton(cut)).with_outputs(
            core.TRAIN, core.EVAL, core.SEQUENCES, core.VALIDATION, COUNTS, USERS)
    )
    outputs = [(core.TRAIN, config.num_train_shards), (core.EVAL, config.num_eval_shards)]
    if config.validation_share:
        outputs.append((core.VALIDATION, config.num_eval_shards))
    if config.sequence_length:
        outputs.append((core.SEQUENCES, config.num_train_shards))
    for split, shards in outputs:
        fileio.makedirs(fileio.join(output_dir, split))
        fileio.makedirs(fileio.join(runs_dir, split))
        _ = examples[split] | f"Write{split}" >> ConcatenateRuns(fileio.join(output_dir, split, "part"), shards)

    counts = examples[COUNTS] | "CountPerItem" >> beam.CombinePerKey(_SumCounts())
    bucketed = catalogue | "ItemBuckets" >> beam.Map(lambda kv: (stable_shard(kv[0], ITEM_BUCKETS), kv))
    _ = (
        {"items": bucketed, "counts": counts}
        | "JoinCounts" >> beam.CoGroupByKey()
        | "ItemRows" >> beam.FlatMap(_item_rows)
        | "CountItems" >> Counted(NAMESPACE, "items_out")
        | "WriteItems" >> beam.io.WriteToParquet(fileio.join(output_dir, "items", "items"), ITEM_TABLE_SCHEMA,
                                                 file_name_suffix=".parquet", num_shards=1,
                                                 shard_name_template="")
    )
    _ = (
        examples[USERS]
        | "AllUsers" >> beam.combiners.ToList()
        | "WriteUsers" >> beam.Map(lambda shards: _write_lines(fileio.join(output_dir, "users.txt"),
                                                                sorted(u for users in shards for u in users)))
    )
    _ = cut | "WriteCut" >> beam.Map(lambda c: fileio.write_json(fileio.join(output_dir, "cut.json"), {"cut": c}))


def _write_lines(path: str, lines: list[str]) -> None:
    fileio.write_text(path, "".join(f"{line}\n" for line in lines))


class DegenerateSplit(ValueError):
    """The split leaves nothing to train on or nothing to evaluate."""


def _check_split(summary: dict, config: ExampleGenConfig) -> None:
    """Stops early, naming the rule, the counts and what to change, when the split cannot train or evaluate."""
    rule = (f"the time cut at timestamp {summary['cut_timestamp']} "
            + (f"(window {config.window_start} to {config.window_end or 'the end'})" if config.window_start
               or config.window_end else "(cut_timestamp)" if config.cut_timestamp
               else f"(train_fraction {config.train_fraction})")
            if config.split == "time" else "the per-user split (each user's last positive to evaluation)")
    counts = (f"{summary['interactions_in']:,} interactions in, {summary['train_examples']:,} train examples "
              f"({summary['train_positives']:,} positive), {summary['eval_examples']:,} eval examples "
              f"({summary['eval_positives']:,} positive)")
    if summary["train_examples"] + summary["eval_examples"] == 0:
        dropped = summary["dropped"]
        raise DegenerateSplit(
            f"no interactions left to split: {summary['interactions_in']:,} interactions in, "
            f"{dropped['unknown_item']:,} dropped as unknown items (not in the item table), "
            f"{dropped['bad_interactions_row']:,} as bad rows; {summary['items_out']:,} items kept, "
            f"{dropped['item_without_text_or_category']:,} dropped for having neither text nor a category, "
            f"{dropped['bad_items_row']:,} as bad rows. Check that the item table's ids match the interactions' "
            f"and that items have text or categories (rows in {summary['dead_letter_file']})")
    if summary["train_examples"] == 0:
        hint = ("every interaction is at or after the cut (do they share one timestamp?): use "
                "--example_gen.split leave_last_out or check the timestamps" if config.split == "time" else
                "every user has a single positive, which goes to evaluation: users need two or more")
        raise DegenerateSplit(f"no training examples: {rule}; {counts}. {hint}")
    if summary["train_positives"] == 0:
        raise DegenerateSplit(f"no positive training examples (rating >= positive_threshold "
                              f"{config.positive_threshold}): {rule}; {counts}. Lower --example_gen.positive_threshold "
                              "or check the rating column")
    if summary["eval_positives"] == 0:
        raise DegenerateSplit(f"no positive evaluation examples to score: {rule}; {counts}. "
                              + ("Lower --example_gen.train_fraction" if config.split == "time" else
                                 "Check the rating column"))


def run_example_gen(config: ExampleGenConfig, output_dir: str,
                    beam_args: Sequence[str] | None = None) -> dict:
    """Runs example_gen; writes train/, eval/ (validation/ with a validation fold), items/items.parquet,
    users.txt (training users), dead_letter/rows.jsonl (every dropped row with its reason) and summary.json to
    output_dir.

    Returns the summary: rows in, examples out per split, rows dropped and why.
    """
    fileio.makedirs(output_dir)
    fileio.remove_tree(fileio.join(output_dir, RUNS))  # a killed run's leftovers
    counters = run_pipeline(lambda p: build(p, config, output_dir), NAMESPACE, beam_args)
    fileio.remove_tree(fileio.join(output_dir, RUNS))
    cut = fileio.read_json(fileio.join(output_dir, "cut.json"))["cut"]
    summary = {
        "interactions_in": counters.get("interactions_in", 0),
        "train_examples": counters.get("train_examples", 0),
        "eval_examples": counters.get("eval_examples", 0),
        "train_positives": counters.get("train_positives", 0),
        "eval_positives": counters.get("eval_positives", 0),
        "items_out": counters.get("items_out", 0),
        "dropped": {reason: counters.get(f"dropped_{reason}", 0) for reason in DROP_REASONS},
        "users_without_positives": counters.get("users_without_positives", 0),
        **({"window": {"start": config.window_start, "cut": cut, "end": config.window_end,
                       "rows_before_window": counters.get("rows_before_window", 0),
                       "rows_after_window": counters.get("rows_after_window", 0)}}
           if config.window_start or config.window_end else {}),
        **({"validation_examples": counters.get("validation_examples", 0),
            "validation_positives": counters.get("validation_positives", 0),
            "validation_share": config.validation_share} if config.validation_share else {}),
        **({"train_sequences": counters.get("train_sequences", 0),
            "train_sequence_targets": counters.get("train_sequence_targets", 0),
            "train_sequence_items": counters.get("train_sequence_items", 0),
            "sequence_length": config.sequence_length} if config.sequence_length else {}),
        "dead_letter_file": fileio.join(output_dir, DEAD_LETTER, "rows.jsonl"),
        "split": config.split,
        "cut_timestamp": cut,
        "config": dataclasses.asdict(config),
    }
    fileio.write_json(fileio.join(output_dir, "summary.json"), summary)
    _check_split(summary, config)
    dropped = sum(summary["dropped"].values())
    print(f"[example_gen] {summary['interactions_in']:,} interactions in -> {summary['train_examples']:,} train + "
          f"{summary['eval_examples']:,} eval examples, {summary['items_out']:,} items; "
          f"dropped {dropped:,} ({', '.join(f'{k}: {v:,}' for k, v in summary['dropped'].items())}); "
          f"{summary['users_without_positives']:,} users without positives (kept); "
          + (f"cut at timestamp {cut}" if config.split == "time" else "each user's last positive to eval")
          + (f"; window {config.window_start} to {config.window_end or 'the end'}: "
             f"{summary['window']['rows_before_window']:,} earlier and {summary['window']['rows_after_window']:,} "
             "later interactions fill histories only" if "window" in summary else "")
          + (f"; {summary['validation_positives']:,} users' last training positive held out for validation "
             f"({summary['validation_examples']:,} examples)" if config.validation_share else "")
          + ("" if config.items else "; no item file: items taken from the interactions, without text")
          + (f"; {summary['train_sequences']:,} training sequences of up to {config.sequence_length + 1} items hold "
             f"{summary['train_sequence_targets']:,} targets ({summary['train_positives']:,} training positives; a "
             "user's first is context only)" if config.sequence_length else "")
          + (f"; dropped rows in {summary['dead_letter_file']}" if dropped else ""), flush=True)
    return summary
