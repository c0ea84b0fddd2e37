"""item_clusterer: item embeddings -> cluster ids (k-means) and category clusters; cluster report."""

from components.item_clusterer.config import ItemClustererConfig
from components.item_clusterer.pipeline import run_item_clusterer

__all__ = ["ItemClustererConfig", "run_item_clusterer"]
