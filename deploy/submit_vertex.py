"""Submits a compiled pipeline (llm_hardneg.tfx_pipeline.kubeflow_runner output) to Vertex AI Pipelines.

    pip install -e ".[vertex]"
    python deploy/submit_vertex.py --pipeline pipeline.yaml --project PROJECT --region REGION \\
        --pipeline-root gs://BUCKET/runs [--service-account SA] [--no-wait]
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="compiled pipeline YAML")
    parser.add_argument("--project", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--pipeline-root", required=True, help="gs:// folder for the run's artifacts")
    parser.add_argument("--display-name", default="llm-hardneg")
    parser.add_argument("--service-account", default=None)
    parser.add_argument("--no-wait", action="store_true")
    args = parser.parse_args(argv)
    try:
        from google.cloud import aiplatform
    except ImportError:
        print("Vertex submission needs the optional extra: pip install -e '.[vertex]'", file=sys.stderr)
        return 2
    aiplatform.init(project=args.project, location=args.region)
    job = aiplatform.PipelineJob(display_name=args.display_name, template_path=args.pipeline,
                                 pipeline_root=args.pipeline_root, enable_caching=True)
    job.submit(service_account=args.service_account)
    print(f"submitted {job.resource_name}")
    if not args.no_wait:
        job.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
