"""run_exporter: writes candidates.parquet, scann_index/, serving_model/ (brute force, stock TF ops)
and serving_model_scann/ (ScaNN TF ops) to output_dir."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf

from llm_hardneg.components.common.models import embed_items, load_towers
from llm_hardneg.components.common.tables import read_item_table
from llm_hardneg.components.exporter.core import ExporterConfig, ScannTopKServing, TopKServing, build_scann_index


def run_exporter(config: ExporterConfig, model_dir: str, items_path: str, output_dir: str) -> dict:
    query_model, candidate_model = load_towers(model_dir)
    item_ids = read_item_table(items_path, columns=("item_id",))["item_id"]
    candidates = embed_items(candidate_model, item_ids)
    if not np.all(np.isfinite(candidates)):
        raise ValueError("candidate embeddings contain NaN or inf: the model is broken")
    os.makedirs(output_dir, exist_ok=True)
    pq.write_table(pa.table({"item_id": item_ids.tolist(), "embedding": list(candidates)}),
                   os.path.join(output_dir, "candidates.parquet"))

    index_dir = os.path.join(output_dir, "scann_index")
    os.makedirs(index_dir, exist_ok=True)
    searcher = build_scann_index(candidates, config)
    searcher.serialize(index_dir)
    with open(os.path.join(index_dir, "item_ids.txt"), "w", encoding="utf-8") as f:
        f.writelines(f"{i}\n" for i in item_ids)

    serving_dir = os.path.join(output_dir, "serving_model")
    tf.saved_model.save(TopKServing(query_model, item_ids, candidates, config.k, config.exclude_history), serving_dir)
    scann_serving_dir = os.path.join(output_dir, "serving_model_scann")
    tf.saved_model.save(ScannTopKServing(query_model, item_ids, candidates, config), scann_serving_dir,
                        options=ScannTopKServing.save_options())
    summary = {"items": len(item_ids), "dim": int(candidates.shape[1]), "k": config.k,
               "candidates": os.path.join(output_dir, "candidates.parquet"), "scann_index": index_dir,
               "serving_model": serving_dir, "serving_model_scann": scann_serving_dir}
    with open(os.path.join(output_dir, "export_summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    print(f"[exporter] {len(item_ids):,} items in -> {len(item_ids):,} candidate embeddings, ScaNN index and "
          f"top-{config.k} serving SavedModels (brute force, ScaNN) in {output_dir}; dropped 0", flush=True)
    return summary
