"""Runs trainer alone: python -m llm_hardneg.components.trainer --help"""

import sys

from llm_hardneg.components.common.cli import step_main
from llm_hardneg.components.trainer import TrainerConfig, run_trainer

if __name__ == "__main__":
    paths = ["examples_dir", "clusters_dir", "output_dir"]
    sys.exit(step_main(TrainerConfig, paths, run_trainer, __doc__, beam=False))
