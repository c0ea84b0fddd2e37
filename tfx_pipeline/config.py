"""The pipeline configuration: one frozen dataclass per step, overridable from the command line.

Flags are `--<section>.<field> VALUE`, e.g. `--trainer.strategy oob --trainer.epochs 5`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Sequence

from llm_hardneg.components.common.cli import add_config_flags, config_from_json, config_overrides
from llm_hardneg.components.evaluator.core import EvaluatorConfig
from llm_hardneg.components.example_gen.config import ExampleGenConfig
from llm_hardneg.components.exporter.core import ExporterConfig
from llm_hardneg.components.item_clusterer.config import ItemClustererConfig
from llm_hardneg.components.item_embedder.config import ItemEmbedderConfig
from llm_hardneg.components.trainer.config import TrainerConfig

SECTIONS = {
    "example_gen": ExampleGenConfig,
    "item_embedder": ItemEmbedderConfig,
    "item_clusterer": ItemClustererConfig,
    "trainer": TrainerConfig,
    "evaluator": EvaluatorConfig,
    "exporter": ExporterConfig,
}
DEFAULT_ML1M_DIR = os.path.join("..", "shared", "data", "ml-1m")


@dataclasses.dataclass(frozen=True)
class TrainerJobConfig:
    """Where the trainer step runs on Vertex AI (flags --trainer_job.<field>). With replicas > 1 or
    a machine_type, each trainer step is a Vertex AI custom job (google-cloud-pipeline-components'
    create_custom_training_job_from_component: a chief pool of 1 and a worker pool of replicas - 1,
    the same image and entry point); Vertex sets TF_CONFIG on every replica, and the trainer needs
    `--trainer.distribute multi_worker` to use them. spot: preemptible VMs; the job restarts when a
    worker does, and the trainer resumes from its last checkpoint (--trainer.checkpoint_every_steps).
    On Kubeflow without Vertex, deploy/tfjob-trainer.yaml runs the same entry point as a TFJob.

    replicas: trainer processes (a chief and replicas - 1 workers).
    machine_type, accelerator_type, accelerator_count: each replica's Vertex AI machine ('' = a pipeline step).
    spot: run the replicas on preemptible (spot) VMs.
    """

    replicas: int = 1
    machine_type: str = ""
    accelerator_type: str = ""
    accelerator_count: int = 0
    spot: bool = False

    def __post_init__(self):
        if self.replicas < 1:
            raise ValueError(f"trainer_job.replicas must be >= 1, got {self.replicas}")
        if self.accelerator_count < 0 or bool(self.accelerator_type) != (self.accelerator_count > 0):
            raise ValueError("trainer_job.accelerator_type and trainer_job.accelerator_count go together, got "
                             f"{self.accelerator_type!r} and {self.accelerator_count}")

    @property
    def custom_job(self) -> bool:
        """Whether the trainer runs as a Vertex AI custom job rather than a plain pipeline step."""
        return self.replicas > 1 or bool(self.machine_type)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything a run needs. `pipeline_root` holds every step's artifacts; `image` is the
    container image of every step on Kubeflow/Vertex; `beam_args` go to the Beam steps
    (e.g. ['--runner=DataflowRunner', '--project=...', '--region=...', '--temp_location=gs://...']).
    `cache_root`: where steps keep outputs for reuse by identical later runs ('' = off; the
    local runner uses <pipeline_root>/cache, Kubeflow/Vertex use their own caching).
    `base_model`: URI of a previous trainer output; the trainer warm-starts from it (imported as an input
    artifact; trainer `warm_start_from` semantics). `window_bounds`: local continuous training: timestamps
    T0 < T1 < ... < Tn; the local runner runs n pipelines, window t training on [T(t-1), Tt) (window 0 on
    everything before T0) warm-started from window t - 1's model, and evaluating on [Tt, T(t+1)).
    `window_epochs`: the epochs of each warm-started window (window 0 trains `trainer.epochs`); on ML-1M one
    epoch beat three and six on every window (benchmarks.windows), which over-fit the window."""

    example_gen: ExampleGenConfig
    item_embedder: ItemEmbedderConfig = ItemEmbedderConfig()
    item_clusterer: ItemClustererConfig = ItemClustererConfig()
    trainer: TrainerConfig = TrainerConfig()
    evaluator: EvaluatorConfig = EvaluatorConfig()
    exporter: ExporterConfig = ExporterConfig()
    pipeline_name: str = "llm-hardneg"
    pipeline_root: str = "runs"
    image: str = "python:3.11"
    beam_args: tuple[str, ...] = ("--runner=DirectRunner",)
    cache_root: str = ""
    trainer_job: TrainerJobConfig = TrainerJobConfig()
    base_model: str = ""
    window_bounds: tuple[int, ...] = ()
    window_epochs: int = 1

    def __post_init__(self):
        eg, trainer = self.example_gen, self.trainer
        if self.base_model and trainer.warm_start_from:
            raise ValueError(f"--base-model {self.base_model!r} and --trainer.warm_start_from "
                             f"{trainer.warm_start_from!r} both name a base model: give one")
        if self.window_epochs < 1:
            raise ValueError(f"--window-epochs must be >= 1, got {self.window_epochs}")
        if self.window_bounds:
            bounds = list(self.window_bounds)
            if len(bounds) < 2 or bounds != sorted(set(bounds)):
                raise ValueError(f"--window-bounds needs two or more increasing timestamps, got {bounds}")
            if eg.split != "time":
                raise ValueError(f"--window-bounds cuts time windows: it needs --example_gen.split time, got "
                                 f"{eg.split!r}")
        if trainer.history_length > eg.history_length:
            raise ValueError(f"trainer.history_length {trainer.history_length} reads more history than the examples "
                             f"hold (example_gen.history_length {eg.history_length}): set --example_gen.history_length "
                             f"{trainer.history_length}")
        if trainer.sequence_training and not 0 < eg.sequence_length <= trainer.history_length:
            raise ValueError(f"trainer.sequence_training needs sequence records of at most trainer.history_length "
                             f"{trainer.history_length} items of history: set --example_gen.sequence_length "
                             f"{trainer.history_length} (got {eg.sequence_length})")
        if self.trainer_job.replicas > 1 and self.trainer.distribute != "multi_worker":
            raise ValueError(f"trainer_job.replicas {self.trainer_job.replicas} trains on several machines: set "
                             f"--trainer.distribute multi_worker (got {self.trainer.distribute!r})")

    def section_json(self, section: str) -> str:
        return config_json(getattr(self, section))


def config_json(section_config) -> str:
    """A step config as the JSON its step component receives."""
    return json.dumps(dataclasses.asdict(section_config))


def section_from_json(section: str, payload: str):
    """Rebuilds a step config from its JSON."""
    return config_from_json(SECTIONS[section], payload)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Adds --<section>.<field> for every config field, and the top-level options."""
    for section, cls in SECTIONS.items():
        add_config_flags(parser, cls, prefix=f"{section}.")
    add_config_flags(parser, TrainerJobConfig, prefix="trainer_job.")
    parser.add_argument("--data-dir", default=os.environ.get("ML1M_DIR", DEFAULT_ML1M_DIR),
                        help="MovieLens-1M directory (env ML1M_DIR; default ../shared/data/ml-1m)")
    parser.add_argument("--pipeline-root", default="runs")
    parser.add_argument("--image", default="python:3.11")
    parser.add_argument("--no-cache", action="store_true", help="local runs: rerun every step")
    parser.add_argument("--base-model", default="", help="a previous trainer output (model artifact URI) to "
                        "warm-start the trainer from, imported as an input artifact")
    parser.add_argument("--window-bounds", default="", help="local continuous training: comma-separated "
                        "timestamps T0,...,Tn; runs one pipeline per window, each warm-started from the last "
                        "(example_gen.core.window_bounds computes them from a share and a count)")
    parser.add_argument("--window-epochs", type=int, default=1, help="epochs of each warm-started window "
                        "(window 0 trains --trainer.epochs)")
    parser.add_argument("--beam-arg", action="append", default=None,
                        help="a Beam option for the data steps, as --beam-arg=--runner=DataflowRunner; repeatable")


def _resolve(path: str, resolve_paths: bool) -> str:
    """Local paths become absolute (steps run elsewhere); remote URIs (gs://...) stay as they are."""
    return os.path.abspath(path) if resolve_paths and "://" not in path else path


def from_flags(args: argparse.Namespace, resolve_paths: bool = True) -> PipelineConfig:
    """Builds the PipelineConfig: MovieLens under --data-dir unless example_gen flags say otherwise.

    resolve_paths: make local paths absolute (local runs); off when compiling for a cluster.
    """
    overrides = {section: config_overrides(args, cls, f"{section}.") for section, cls in SECTIONS.items()}
    eg = overrides["example_gen"]
    if eg.get("source", "movielens") == "movielens" and not eg.get("items"):
        example_gen = ExampleGenConfig.movielens(_resolve(args.data_dir, resolve_paths), **eg)
    else:
        example_gen = ExampleGenConfig(**eg)
    sections = {s: SECTIONS[s](**overrides[s]) for s in SECTIONS if s != "example_gen"}
    return PipelineConfig(example_gen=example_gen, pipeline_root=_resolve(args.pipeline_root, resolve_paths),
                          image=args.image, beam_args=tuple(args.beam_arg or ("--runner=DirectRunner",)),
                          cache_root="" if args.no_cache or not resolve_paths else
                          os.path.join(_resolve(args.pipeline_root, True), "cache"),
                          trainer_job=TrainerJobConfig(**config_overrides(args, TrainerJobConfig, "trainer_job.")),
                          base_model=_resolve(args.base_model, resolve_paths) if args.base_model else "",
                          window_bounds=_bounds(args.window_bounds), window_epochs=args.window_epochs, **sections)


def _bounds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",")) if text.strip() else ()
    except ValueError:
        raise ValueError(f"--window-bounds takes comma-separated integer timestamps, got {text!r}") from None


def windows(config: PipelineConfig) -> list[PipelineConfig]:
    """One pipeline config per window of `config.window_bounds` (the local runner sets each one's base_model
    to the previous window's trainer output)."""
    bounds = config.window_bounds
    out = []
    for t in range(len(bounds) - 1):
        eg = dataclasses.replace(config.example_gen, cut_timestamp=bounds[t], window_end=bounds[t + 1],
                                 window_start=bounds[t - 1] if t else 0)
        trainer = dataclasses.replace(config.trainer, epochs=config.window_epochs) if t else config.trainer
        out.append(dataclasses.replace(config, example_gen=eg, trainer=trainer, window_bounds=(), base_model=""))
    return out


def parse(argv: Sequence[str] | None = None, description: str = "") -> PipelineConfig:
    parser = argparse.ArgumentParser(description=description)
    add_flags(parser)
    return from_flags(parser.parse_args(argv))
