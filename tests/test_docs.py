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


def test_the_package_installs_under_one_distinctive_name():
    """The design card's folders import as llm_hardneg.components / llm_hardneg.tfx_pipeline (setup.py's
    package_dir); outside the repository the generic names `components` and `tfx_pipeline` do not exist, and no
    file of the repository imports them, so the two spellings can never load one module twice."""
    import subprocess
    import sys
    import tempfile

    probe = ("import importlib.util as u, llm_hardneg.components.trainer as t, llm_hardneg.tfx_pipeline.config;"
             "print(t.__file__); print(u.find_spec('components'), u.find_spec('tfx_pipeline'))")
    with tempfile.TemporaryDirectory() as cwd:
        out = subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": ""}).stdout.splitlines()
    assert out[0] == os.path.join(ROOT, "components", "trainer", "__init__.py")
    assert out[1] == "None None"
    generic = re.compile(r"^\s*(?:from|import)\s+(?:components|tfx_pipeline)\b", re.M)
    offenders = []
    for folder in ("components", "tfx_pipeline", "tests", "benchmarks", "docs", "deploy"):
        for root, dirs, files in os.walk(os.path.join(ROOT, folder)):
            dirs[:] = [d for d in dirs if d not in ("work", "__pycache__")]
            for name in (f for f in files if f.endswith(".py")):
                with open(os.path.join(root, name), encoding="utf-8") as f:
                    if generic.search(f.read()):
                        offenders.append(os.path.relpath(os.path.join(root, name), ROOT))
    assert not offenders, offenders
