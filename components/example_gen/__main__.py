"""Runs example_gen alone: python -m llm_hardneg.components.example_gen --help"""

import sys

from llm_hardneg.components.common.cli import step_main
from llm_hardneg.components.example_gen import ExampleGenConfig, run_example_gen

if __name__ == "__main__":
    paths = ["output_dir"]
    sys.exit(step_main(ExampleGenConfig, paths, run_example_gen, __doc__, beam=True))
