"""Runs item_clusterer alone: python -m components.item_clusterer --help"""

import sys

from components.common.cli import step_main
from components.item_clusterer import ItemClustererConfig, run_item_clusterer

if __name__ == "__main__":
    paths = ["embeddings_dir", "items_path", "output_dir"]
    sys.exit(step_main(ItemClustererConfig, paths, run_item_clusterer, __doc__, beam=True))
