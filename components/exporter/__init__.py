"""exporter: candidate embeddings, a ScaNN index and a serving SavedModel (raw features -> top-K)."""

from llm_hardneg.components.exporter.core import ExporterConfig, ScannTopKServing, TopKServing, build_scann_index
from llm_hardneg.components.exporter.run import run_exporter

__all__ = ["ExporterConfig", "ScannTopKServing", "TopKServing", "build_scann_index", "run_exporter"]
