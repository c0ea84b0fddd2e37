"""example_gen: raw interactions + item catalogue -> time-split tf.Example shards + item table."""

from components.example_gen.config import ExampleGenConfig
from components.example_gen.pipeline import run_example_gen

__all__ = ["ExampleGenConfig", "run_example_gen"]
