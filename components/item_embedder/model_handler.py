"""A Beam RunInference ModelHandler for Hugging Face text models (encoders and decoders).

Beam's own Hugging Face handlers run a model on pre-tokenised tensors and return raw outputs;
embedding texts needs tokenisation with padding inside the batch and pooling over the
attention mask, so this handler does both around `AutoModel`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TextModel:
    """A loaded tokenizer + model and the pooling it uses."""

    tokenizer: Any
    model: Any
    pooling: str
    max_length: int


def _resolve_pooling(config, pooling: str) -> str:
    if pooling != "auto":
        return pooling
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", "")
    decoder_only = (model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
                    and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
                    and not getattr(config, "is_encoder_decoder", False))
    return "last" if decoder_only else "mean"


def load_text_model(path: str, pooling: str = "auto", max_length: int = 64) -> TextModel:
    """Loads tokenizer and base model from a local directory or a cached hub id (offline)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, config=config)
    except OSError as error:
        raise OSError(f"cannot load text model {path!r} offline: give a directory saved with save_pretrained "
                      f"or a hub id already in the local cache ({error})") from None
    if getattr(config, "is_encoder_decoder", False):
        model = model.get_encoder()
    if tokenizer.pad_token is None:  # decoders (Llama, GPT) ship without one
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "right"
    model.eval()
    torch.set_grad_enabled(False)
    return TextModel(tokenizer, model, _resolve_pooling(config, pooling), max_length)


def embed_texts(text_model: TextModel, texts: Sequence[str]) -> np.ndarray:
    """Embeds texts: [len(texts), hidden] float32, L2-normalised rows."""
    import torch

    batch = text_model.tokenizer(list(texts), padding=True, truncation=True,
                                 max_length=text_model.max_length, return_tensors="pt")
    with torch.inference_mode():
        hidden = text_model.model(input_ids=batch["input_ids"],
                                  attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].to(hidden.dtype).unsqueeze(-1)  # [B, T, 1]
    if text_model.pooling == "mean":
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    elif text_model.pooling == "last":
        last = batch["attention_mask"].sum(dim=1) - 1  # right padding: last real token
        pooled = hidden[torch.arange(hidden.shape[0]), last]
    elif text_model.pooling == "cls":
        pooled = hidden[:, 0]
    else:
        raise ValueError(f"unknown pooling {text_model.pooling!r}")
    pooled = torch.nn.functional.normalize(pooled.float(), p=2.0, dim=-1)
    return pooled.cpu().numpy().astype(np.float32)


class TextEmbeddingModelHandler(ModelHandler[str, PredictionResult, TextModel]):
    """RunInference handler: text -> PredictionResult(text, float32 embedding).

    The model loads in `load_model` (once per worker), never at construction.
    """

    def __init__(self, model_path: str, pooling: str = "auto", max_length: int = 64, batch_size: int = 64,
                 num_threads: int = 0):
        super().__init__()
        self._model_path = model_path
        self._pooling = pooling
        self._max_length = max_length
        self._batch_size = batch_size
        self._num_threads = num_threads

    def load_model(self) -> TextModel:
        if self._num_threads:
            import torch

            torch.set_num_threads(self._num_threads)
        return load_text_model(self._model_path, self._pooling, self._max_length)

    def run_inference(self, batch: Sequence[str], model: TextModel,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        lengths = [len(ids) for ids in model.tokenizer(list(batch))["input_ids"]]
        Metrics.counter("item_embedder", "texts_truncated").inc(sum(n > model.max_length for n in lengths))
        vectors = embed_texts(model, batch)
        return [PredictionResult(text, vector) for text, vector in zip(batch, vectors)]

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": self._batch_size}

    def get_metrics_namespace(self) -> str:
        return "item_embedder"
