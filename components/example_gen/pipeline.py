"""example_gen as a Beam pipeline.

    interactions --parse+validate--> drop rows whose item is not in the catalogue (counted)
      |-> timestamp counts -> cut (side input)
      |-> group by user -> histories + split -> tf.Examples -> train/, eval/ (deterministic shards)
      |-> training counts per item --join catalogue--> items/items.parquet
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics

from components.common.beam_io import Counted, ReadNumberedRecords, WriteDeterministicTFRecords, expand_patterns
from components.common.beam_run import run_pipeline
from components.common.schema import load_schema, validate_row
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


def _validated(record, schema_name: str):
    source, line, row = record
    return validate_row(load_schema(schema_name), row, source, line)


class _KeepKnownItems(beam.DoFn):
    """Drops (and counts) interactions whose item is not in the catalogue."""

    def __init__(self):
        self.kept = Metrics.counter(NAMESPACE, "interactions_kept")
        self.unknown = Metrics.counter(NAMESPACE, "dropped_unknown_item")

    def process(self, row, catalogue_ids):
        if row["item_id"] in catalogue_ids:
            self.kept.inc()
            yield row
        else:
            self.unknown.inc()


class _UserExamples(beam.DoFn):
    def __init__(self, history_length: int, positive_threshold: float):
        self._history_length = history_length
        self._threshold = positive_threshold
        self.counters = {s: Metrics.counter(NAMESPACE, f"{s}_examples") for s in (core.TRAIN, core.EVAL)}
        self.positives = {s: Metrics.counter(NAMESPACE, f"{s}_positives") for s in (core.TRAIN, core.EVAL)}

    def process(self, element, cut):
        user_id, rows = element
        for split, example in core.user_examples(
                user_id, ((r["item_id"], r["rating"], r["timestamp"]) for r in rows),
                cut, self._history_length, self._threshold):
            self.counters[split].inc()
            if example["label"]:
                self.positives[split].inc()
            yield beam.pvalue.TaggedOutput(split, example)


def _item_row(element) -> dict:
    item_id, grouped = element
    item = grouped["item"][0]
    counts = grouped["counts"]
    total, positives = counts[0] if counts else (0, 0)
    return {"item_id": item_id, "text": item["text"], "categories": list(item["categories"]),
            "train_count": total, "train_positive_count": positives}


def _first_item(items):
    """Keeps one catalogue row per id; duplicate ids with different text are an error."""
    items = list(items)
    texts = {i["text"] for i in items}
    if len(texts) > 1:
        raise ValueError(f"item id {items[0]['item_id']!r} appears {len(items)} times with different text: "
                         f"{sorted(texts)[:3]}")
    return items[0]


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
    ratings_reader = readers.movielens_ratings if config.source == "movielens" else readers.generic_rows
    items_reader = readers.movielens_movies if config.source == "movielens" else readers.generic_rows

    items = (
        pipeline
        | "ReadItems" >> ReadNumberedRecords(expand_patterns([config.items]), items_reader)
        | "ValidateItems" >> beam.Map(_validated, schema_name="items")
        | "KeyItems" >> beam.Map(lambda r: (r["item_id"], r))
        | "GroupItemIds" >> beam.GroupByKey()
        | "OneRowPerItem" >> beam.MapTuple(lambda item_id, rows: (item_id, _first_item(rows)))
    )
    catalogue_ids = items | "Ids" >> beam.Keys()

    interactions = (
        pipeline
        | "ReadInteractions" >> ReadNumberedRecords(expand_patterns([config.interactions]), ratings_reader)
        | "ValidateInteractions" >> beam.Map(_validated, schema_name="interactions")
        | "CountIn" >> Counted(NAMESPACE, "interactions_in")
        | "KnownItems" >> beam.ParDo(_KeepKnownItems(),
                                     catalogue_ids=beam.pvalue.AsDict(catalogue_ids | beam.Map(lambda i: (i, None))))
    )

    cut = (
        interactions
        | "Timestamps" >> beam.Map(lambda r: r["timestamp"])
        | "CountPerTimestamp" >> beam.combiners.Count.PerElement()
        | "AllCounts" >> beam.combiners.ToList()
        | "Cut" >> beam.Map(core.compute_cut, train_fraction=config.train_fraction)
    )

    examples = (
        interactions
        | "ByUser" >> beam.Map(lambda r: (r["user_id"], r))
        | "GroupByUser" >> beam.GroupByKey()
        | "Examples" >> beam.ParDo(_UserExamples(config.history_length, config.positive_threshold),
                                   cut=beam.pvalue.AsSingleton(cut)).with_outputs(core.TRAIN, core.EVAL)
    )
    for split, shards in ((core.TRAIN, config.num_train_shards), (core.EVAL, config.num_eval_shards)):
        os.makedirs(os.path.join(output_dir, split), exist_ok=True)
        _ = (
            examples[split]
            | f"Serialize{split}" >> beam.Map(lambda e: (core.example_key(e), core.to_tf_example(e)))
            | f"Write{split}" >> WriteDeterministicTFRecords(os.path.join(output_dir, split, "part"), shards)
        )

    counts = (
        examples[core.TRAIN]
        | "ItemLabels" >> beam.Map(lambda e: (e["item_id"], e["label"]))
        | "CountPerItem" >> beam.CombinePerKey(_SumCounts())
    )
    _ = (
        {"item": items, "counts": counts}
        | "JoinCounts" >> beam.CoGroupByKey()
        | "ItemRows" >> beam.Map(_item_row)
        | "CountItems" >> Counted(NAMESPACE, "items_out")
        | "WriteItems" >> beam.io.WriteToParquet(os.path.join(output_dir, "items", "items"), ITEM_TABLE_SCHEMA,
                                                 file_name_suffix=".parquet", num_shards=1,
                                                 shard_name_template="")
    )
    _ = (
        examples[core.TRAIN]
        | "TrainUsers" >> beam.Map(lambda e: e["user_id"])
        | "DistinctUsers" >> beam.Distinct()
        | "AllUsers" >> beam.combiners.ToList()
        | "WriteUsers" >> beam.Map(lambda users: _write_lines(os.path.join(output_dir, "users.txt"), sorted(users)))
    )
    _ = cut | "WriteCut" >> beam.Map(lambda c: _write_json(os.path.join(output_dir, "cut.json"), {"cut": c}))


def _write_lines(path: str, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{line}\n" for line in lines)


def _write_json(path: str, payload: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2)


def run_example_gen(config: ExampleGenConfig, output_dir: str,
                    beam_args: Sequence[str] | None = None) -> dict:
    """Runs example_gen; writes train/, eval/, items/items.parquet, users.txt (training users)
    and summary.json to output_dir.

    Returns the summary: rows in, examples out per split, rows dropped and why.
    """
    os.makedirs(output_dir, exist_ok=True)
    counters = run_pipeline(lambda p: build(p, config, output_dir), NAMESPACE, beam_args)
    with open(os.path.join(output_dir, "cut.json"), encoding="utf-8") as f:
        cut = json.load(f)["cut"]
    summary = {
        "interactions_in": counters.get("interactions_in", 0),
        "train_examples": counters.get("train_examples", 0),
        "eval_examples": counters.get("eval_examples", 0),
        "train_positives": counters.get("train_positives", 0),
        "eval_positives": counters.get("eval_positives", 0),
        "items_out": counters.get("items_out", 0),
        "dropped": {"unknown_item": counters.get("dropped_unknown_item", 0)},
        "cut_timestamp": cut,
        "config": dataclasses.asdict(config),
    }
    _write_json(os.path.join(output_dir, "summary.json"), summary)
    dropped = sum(summary["dropped"].values())
    print(f"[example_gen] {summary['interactions_in']:,} interactions in -> {summary['train_examples']:,} train + "
          f"{summary['eval_examples']:,} eval examples, {summary['items_out']:,} items; "
          f"dropped {dropped:,} ({', '.join(f'{k}: {v:,}' for k, v in summary['dropped'].items())}); "
          f"cut at timestamp {cut}", flush=True)
    return summary
