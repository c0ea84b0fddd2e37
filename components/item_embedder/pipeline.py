"""item_embedder as a Beam pipeline:

    items.parquet -> (item_id, text) -> RunInference(TextEmbeddingModelHandler) -> embeddings/*.parquet
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from llm_hardneg.components.common import fileio
from llm_hardneg.components.common.beam_io import Counted
from llm_hardneg.components.common.beam_run import run_pipeline
from llm_hardneg.components.common.progress import ProgressDoFn
from llm_hardneg.components.item_embedder.config import ItemEmbedderConfig
from llm_hardneg.components.item_embedder.model_handler import TextEmbeddingModelHandler

NAMESPACE = "item_embedder"
EMBEDDING_SCHEMA = pa.schema([("item_id", pa.string()), ("embedding", pa.list_(pa.float32()))])


def _to_row(element) -> dict:
    item_id, result = element
    vector = np.asarray(result.inference, dtype=np.float32)
    if not np.all(np.isfinite(vector)):
        raise ValueError(f"item {item_id!r}: the text model produced a non-finite embedding "
                         f"for text {result.example!r}")
    return {"item_id": item_id, "embedding": vector.tolist()}


class _WithText(beam.DoFn):
    """Items without text (a catalogue taken from the interactions) get no embedding; counted."""

    def __init__(self):
        self.no_text = Metrics.counter(NAMESPACE, "items_without_text")

    def process(self, row: dict):
        if row["text"] and row["text"].strip():
            yield row
        else:
            self.no_text.inc()


def build(pipeline: beam.Pipeline, config: ItemEmbedderConfig, items_path: str, output_dir: str) -> None:
    handler = KeyedModelHandler(TextEmbeddingModelHandler(
        config.model_path(), config.pooling, config.max_length, config.batch_size))
    _ = (
        pipeline
        | "ReadItems" >> beam.io.ReadFromParquet(items_path, columns=["item_id", "text"])
        | "CountIn" >> Counted(NAMESPACE, "items_in")
        | "WithText" >> beam.ParDo(_WithText())
        | "KeyText" >> beam.Map(lambda r: (r["item_id"], r["text"]))
        | "Embed" >> RunInference(handler)
        | "Progress" >> beam.ParDo(ProgressDoFn("item_embedder", "items embedded"))
        | "ToRow" >> beam.Map(_to_row)
        | "CountOut" >> Counted(NAMESPACE, "items_out")
        | "Write" >> beam.io.WriteToParquet(fileio.join(output_dir, "embeddings"), EMBEDDING_SCHEMA,
                                            file_name_suffix=".parquet")
    )


def run_item_embedder(config: ItemEmbedderConfig, items_path: str, output_dir: str,
                      beam_args: Sequence[str] | None = None) -> dict:
    """Embeds every item of the item table; writes embeddings*.parquet and summary.json."""
    fileio.makedirs(output_dir)
    counters = run_pipeline(lambda p: build(p, config, items_path, output_dir), NAMESPACE, beam_args)
    summary = {
        "items_in": counters.get("items_in", 0),
        "items_out": counters.get("items_out", 0),
        "texts_truncated": counters.get("texts_truncated", 0),
        "items_without_text": counters.get("items_without_text", 0),
        "model": config.model_path(),
        "config": dataclasses.asdict(config),
    }
    fileio.write_json(fileio.join(output_dir, "summary.json"), summary)
    print(f"[item_embedder] {summary['items_in']:,} items in -> {summary['items_out']:,} embeddings out; "
          f"{summary['texts_truncated']:,} texts truncated to {config.max_length} tokens; "
          f"{summary['items_without_text']:,} items without text skipped (no embedding, no LLM cluster)", flush=True)
    return summary
