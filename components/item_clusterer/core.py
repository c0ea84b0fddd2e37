"""Pure logic of item_clusterer: hash sampling, k-means fit, nearest-centroid assignment."""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import numpy as np


def in_fit_sample(item_id: str, rate: float) -> bool:
    """Deterministic Bernoulli(rate) membership of an item in the k-means fit sample."""
    return zlib.crc32(item_id.encode("utf-8")) < rate * 2**32


def fit_centroids(vectors: np.ndarray, num_clusters: int, seed: int, n_init: int = 4) -> np.ndarray:
    """k-means (scikit-learn) on [n, d] vectors -> [num_clusters, d] float32 centroids."""
    from sklearn.cluster import KMeans

    if len(vectors) < num_clusters:
        raise ValueError(f"cannot fit {num_clusters} clusters on {len(vectors)} items; lower num_clusters")
    km = KMeans(n_clusters=num_clusters, n_init=n_init, random_state=seed)
    km.fit(np.asarray(vectors, dtype=np.float32))
    return km.cluster_centers_.astype(np.float32)


def assign(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (Euclidean) of each row: [n] int64."""
    vectors = np.asarray(vectors, dtype=np.float32)
    # argmin |x - c|^2 = argmax (x.c - |c|^2 / 2)
    scores = vectors @ centroids.T - 0.5 * np.sum(centroids * centroids, axis=1)[None, :]
    return np.argmax(scores, axis=1).astype(np.int64)


def category_vocabulary(first_categories: Iterable[str]) -> dict[str, int]:
    """Sorted distinct first categories -> cluster id ('' = items without a category)."""
    return {name: index for index, name in enumerate(sorted(set(first_categories)))}


def size_summary(cluster_ids: np.ndarray, num_clusters: int) -> dict:
    sizes = np.bincount(cluster_ids, minlength=num_clusters)
    return {
        "num_clusters": int(num_clusters),
        "num_items": int(sizes.sum()),
        "empty_clusters": int((sizes == 0).sum()),
        "min": int(sizes.min()),
        "median": float(np.median(sizes)),
        "mean": float(sizes.mean()),
        "max": int(sizes.max()),
        "sizes": sizes.tolist(),
    }
