"""Runs evaluator alone: python -m components.evaluator --help"""

import sys

from components.common.cli import step_main
from components.evaluator import EvaluatorConfig, run_evaluator

if __name__ == "__main__":
    paths = ["model_dir", "examples_dir", "output_dir"]
    sys.exit(step_main(EvaluatorConfig, paths, run_evaluator, __doc__, beam=False))
