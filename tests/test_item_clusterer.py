import json
import os

import numpy as np
import pytest

from components.item_clusterer import ItemClustererConfig, core
from components.item_clusterer.pipeline import read_cluster_table


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_assign_matches_numpy_nearest_centroid(seed):
    rng = np.random.default_rng(seed)
    x, c = rng.normal(size=(200, 8)).astype(np.float32), rng.normal(size=(7, 8)).astype(np.float32)
    expected = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(core.assign(x, c), expected)


def test_fit_recovers_separated_blobs():
    rng = np.random.default_rng(0)
    centers = np.eye(4, 16, dtype=np.float32) * 10
    labels = np.repeat(np.arange(4), 50)
    x = centers[labels] + rng.normal(scale=0.1, size=(200, 16)).astype(np.float32)
    assigned = core.assign(x, core.fit_centroids(x, 4, seed=0))
    # the same partition up to renaming of clusters
    assert len({(a, b) for a, b in zip(labels, assigned)}) == 4


def test_fit_sample_is_deterministic_and_near_rate():
    ids = [str(i) for i in range(20000)]
    chosen = [i for i in ids if core.in_fit_sample(i, 0.25)]
    assert chosen == [i for i in ids if core.in_fit_sample(i, 0.25)]
    assert 0.23 < len(chosen) / len(ids) < 0.27


def test_auto_number_of_clusters():
    assert ItemClustererConfig().clusters_for(3883) == 62
    assert ItemClustererConfig().clusters_for(3) == 2
    assert ItemClustererConfig(num_clusters=10).clusters_for(5) == 5
    with pytest.raises(ValueError, match="num_clusters"):
        ItemClustererConfig(num_clusters=1)


def test_step_outputs(clusters_dir, examples_dir):
    llm = read_cluster_table(os.path.join(clusters_dir, "llm"))
    category = read_cluster_table(os.path.join(clusters_dir, "category"))
    assert set(llm) == set(category) == {str(i) for i in range(1, 41)}
    assert set(llm.values()) <= set(range(4))
    vocabulary = json.load(open(os.path.join(clusters_dir, "category", "vocabulary.json")))
    from tests.helpers import GENRES

    for item, cluster in category.items():  # first genre of item i is GENRES[i % 5]
        assert vocabulary[GENRES[int(item) % len(GENRES)]] == cluster
    report = json.load(open(os.path.join(clusters_dir, "report.json")))
    assert sum(report["llm"]["sizes"]) == 40 and report["llm"]["num_clusters"] == 4
    assert report["llm"]["empty_clusters"] == sum(size == 0 for size in report["llm"]["sizes"])
    assert json.load(open(os.path.join(clusters_dir, "llm", "meta.json"))) == {"num_clusters": 4}
    assert os.path.getsize(os.path.join(clusters_dir, "cluster_sizes.png")) > 1000
