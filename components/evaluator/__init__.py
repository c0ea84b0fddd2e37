"""evaluator: HitRate@K over the full item corpus and popularity-bias figures."""

from llm_hardneg.components.evaluator.core import EvaluatorConfig, evaluate, popularity_figures
from llm_hardneg.components.evaluator.run import run_evaluator

__all__ = ["EvaluatorConfig", "evaluate", "popularity_figures", "run_evaluator"]
