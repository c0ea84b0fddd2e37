"""Runs item_embedder alone: python -m llm_hardneg.components.item_embedder --help"""

import sys

from llm_hardneg.components.common.cli import step_main
from llm_hardneg.components.item_embedder import ItemEmbedderConfig, run_item_embedder

if __name__ == "__main__":
    paths = ["items_path", "output_dir"]
    sys.exit(step_main(ItemEmbedderConfig, paths, run_item_embedder, __doc__, beam=True))
