"""Pure logic of item_clusterer: hash sampling, k-means fit, nearest-centroid assignment."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence

import numpy as np


def in_fit_sample(item_id: str, rate: float) -> bool:
    """Deterministic Bernoulli(rate) membership of an item in the k-means fit sample."""
    return zlib.crc32(item_id.encode("utf-8")) < rate * 2**32


def fit_sample_mask(item_ids: Sequence[str], rate: float) -> np.ndarray:
    """in_fit_sample of each id: [n] bool."""
    return np.fromiter((in_fit_sample(i, rate) for i in item_ids), dtype=bool, count=len(item_ids))


def fit_centroids(vectors: np.ndarray, num_clusters: int, seed: int, n_init: int = 1,
                  iterations: int = 25) -> np.ndarray:
    """k-means on [n, d] vectors -> [num_clusters, d] float32 centroids: of `n_init` restarts, the one with the
    lowest inertia. Each restart seeds with k-means++ (scikit-learn) on a random subsample of
    max(10,000, 4 * num_clusters) vectors, then runs `iterations` Lloyd iterations of faiss's k-means on all.

    Why not scikit-learn's KMeans alone: its k-means++ seeding is O(n * C * d * log C) with a Python loop
    over C (about 5 s per 4,000 seeding vectors at C = 1,000 on 2 cores), so seeding the whole 200k-vector
    sample of a 10^6-item catalogue takes minutes, and its Lloyd steps are slower than faiss's. Why not faiss
    alone: it seeds with C random vectors, which can put two seeds in one well-separated group and none in
    another. faiss's result does not depend on its thread count.
    """
    import faiss
    from sklearn.cluster import kmeans_plusplus

    if len(vectors) < num_clusters:
        raise ValueError(f"cannot fit {num_clusters} clusters on {len(vectors)} items; lower num_clusters")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    rng = np.random.default_rng(seed)
    best, best_inertia = None, np.inf
    for attempt in range(n_init):
        size = min(len(vectors), max(10_000, 4 * num_clusters))
        subsample = np.sort(rng.choice(len(vectors), size=size, replace=False))
        init, _ = kmeans_plusplus(vectors[subsample], num_clusters, random_state=seed + attempt)
        km = faiss.Kmeans(vectors.shape[1], num_clusters, niter=iterations, seed=seed + attempt, verbose=False,
                          min_points_per_centroid=1, max_points_per_centroid=len(vectors))
        km.train(vectors, init_centroids=np.ascontiguousarray(init, dtype=np.float32))
        if km.obj[-1] < best_inertia:
            best, best_inertia = np.array(km.centroids, dtype=np.float32).reshape(num_clusters, -1), km.obj[-1]
    return best


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
