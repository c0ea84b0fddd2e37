"""Loading the trainer's tower SavedModels and embedding the item catalogue with them."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf


def load_towers(model_dir: str):
    """(query, candidate) SavedModels of a trainer output directory."""
    for name in ("query_model", "candidate_model"):
        if not os.path.isdir(os.path.join(model_dir, name)):
            raise FileNotFoundError(f"no {name}/ SavedModel under {model_dir}: run the trainer first")
    return (tf.saved_model.load(os.path.join(model_dir, "query_model")),
            tf.saved_model.load(os.path.join(model_dir, "candidate_model")))


def embed_items(candidate_model, item_ids: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """[V, d] float32 candidate embeddings of item_ids."""
    parts = [candidate_model(tf.constant(item_ids[i:i + batch_size].tolist()))["embedding"].numpy()
             for i in range(0, len(item_ids), batch_size)]
    return np.concatenate(parts).astype(np.float32)
