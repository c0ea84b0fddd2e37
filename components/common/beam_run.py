"""Running a Beam pipeline with explicit options and reading its counters back."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

log = logging.getLogger(__name__)


def pipeline_options(beam_args: Sequence[str] | None) -> PipelineOptions:
    """Beam options; the DirectRunner unless the arguments name a runner.

    The runner is always explicit: the default (Prism) fetches a binary at run time.
    """
    args = list(beam_args or [])
    if not any(a.startswith("--runner") for a in args):
        args.append("--runner=DirectRunner")
    return PipelineOptions(args)


def run_pipeline(build: Callable[[beam.Pipeline], None], namespace: str,
                 beam_args: Sequence[str] | None = None) -> dict[str, int]:
    """Builds and runs a pipeline; returns its counters of `namespace` by name."""
    pipeline = beam.Pipeline(options=pipeline_options(beam_args))
    build(pipeline)
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]
    totals: dict[str, int] = {}
    for counter in counters:
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(counter.committed or 0)
    return totals
