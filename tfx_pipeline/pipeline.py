"""The pipeline definition, written once (KFP v2 SDK) and run by every runner.

    example_gen -> item_embedder -> item_clusterer -> trainer -> evaluator
                                                            \\-> exporter

With `--trainer.cluster_source behavioural` the clusters come from a first model instead
(clusters refreshed from the previous model, ESANS's behavioural view): item_clusterer ->
trainer (in_batch, category clusters) -> exporter -> item_clusterer (embedding_kind 'behavioural',
the same step on the exported item embeddings) -> trainer -> evaluator, exporter.
"""

from __future__ import annotations

import dataclasses

from kfp import dsl

from tfx_pipeline.config import PipelineConfig, config_json
from tfx_pipeline.steps import components_for

STEP_NAMES = ("example-gen", "item-embedder", "item-clusterer", "trainer", "evaluator", "exporter")


def create_pipeline(config: PipelineConfig):
    """Returns the KFP pipeline function for `config` (steps' configs are baked in as parameters)."""
    c = components_for(config.image)
    beam = {"beam_args": list(config.beam_args)}

    def step(name: str, section=None, display: str = "", **inputs):
        task = c[name](config_json=config_json(section or getattr(config, name)), cache_root=config.cache_root,
                       **inputs)
        task.set_display_name(display or name.replace("_", "-"))
        return task

    @dsl.pipeline(name=config.pipeline_name, pipeline_root=config.pipeline_root,
                  description="Two-tower retrieval with LLM-cluster out-of-batch hard negatives")
    def llm_hardneg_pipeline():
        examples = step("example_gen", **beam).outputs["examples"]
        embeddings = step("item_embedder", examples=examples, **beam).outputs["embeddings"]
        clusters = step("item_clusterer", examples=examples, embeddings=embeddings, **beam).outputs["clusters"]
        if config.trainer.cluster_source == "behavioural":
            first = dataclasses.replace(config.trainer, strategy="in_batch", cluster_source="category")
            first_model = step("trainer", first, "trainer-first-model", examples=examples,
                               clusters=clusters).outputs["model"]
            first_export = step("exporter", display="exporter-first-model", examples=examples,
                                model=first_model).outputs["export"]
            behavioural = dataclasses.replace(config.item_clusterer, embedding_kind="behavioural")
            clusters = step("item_clusterer", behavioural, "item-clusterer-behavioural", examples=examples,
                            embeddings=first_export, **beam).outputs["clusters"]
        model = step("trainer", examples=examples, clusters=clusters).outputs["model"]
        step("evaluator", history_length=config.trainer.history_length, examples=examples, model=model)
        step("exporter", examples=examples, model=model)

    return llm_hardneg_pipeline
