"""trainer: two-tower model with in-batch, random and cluster out-of-batch negatives.

The names below are the public API for use in one's own Keras/TFRS model (docs/examples/tfrs_cluster_negatives.py):
the pool and embedding cache layers, the mixed-negatives loss and its logQ correction, the trainer's config.
"""

from llm_hardneg.components.trainer.config import TrainerConfig
from llm_hardneg.components.trainer.losses import expected_counts, full_softmax_loss, log_count, mixed_negatives_loss
from llm_hardneg.components.trainer.pool import ClusterPool, EmbeddingCache, allocate_draws
from llm_hardneg.components.trainer.run import run_trainer

__all__ = ["ClusterPool", "EmbeddingCache", "TrainerConfig", "allocate_draws", "expected_counts", "full_softmax_loss",
           "log_count", "mixed_negatives_loss", "run_trainer"]
