"""example_gen as a Beam pipeline.

    interactions --parse+validate--> drop rows whose item is not in the catalogue (counted)
      |-> timestamp counts -> cut (side input)
      |-> group by user -> histories + split -> tf.Examples -> train/, eval/ (deterministic shards)
      |-> training counts per item --join catalogue--> items/items.parquet
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Sequence

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics

from components.common import fileio
from components.common.beam_io import Counted, ReadNumberedRecords, WriteDeterministicTFRecords, expand_patterns
from components.common.beam_run import run_pipeline
from components.common.schema import SchemaViolation, load_schema, validate_row
from components.example_gen import core, readers
from components.example_gen.config import ExampleGenConfig

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
DROP_REASONS = ("bad_interactions_row", "bad_items_row", "unknown_item", "item_without_text", "repeated_item_row")


class _Validate(beam.DoFn):
    """Record -> validated row, or per the policy: stop with the problem, or a dead letter.

    Always fatal: an empty input file. Always a counted drop (dead letter), whatever the policy:
    an item without text (its interactions then drop as unknown items).
    """

    def __init__(self, schema_name: str, policy: str):
        self._schema_name, self._policy = schema_name, policy
        self.bad = Metrics.counter(NAMESPACE, f"dropped_bad_{schema_name}_row")
        self.no_text = Metrics.counter(NAMESPACE, "dropped_item_without_text")

    def _dead(self, record: readers.Record, field: str, problem: str) -> beam.pvalue.TaggedOutput:
        return beam.pvalue.TaggedOutput(DEAD_LETTER, {"input": self._schema_name, "source": record.source,
                                                      "line": record.line, "field": field, "problem": problem,
                                                      "raw": record.raw})

    def process(self, record: readers.Record):
        field, problem = record.field, record.problem
        if not problem:
            try:
                row = validate_row(load_schema(self._schema_name), record.row, record.source, record.line)
                if self._schema_name == "interactions":
                    row["input_order"] = (record.source, record.line)  # breaks timestamp ties per user
                yield row
                return
            except SchemaViolation as violation:
                field, problem = violation.field, violation.problem
        if field == "<file>":
            raise SchemaViolation(record.source, record.line, field, problem)
        if self._schema_name == "items" and field == "text":
            self.no_text.inc()
            yield self._dead(record, field, f"item without text ({problem})")
        elif self._policy == "fail":
            raise SchemaViolation(record.source, record.line, field,
                                  f"{problem} (set bad_rows='dead_letter' to drop such rows instead)")
        else:
            self.bad.inc()
            yield self._dead(record, field, problem)


class _KeepKnownItems(beam.DoFn):
    """Drops (counts, dead-letters) interactions whose item is not in the catalogue."""

    def __init__(self):
        self.kept = Metrics.counter(NAMESPACE, "interactions_kept")
        self.unknown = Metrics.counter(NAMESPACE, "dropped_unknown_item")

    def process(self, row, catalogue_ids):
        if row["item_id"] in catalogue_ids:
            self.kept.inc()
            yield row
        else:
            self.unknown.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, {"input": "interactions", "field": "item_id",
                                                         "problem": "item not in the item table", "row": row})


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


class _UserExamples(beam.DoFn):
    def __init__(self, history_length: int, positive_threshold: float, split: str):
        self._history_length = history_length
        self._threshold = positive_threshold
        self._split = split
        self.counters = {s: Metrics.counter(NAMESPACE, f"{s}_examples") for s in (core.TRAIN, core.EVAL)}
        self.positives = {s: Metrics.counter(NAMESPACE, f"{s}_positives") for s in (core.TRAIN, core.EVAL)}
        self.no_positive_users = Metrics.counter(NAMESPACE, "users_without_positives")

    def process(self, element, cut):
        user_id, rows = element
        positives = 0
        for split, example in core.user_examples(
                user_id, ((r["item_id"], r["rating"], r["timestamp"], r["input_order"]) for r in rows),
                cut, self._history_length, self._threshold, self._split):
            self.counters[split].inc()
            if example["label"]:
                self.positives[split].inc()
                positives += 1
            yield beam.pvalue.TaggedOutput(split, example)
        if not positives:  # kept: their items are in-batch candidates; nothing of theirs trains
            self.no_positive_users.inc()


def _item_row(element) -> dict:
    item_id, grouped = element
    item = grouped["item"][0]
    counts = grouped["counts"]
    total, positives = counts[0] if counts else (0, 0)
    return {"item_id": item_id, "text": item["text"], "categories": list(item["categories"]),
            "train_count": total, "train_positive_count": positives}


class _SumCounts(beam.CombineFn):
    def create_accumulator(self):
        return (0, 0)

    def add_input(self, acc, label):
        return acc[0] + 1, acc[1] + label

    def merge_accumulators(self, accs):
        accs = list(accs)
        return sum(a[0] for a in accs), sum(a[1] for a in accs)

    def extract_output(self, acc):
        return acc


def build(pipeline: beam.Pipeline, config: ExampleGenConfig, output_dir: str) -> None:
    """Adds the example_gen transforms to `pipeline`."""
    if config.source == "tfds":  # data set names, not files
        ratings_reader = items_reader = functools.partial(readers.tfds_records, data_dir=config.tfds_data_dir)
        interaction_paths, item_paths = [config.interactions], [config.items]
    else:
        ratings_reader, items_reader = readers.READERS[config.source]
        interaction_paths = expand_patterns([config.interactions])
        item_paths = expand_patterns([config.items]) if config.items else []
    dead_letters = []

    parsed = (
        pipeline
        | "ReadInteractions" >> ReadNumberedRecords(interaction_paths, ratings_reader)
        | "CountIn" >> Counted(NAMESPACE, "interactions_in")
        | "ValidateInteractions" >> beam.ParDo(_Validate("interactions", config.bad_rows)).with_outputs(
            DEAD_LETTER, main="rows")
    )
    dead_letters.append(parsed[DEAD_LETTER])
    if config.items:
        items = (
            pipeline
            | "ReadItems" >> ReadNumberedRecords(item_paths, items_reader)
            | "CountItemsIn" >> Counted(NAMESPACE, "item_rows_in")
            | "ValidateItems" >> beam.ParDo(_Validate("items", config.bad_rows)).with_outputs(DEAD_LETTER,
                                                                                             main="rows")
        )
        dead_letters.append(items[DEAD_LETTER])
        catalogue = (
            items.rows
            | "KeyItems" >> beam.Map(lambda r: (r["item_id"], r))
            | "GroupItemIds" >> beam.GroupByKey()
            | "OneRowPerItem" >> beam.ParDo(_OneRowPerItem())
        )
        catalogue_ids = catalogue | "Ids" >> beam.Keys()
        known = parsed.rows | "KnownItems" >> beam.ParDo(
            _KeepKnownItems(), catalogue_ids=beam.pvalue.AsDict(catalogue_ids | beam.Map(lambda i: (i, None)))
        ).with_outputs(DEAD_LETTER, main="rows")
        dead_letters.append(known[DEAD_LETTER])
        interactions = known.rows
    else:  # no item file: the catalogue is the interactions' items, without text or categories
        interactions = parsed.rows
        catalogue = (
            interactions
            | "InteractionItems" >> beam.Map(lambda r: r["item_id"])
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

    if config.split == "time":
        cut = (
            interactions
            | "Timestamps" >> beam.Map(lambda r: r["timestamp"])
            | "CountPerTimestamp" >> beam.combiners.Count.PerElement()
            | "AllCounts" >> beam.combiners.ToList()
            | "Cut" >> beam.Map(core.compute_cut, train_fraction=config.train_fraction)
        )
    else:  # per-user split: no global cut
        cut = pipeline | "NoCut" >> beam.Create([None])

    examples = (
        interactions
        | "ByUser" >> beam.Map(lambda r: (r["user_id"], r))
        | "GroupByUser" >> beam.GroupByKey()
        | "Examples" >> beam.ParDo(_UserExamples(config.history_length, config.positive_threshold, config.split),
                                   cut=beam.pvalue.AsSingleton(cut)).with_outputs(core.TRAIN, core.EVAL)
    )
    for split, shards in ((core.TRAIN, config.num_train_shards), (core.EVAL, config.num_eval_shards)):
        fileio.makedirs(fileio.join(output_dir, split))
        _ = (
            examples[split]
            | f"Serialize{split}" >> beam.Map(lambda e: (core.example_key(e), core.to_tf_example(e)))
            | f"Write{split}" >> WriteDeterministicTFRecords(fileio.join(output_dir, split, "part"), shards)
        )

    counts = (
        examples[core.TRAIN]
        | "ItemLabels" >> beam.Map(lambda e: (e["item_id"], e["label"]))
        | "CountPerItem" >> beam.CombinePerKey(_SumCounts())
    )
    _ = (
        {"item": catalogue, "counts": counts}
        | "JoinCounts" >> beam.CoGroupByKey()
        | "ItemRows" >> beam.Map(_item_row)
        | "CountItems" >> Counted(NAMESPACE, "items_out")
        | "WriteItems" >> beam.io.WriteToParquet(fileio.join(output_dir, "items", "items"), ITEM_TABLE_SCHEMA,
                                                 file_name_suffix=".parquet", num_shards=1,
                                                 shard_name_template="")
    )
    _ = (
        examples[core.TRAIN]
        | "TrainUsers" >> beam.Map(lambda e: e["user_id"])
        | "DistinctUsers" >> beam.Distinct()
        | "AllUsers" >> beam.combiners.ToList()
        | "WriteUsers" >> beam.Map(lambda users: _write_lines(fileio.join(output_dir, "users.txt"), sorted(users)))
    )
    _ = cut | "WriteCut" >> beam.Map(lambda c: fileio.write_json(fileio.join(output_dir, "cut.json"), {"cut": c}))


def _write_lines(path: str, lines: list[str]) -> None:
    fileio.write_text(path, "".join(f"{line}\n" for line in lines))


class DegenerateSplit(ValueError):
    """The split leaves nothing to train on or nothing to evaluate."""


def _check_split(summary: dict, config: ExampleGenConfig) -> None:
    """Stops early, naming the rule, the counts and what to change, when the split cannot train or evaluate."""
    rule = (f"the time cut at timestamp {summary['cut_timestamp']} (train_fraction {config.train_fraction})"
            if config.split == "time" else "the per-user split (each user's last positive to evaluation)")
    counts = (f"{summary['interactions_in']:,} interactions in, {summary['train_examples']:,} train examples "
              f"({summary['train_positives']:,} positive), {summary['eval_examples']:,} eval examples "
              f"({summary['eval_positives']:,} positive)")
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
    """Runs example_gen; writes train/, eval/, items/items.parquet, users.txt (training users),
    dead_letter/rows.jsonl (every dropped row with its reason) and summary.json to output_dir.

    Returns the summary: rows in, examples out per split, rows dropped and why.
    """
    fileio.makedirs(output_dir)
    counters = run_pipeline(lambda p: build(p, config, output_dir), NAMESPACE, beam_args)
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
          + ("" if config.items else "; no item file: items taken from the interactions, without text")
          + (f"; dropped rows in {summary['dead_letter_file']}" if dropped else ""), flush=True)
    return summary
