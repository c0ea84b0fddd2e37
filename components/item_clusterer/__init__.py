"""item_clusterer: item embeddings -> cluster ids (k-means) and category clusters; cluster report."""

from llm_hardneg.components.item_clusterer.config import ItemClustererConfig
from llm_hardneg.components.item_clusterer.pipeline import run_item_clusterer

__all__ = ["ItemClustererConfig", "run_item_clusterer"]
