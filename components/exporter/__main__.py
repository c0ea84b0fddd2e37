"""Runs exporter alone: python -m components.exporter --help"""

import sys

from components.common.cli import step_main
from components.exporter import ExporterConfig, run_exporter

if __name__ == "__main__":
    paths = ["model_dir", "items_path", "output_dir"]
    sys.exit(step_main(ExporterConfig, paths, run_exporter, __doc__, beam=False))
