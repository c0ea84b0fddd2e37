"""The pipeline definition, written once (KFP v2 SDK) and run by every runner.

    example_gen -> item_embedder -> item_clusterer -> trainer -> evaluator
                                                            \\-> exporter

With `--trainer.cluster_source behavioural` the clusters come from a first model instead
(clusters refreshed from the previous model, ESANS's behavioural view): item_clusterer ->
trainer (in_batch, category clusters) -> exporter -> item_clusterer (embedding_kind 'behavioural',
the same step on the exported item embeddings) -> trainer -> evaluator, exporter.

With `base_model` (continuous training: one time window of example_gen, warm-started from the
previous window's model) a `dsl.importer` brings that trainer output in as an input artifact of the
trainer, so a Vertex AI / Kubeflow schedule can run the same definition every day on the newest
window with yesterday's model.
"""

from __future__ import annotations

import dataclasses

from kfp import dsl

from llm_hardneg.tfx_pipeline.config import PipelineConfig, TrainerJobConfig, config_json
from llm_hardneg.tfx_pipeline.steps import components_for

STEP_NAMES = ("example-gen", "item-embedder", "item-clusterer", "trainer", "evaluator", "exporter")


def vertex_trainer(trainer, job: TrainerJobConfig):
    """The trainer component as a Vertex AI custom job of job.replicas machines (a chief pool and a
    worker pool, the same image and command; Vertex sets TF_CONFIG on each)."""
    try:
        from google_cloud_pipeline_components.v1.custom_job import create_custom_training_job_from_component
    except ImportError:
        raise ValueError("--trainer_job.* runs the trainer as a Vertex AI custom job, which needs the vertex extra: "
                         "pip install -e '.[vertex]'") from None
    return create_custom_training_job_from_component(
        trainer, display_name="llm-hardneg-trainer", replica_count=job.replicas,
        machine_type=job.machine_type or "n1-standard-16", accelerator_type=job.accelerator_type,
        accelerator_count=job.accelerator_count, strategy="SPOT" if job.spot else "STANDARD",
        restart_job_on_worker_restart=job.replicas > 1)  # the workers' collectives cannot lose a member


def create_pipeline(config: PipelineConfig):
    """Returns the KFP pipeline function for `config` (steps' configs are baked in as parameters)."""
    c = components_for(config.image)
    if config.trainer_job.custom_job:
        c["trainer"] = vertex_trainer(c["trainer"], config.trainer_job)
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
        warm = {}
        if config.base_model:
            base = dsl.importer(artifact_uri=config.base_model, artifact_class=dsl.Model, reimport=False)
            base.set_display_name("base-model")
            warm["base_model"] = base.output
        model = step("trainer", examples=examples, clusters=clusters, **warm).outputs["model"]
        step("evaluator", history_length=config.trainer.history_length, examples=examples, model=model)
        step("exporter", examples=examples, model=model)

    return llm_hardneg_pipeline
