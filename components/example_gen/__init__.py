"""example_gen: raw interactions + item catalogue -> time-split tf.Example shards + item table."""

from llm_hardneg.components.example_gen.config import ExampleGenConfig
from llm_hardneg.components.example_gen.pipeline import run_example_gen

__all__ = ["ExampleGenConfig", "run_example_gen"]
