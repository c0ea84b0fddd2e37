"""The pipeline definition, written once (KFP v2 SDK) and run by every runner.

    example_gen -> item_embedder -> item_clusterer -> trainer -> evaluator
                                                            \\-> exporter
"""

from __future__ import annotations

from kfp import dsl

from tfx_pipeline.config import PipelineConfig
from tfx_pipeline.steps import components_for

STEP_NAMES = ("example-gen", "item-embedder", "item-clusterer", "trainer", "evaluator", "exporter")


def create_pipeline(config: PipelineConfig):
    """Returns the KFP pipeline function for `config` (steps' configs are baked in as parameters)."""
    c = components_for(config.image)
    beam_args = list(config.beam_args)

    @dsl.pipeline(name=config.pipeline_name, pipeline_root=config.pipeline_root,
                  description="Two-tower retrieval with LLM-cluster out-of-batch hard negatives")
    def llm_hardneg_pipeline():
        examples = c["example_gen"](config_json=config.section_json("example_gen"), beam_args=beam_args)
        examples.set_display_name("example-gen")
        embeddings = c["item_embedder"](config_json=config.section_json("item_embedder"), beam_args=beam_args,
                                        examples=examples.outputs["examples"])
        embeddings.set_display_name("item-embedder")
        clusters = c["item_clusterer"](config_json=config.section_json("item_clusterer"), beam_args=beam_args,
                                       examples=examples.outputs["examples"],
                                       embeddings=embeddings.outputs["embeddings"])
        clusters.set_display_name("item-clusterer")
        model = c["trainer"](config_json=config.section_json("trainer"), examples=examples.outputs["examples"],
                             clusters=clusters.outputs["clusters"])
        model.set_display_name("trainer")
        evaluation = c["evaluator"](config_json=config.section_json("evaluator"),
                                    history_length=config.trainer.history_length,
                                    examples=examples.outputs["examples"], model=model.outputs["model"])
        evaluation.set_display_name("evaluator")
        export = c["exporter"](config_json=config.section_json("exporter"), examples=examples.outputs["examples"],
                               model=model.outputs["model"])
        export.set_display_name("exporter")

    return llm_hardneg_pipeline
