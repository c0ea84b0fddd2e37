"""Configuration of item_clusterer."""

from __future__ import annotations

import dataclasses
import math

EMBEDDING_KINDS = ("llm", "behavioural")


@dataclasses.dataclass(frozen=True)
class ItemClustererConfig:
    """k-means over LLM embeddings.

    num_clusters: C; 0 picks round(sqrt(number of items)) clipped to [2, 1024]: coarse enough
      that a cluster is not mostly the positive's near-duplicates (the paper warns that overly
      granular clusters raise false negatives), fine enough to be harder than random.
    max_fit_items: k-means is fit on at most this many items (a deterministic hash sample),
      then every item is assigned to its nearest centroid.
    n_init, iterations: k-means restarts (the lowest-inertia one is kept) and Lloyd iterations of
      each; the fit costs O(n_init * iterations * sample * C * d).
    seed: the k-means++ seeding and faiss' k-means (restart r uses seed + r).
    embedding_kind: the name of the table made from the embeddings: 'llm' (item_embedder's text
      embeddings) or 'behavioural' (a trained candidate tower's item embeddings, e.g. the
      exporter's candidates.parquet: clusters refreshed from the previous model).
    """

    num_clusters: int = 0
    max_fit_items: int = 200_000
    n_init: int = 1
    iterations: int = 25
    seed: int = 0
    embedding_kind: str = "llm"

    def __post_init__(self):
        if self.embedding_kind not in EMBEDDING_KINDS:
            raise ValueError(f"embedding_kind must be one of {EMBEDDING_KINDS}, got {self.embedding_kind!r}")
        if self.num_clusters < 0 or self.num_clusters == 1:
            raise ValueError(f"num_clusters must be 0 (auto) or >= 2, got {self.num_clusters}")
        if self.n_init < 1 or self.iterations < 1:
            raise ValueError(f"n_init and iterations must be >= 1, got {self.n_init} and {self.iterations}")
        if self.max_fit_items < 2:
            raise ValueError(f"max_fit_items must be >= 2, got {self.max_fit_items}")

    def clusters_for(self, num_items: int) -> int:
        """The number of clusters used for a catalogue of `num_items` items."""
        wanted = self.num_clusters or min(1024, max(2, round(math.sqrt(num_items))))
        return max(1, min(wanted, num_items))
