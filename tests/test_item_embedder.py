import glob
import os

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from llm_hardneg.components.item_embedder import (
    ItemEmbedderConfig,
    TextEmbeddingModelHandler,
    embed_texts,
    load_text_model,
)

TEXTS = ["Movie number 1 (1991). Genres: Action", "Movie number 22 (1992). Genres: Comedy, Drama, Horror, Romance",
         "Movie 3"]


def _hidden(text_model, text):
    batch = text_model.tokenizer([text], return_tensors="pt")
    with torch.inference_mode():
        return text_model.model(**batch).last_hidden_state[0].numpy()


def test_auto_pooling_is_mean_for_encoders_and_last_for_decoders(tiny_bert, tiny_llama):
    assert load_text_model(tiny_bert).pooling == "mean"
    assert load_text_model(tiny_llama).pooling == "last"


@pytest.mark.parametrize("which", ["bert", "llama"])
def test_pooling_matches_unbatched_oracle(which, tiny_bert, tiny_llama):
    model = load_text_model(tiny_bert if which == "bert" else tiny_llama)
    vectors = embed_texts(model, TEXTS)  # padded batch
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    for text, vector in zip(TEXTS, vectors):
        hidden = _hidden(model, text)  # unpadded, one text
        expected = hidden.mean(axis=0) if model.pooling == "mean" else hidden[-1]
        np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), atol=1e-4)


def test_default_model_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    path = ItemEmbedderConfig().model_path()
    ours = embed_texts(load_text_model(path, max_length=128), TEXTS)
    reference = SentenceTransformer(path, device="cpu").encode(TEXTS, normalize_embeddings=True)
    assert ours.shape == (3, 384)
    np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_missing_model_error_names_path(tmp_path):
    with pytest.raises(OSError, match="cannot load text model"):
        load_text_model(str(tmp_path / "nope"))


def test_run_inference_in_test_pipeline(tiny_llama):
    handler = KeyedModelHandler(TextEmbeddingModelHandler(tiny_llama, batch_size=2))

    def check(results):
        assert sorted(k for k, _ in results) == ["a", "b", "c"]
        for _, result in results:
            assert result.inference.shape == (32,)
            assert abs(float(np.linalg.norm(result.inference)) - 1.0) < 1e-5

    with TestPipeline(runner="DirectRunner") as p:
        out = p | beam.Create(list(zip("abc", TEXTS))) | RunInference(handler)
        assert_that(out, check)


def test_step_writes_every_item(examples_dir, tiny_bert, tmp_path):
    from llm_hardneg.components.item_embedder import run_item_embedder

    summary = run_item_embedder(ItemEmbedderConfig(model=tiny_bert, batch_size=7),
                                os.path.join(examples_dir, "items", "*.parquet"), str(tmp_path))
    rows = [r for f in glob.glob(str(tmp_path / "*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert summary["items_in"] == summary["items_out"] == len(rows) == 40
    assert sorted(r["item_id"] for r in rows) == sorted(str(i) for i in range(1, 41))
    assert all(len(r["embedding"]) == 32 for r in rows)
