"""README and docs/: every relative link points at a file of the repository, and every docs page is linked."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _pages() -> list[str]:
    docs = os.path.join(ROOT, "docs")
    return [os.path.join(ROOT, "README.md")] + sorted(os.path.join(docs, f) for f in os.listdir(docs)
                                                      if f.endswith(".md"))


def test_relative_links_resolve():
    broken = []
    for page in _pages():
        with open(page, encoding="utf-8") as f:
            for target in LINK.findall(f.read()):
                if "://" in target:
                    continue
                if not os.path.exists(os.path.normpath(os.path.join(os.path.dirname(page), target))):
                    broken.append(f"{os.path.relpath(page, ROOT)} -> {target}")
    assert not broken, broken


def test_every_docs_page_is_linked_from_the_readme():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        linked = {os.path.normpath(t) for t in LINK.findall(f.read())}
    pages = {os.path.relpath(p, ROOT) for p in _pages()[1:]}
    assert pages <= linked, sorted(pages - linked)


def test_tfrs_example_trains_with_the_pool():
    """docs/examples/tfrs_cluster_negatives.py, run as a reader would: its TFRS model's loss falls over the
    epochs and the cluster draws carry a reported share of the softmax mass."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tfrs_example",
                                                  os.path.join(ROOT, "docs", "examples", "tfrs_cluster_negatives.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    history = example.main(epochs=2)
    assert history["loss"][1] < 0.9 * history["loss"][0]
    assert 0.0 < history["mass_cluster"][-1] < 1.0
    model_pool = example.TwoTower(3, example.np.arange(4) % 2, example.np.full(4, 0.25)).pool
    assert model_pool.num_clusters == 2  # one segment per cluster of the item table
