"""trainer: two-tower model with in-batch, random and cluster out-of-batch negatives."""

from components.trainer.config import TrainerConfig
from components.trainer.pool import ClusterPool
from components.trainer.run import run_trainer

__all__ = ["ClusterPool", "TrainerConfig", "run_trainer"]
