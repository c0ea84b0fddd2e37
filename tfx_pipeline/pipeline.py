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
    beam = {"beam_args": list(config.beam_args)}

    def step(name: str, **inputs):
        task = c[name](config_json=config.section_json(name), cache_root=config.cache_root, **inputs)
        task.set_display_name(name.replace("_", "-"))
        return task

    @dsl.pipeline(name=config.pipeline_name, pipeline_root=config.pipeline_root,
                  description="Two-tower retrieval with LLM-cluster out-of-batch hard negatives")
    def llm_hardneg_pipeline():
        examples = step("example_gen", **beam).outputs["examples"]
        embeddings = step("item_embedder", examples=examples, **beam).outputs["embeddings"]
        clusters = step("item_clusterer", examples=examples, embeddings=embeddings, **beam).outputs["clusters"]
        model = step("trainer", examples=examples, clusters=clusters).outputs["model"]
        step("evaluator", history_length=config.trainer.history_length, examples=examples, model=model)
        step("exporter", examples=examples, model=model)

    return llm_hardneg_pipeline
