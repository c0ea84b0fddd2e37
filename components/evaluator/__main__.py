"""Runs evaluator alone: python -m llm_hardneg.components.evaluator --help"""

import sys

from llm_hardneg.components.common.cli import step_main
from llm_hardneg.components.evaluator import EvaluatorConfig, run_evaluator

if __name__ == "__main__":
    paths = ["model_dir", "examples_dir", "output_dir"]
    sys.exit(step_main(EvaluatorConfig, paths, run_evaluator, __doc__, beam=False))
