"""Runs item_clusterer alone: python -m llm_hardneg.components.item_clusterer --help"""

import sys

from llm_hardneg.components.common.cli import step_main
from llm_hardneg.components.item_clusterer import ItemClustererConfig, run_item_clusterer

if __name__ == "__main__":
    paths = ["embeddings_dir", "items_path", "output_dir"]
    sys.exit(step_main(ItemClustererConfig, paths, run_item_clusterer, __doc__, beam=True))
