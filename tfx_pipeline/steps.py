"""The pipeline's steps as KFP lightweight components.

Each component only decodes its JSON config and calls the step's library function inside
`step_run` (timing; reuse of an identical earlier output when `cache_root` is set). KFP
serialises these function bodies, so each imports what it uses. The step logic never
imports KFP.
"""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output


def example_gen(config_json: str, cache_root: str, beam_args: list, examples: Output[Dataset]):
    import llm_hardneg.components.common.env  # noqa: F401
    from llm_hardneg.components.common.fileio import for_beam
    from llm_hardneg.components.common.step import step_run
    from llm_hardneg.components.example_gen import run_example_gen
    from llm_hardneg.tfx_pipeline.config import section_from_json

    with step_run("example_gen", examples.path, config_json, [], cache_root) as run:
        if run.needed:
            run_example_gen(section_from_json("example_gen", config_json), for_beam(examples.path, examples.uri),
                            beam_args)


def item_embedder(config_json: str, cache_root: str, beam_args: list, examples: Input[Dataset],
                  embeddings: Output[Dataset]):
    import llm_hardneg.components.common.env  # noqa: F401
    from llm_hardneg.components.common.fileio import for_beam, join
    from llm_hardneg.components.common.step import step_run
    from llm_hardneg.components.item_embedder import run_item_embedder
    from llm_hardneg.tfx_pipeline.config import section_from_json

    items = join(for_beam(examples.path, examples.uri), "items", "*.parquet")
    with step_run("item_embedder", embeddings.path, config_json, [examples.path], cache_root) as run:
        if run.needed:
            run_item_embedder(section_from_json("item_embedder", config_json), items,
                              for_beam(embeddings.path, embeddings.uri), beam_args)


def item_clusterer(config_json: str, cache_root: str, beam_args: list, examples: Input[Dataset],
                   embeddings: Input[Artifact], clusters: Output[Dataset]):
    # embeddings: item_embedder's (a Dataset) or, for behavioural clusters, an exporter's candidates (a Model)
    import llm_hardneg.components.common.env  # noqa: F401
    from llm_hardneg.components.common.fileio import for_beam, join
    from llm_hardneg.components.common.step import step_run
    from llm_hardneg.components.item_clusterer import run_item_clusterer
    from llm_hardneg.tfx_pipeline.config import section_from_json

    items = join(for_beam(examples.path, examples.uri), "items", "*.parquet")
    inputs = [examples.path, embeddings.path]
    with step_run("item_clusterer", clusters.path, config_json, inputs, cache_root) as run:
        if run.needed:
            run_item_clusterer(section_from_json("item_clusterer", config_json),
                               for_beam(embeddings.path, embeddings.uri), items, for_beam(clusters.path, clusters.uri),
                               beam_args)


def trainer(config_json: str, cache_root: str, examples: Input[Dataset], clusters: Input[Dataset],
            model: Output[Model], base_model: Input[Model] = None):
    # base_model: a previous trainer output to warm-start from (continuous training; dsl.importer gives it)
    import dataclasses

    import llm_hardneg.components.common.env  # noqa: F401
    from llm_hardneg.components.common.step import step_run
    from llm_hardneg.components.trainer import run_trainer
    from llm_hardneg.tfx_pipeline.config import section_from_json

    config = section_from_json("trainer", config_json)
    inputs = [examples.path, clusters.path]
    if base_model is not None:
        config = dataclasses.replace(config, warm_start_from=base_model.path)
        inputs.append(base_model.path)  # the fingerprint follows the base model's
    with step_run("trainer", model.path, config_json, inputs, cache_root) as run:
        if run.needed:
            run_trainer(config, examples.path, clusters.path, model.path)


def evaluator(config_json: str, cache_root: str, history_length: int, examples: Input[Dataset],
              model: Input[Model], metrics: Output[Metrics]):
    import json
    import os

    import llm_hardneg.components.common.env  # noqa: F401
    from llm_hardneg.components.common.step import step_run
    from llm_hardneg.components.evaluator import run_evaluator
    from llm_hardneg.tfx_pipeline.config import section_from_json

    key = f"{config_json}|history_length={history_length}"
    with step_run("evaluator", metrics.path, key, [examples.path, model.path], cache_root) as run:
        if run.needed:
            run_evaluator(section_from_json("evaluator", config_json), model.path, examples.path, metrics.path,
                          history_length)
    with open(os.path.join(metrics.path, "metrics.json"), encoding="utf-8") as f:
        for name, value in json.load(f).items():
            if isinstance(value, (int, float)):
                metrics.log_metric(name, value)


def exporter(config_json: str, cache_root: str, examples: Input[Dataset], model: Input[Model],
             export: Output[Model]):
    import os

    import llm_hardneg.components.common.env  # noqa: F401
    from llm_hardneg.components.common.step import step_run
    from llm_hardneg.components.exporter import run_exporter
    from llm_hardneg.tfx_pipeline.config import section_from_json

    with step_run("exporter", export.path, config_json, [examples.path, model.path], cache_root) as run:
        if run.needed:
            run_exporter(section_from_json("exporter", config_json), model.path,
                         os.path.join(examples.path, "items"), export.path)


STEPS = (example_gen, item_embedder, item_clusterer, trainer, evaluator, exporter)


def components_for(image: str) -> dict:
    """The steps as KFP components running in `image` (which must have this package installed)."""
    return {f.__name__: dsl.component(f, base_image=image, install_kfp_package=False) for f in STEPS}
