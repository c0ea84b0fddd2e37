"""The pipeline's steps as KFP lightweight components.

Each component only decodes its JSON config and calls the step's library function; KFP
serialises these function bodies, so each imports what it uses. The step logic never
imports KFP.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output


def example_gen(config_json: str, beam_args: list, examples: Output[Dataset]):
    import components.common.env  # noqa: F401
    from components.common.step import timed_step
    from components.example_gen import run_example_gen
    from tfx_pipeline.config import section_from_json

    with timed_step("example_gen", examples.path):
        run_example_gen(section_from_json("example_gen", config_json), examples.path, beam_args)


def item_embedder(config_json: str, beam_args: list, examples: Input[Dataset], embeddings: Output[Dataset]):
    import os

    import components.common.env  # noqa: F401
    from components.common.step import timed_step
    from components.item_embedder import run_item_embedder
    from tfx_pipeline.config import section_from_json

    with timed_step("item_embedder", embeddings.path):
        run_item_embedder(section_from_json("item_embedder", config_json),
                      os.path.join(examples.path, "items", "*.parquet"), embeddings.path, beam_args)


def item_clusterer(config_json: str, beam_args: list, examples: Input[Dataset], embeddings: Input[Dataset],
                   clusters: Output[Dataset]):
    import os

    import components.common.env  # noqa: F401
    from components.common.step import timed_step
    from components.item_clusterer import run_item_clusterer
    from tfx_pipeline.config import section_from_json

    with timed_step("item_clusterer", clusters.path):
        run_item_clusterer(section_from_json("item_clusterer", config_json), embeddings.path,
                       os.path.join(examples.path, "items", "*.parquet"), clusters.path, beam_args)


def trainer(config_json: str, examples: Input[Dataset], clusters: Input[Dataset], model: Output[Model]):
    import components.common.env  # noqa: F401
    from components.common.step import timed_step
    from components.trainer import run_trainer
    from tfx_pipeline.config import section_from_json

    with timed_step("trainer", model.path):
        run_trainer(section_from_json("trainer", config_json), examples.path, clusters.path, model.path)


def evaluator(config_json: str, history_length: int, examples: Input[Dataset], model: Input[Model],
              metrics: Output[Metrics]):
    import components.common.env  # noqa: F401
    from components.common.step import timed_step
    from components.evaluator import run_evaluator
    from tfx_pipeline.config import section_from_json

    with timed_step("evaluator", metrics.path):
        result = run_evaluator(section_from_json("evaluator", config_json), model.path, examples.path,
                               metrics.path, history_length)
    for key, value in result.items():
        if isinstance(value, (int, float)):
            metrics.log_metric(key, value)


def exporter(config_json: str, examples: Input[Dataset], model: Input[Model], export: Output[Model]):
    import os

    import components.common.env  # noqa: F401
    from components.common.step import timed_step
    from components.exporter import run_exporter
    from tfx_pipeline.config import section_from_json

    with timed_step("exporter", export.path):
        run_exporter(section_from_json("exporter", config_json), model.path, os.path.join(examples.path, "items"),
                 export.path)


STEPS = (example_gen, item_embedder, item_clusterer, trainer, evaluator, exporter)


def components_for(image: str) -> dict:
    """The steps as KFP components running in `image` (which must have this package installed)."""
    return {f.__name__: dsl.component(f, base_image=image, install_kfp_package=False) for f in STEPS}
