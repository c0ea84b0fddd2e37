"""Compiles the pipeline to KFP v2 pipeline IR (YAML) for Kubeflow Pipelines and Vertex AI Pipelines.

    python -m llm_hardneg.tfx_pipeline.kubeflow_runner --output pipeline.yaml \\
        --image REGISTRY/llm-hardneg:TAG --pipeline-root gs://BUCKET/runs \\
        --data-dir gs://BUCKET/ml-1m \\
        --beam-arg=--runner=DataflowRunner --beam-arg=--project=PROJECT \\
        --beam-arg=--region=REGION --beam-arg=--temp_location=gs://BUCKET/tmp

Same definition as the local runner; only roots, image and Beam options differ. Submit the
YAML with deploy/submit_vertex.py (Vertex) or the Kubeflow Pipelines UI/client.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import llm_hardneg.components.common.env  # noqa: F401
from llm_hardneg.tfx_pipeline.config import add_flags, from_flags
from llm_hardneg.tfx_pipeline.pipeline import create_pipeline


def main(argv: Sequence[str] | None = None) -> int:
    from kfp import compiler

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="pipeline.yaml", help="where to write the pipeline IR")
    add_flags(parser)
    args = parser.parse_args(argv)
    config = from_flags(args, resolve_paths=False)
    compiler.Compiler().compile(create_pipeline(config), args.output)
    print(f"[kubeflow_runner] pipeline '{config.pipeline_name}' with image {config.image} written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
