"""Runs exporter alone: python -m llm_hardneg.components.exporter --help"""

import sys

from llm_hardneg.components.common.cli import step_main
from llm_hardneg.components.exporter import ExporterConfig, run_exporter

if __name__ == "__main__":
    paths = ["model_dir", "items_path", "output_dir"]
    sys.exit(step_main(ExporterConfig, paths, run_exporter, __doc__, beam=False))
