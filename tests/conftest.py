import os

import pytest

import llm_hardneg.components.common.env  # noqa: F401  (Keras 2, offline hub, before TensorFlow)
from tests import helpers


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    return helpers.save_tiny_bert(str(tmp_path_factory.mktemp("bert")))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    return helpers.save_tiny_llama(str(tmp_path_factory.mktemp("llama")))


@pytest.fixture(scope="session")
def movielens_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("ml"))
    helpers.write_movielens(directory)
    return directory


@pytest.fixture(scope="session")
def examples_dir(tmp_path_factory, movielens_dir):
    """example_gen output on the tiny MovieLens data (shared by downstream tests)."""
    from llm_hardneg.components.example_gen import ExampleGenConfig, run_example_gen

    out = str(tmp_path_factory.mktemp("examples"))
    run_example_gen(ExampleGenConfig.movielens(movielens_dir, history_length=5, num_train_shards=3,
                                               num_eval_shards=2), out)
    return out


@pytest.fixture(scope="session")
def clusters_dir(tmp_path_factory, examples_dir, tiny_bert):
    from llm_hardneg.components.item_clusterer import ItemClustererConfig, run_item_clusterer
    from llm_hardneg.components.item_embedder import ItemEmbedderConfig, run_item_embedder

    root = tmp_path_factory.mktemp("clusters")
    embeddings = str(root / "embeddings")
    run_item_embedder(ItemEmbedderConfig(model=tiny_bert, batch_size=8),
                      os.path.join(examples_dir, "items", "*.parquet"), embeddings)
    out = str(root / "clusters")
    run_item_clusterer(ItemClustererConfig(num_clusters=4), embeddings,
                       os.path.join(examples_dir, "items", "*.parquet"), out)
    return out
