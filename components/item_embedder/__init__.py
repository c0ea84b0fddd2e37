"""item_embedder: item text -> L2-normalised LLM embedding, with Beam RunInference."""

from llm_hardneg.components.item_embedder.config import ItemEmbedderConfig
from llm_hardneg.components.item_embedder.model_handler import TextEmbeddingModelHandler, embed_texts, load_text_model
from llm_hardneg.components.item_embedder.pipeline import run_item_embedder

__all__ = ["ItemEmbedderConfig", "TextEmbeddingModelHandler", "embed_texts", "load_text_model", "run_item_embedder"]
