import json
import os

import pytest

from tfx_pipeline import local_runner
from tfx_pipeline.config import PipelineConfig, parse, section_from_json
from tfx_pipeline.pipeline import STEP_NAMES


def test_flags_override_typed_sections(tmp_path):
    config = parse(["--data-dir", str(tmp_path), "--trainer.strategy", "oob", "--trainer.epochs", "5",
                    "--trainer.pool_logq", "true", "--evaluator.ks", "10,20", "--beam-arg=--runner=DirectRunner"])
    assert isinstance(config, PipelineConfig)
    assert (config.trainer.strategy, config.trainer.epochs, config.trainer.pool_logq) == ("oob", 5, True)
    assert config.evaluator.ks == (10, 20)
    assert config.example_gen.items == os.path.join(str(tmp_path), "movies.dat")
    assert section_from_json("evaluator", config.section_json("evaluator")) == config.evaluator


def test_bad_flag_value_names_flag(tmp_path):
    with pytest.raises(SystemExit, match="trainer.pool_logq"):
        parse(["--data-dir", str(tmp_path), "--trainer.pool_logq", "maybe"])
    with pytest.raises(ValueError, match="strategy must be one of"):
        parse(["--data-dir", str(tmp_path), "--trainer.strategy", "nope"])


def test_compiles_to_pipeline_ir(tmp_path, movielens_dir):
    import yaml
    from kfp import compiler

    from tfx_pipeline.pipeline import create_pipeline

    config = parse(["--data-dir", movielens_dir, "--image", "registry.example/llm-hardneg:1"])
    path = str(tmp_path / "pipeline.yaml")
    compiler.Compiler().compile(create_pipeline(config), path)
    spec = yaml.safe_load(open(path))
    tasks = spec["root"]["dag"]["tasks"]
    assert sorted(tasks) == sorted(n.replace("-", "-") for n in STEP_NAMES)
    assert tasks["trainer"]["inputs"]["artifacts"]["clusters"]["taskOutputArtifact"]["producerTask"] == "item-clusterer"
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example/llm-hardneg:1"}


def test_local_run_end_to_end(tmp_path, movielens_dir, tiny_bert, capsys):
    code = local_runner.main([
        "--data-dir", movielens_dir, "--pipeline-root", str(tmp_path / "runs"),
        "--item_embedder.model", tiny_bert, "--item_clusterer.num_clusters", "3",
        "--trainer.epochs", "1", "--trainer.batch_size", "64", "--trainer.embedding_dim", "8",
        "--trainer.num_negatives", "4", "--trainer.random_ratio", "1", "--trainer.cluster_ratio", "3",
        "--evaluator.ks", "5,10", "--exporter.k", "5",
    ])
    assert code == 0
    out = capsys.readouterr().out
    assert "HitRate@5" in out and "HitRate@10" in out
    (run,) = os.listdir(tmp_path / "runs")
    metrics = json.load(open(tmp_path / "runs" / run / "evaluator" / "metrics" / "metrics.json"))
    assert 0 <= metrics["hit_rate@5"] <= metrics["hit_rate@10"] <= 1
    for step, output in local_runner.OUTPUTS.items():
        assert os.path.exists(tmp_path / "runs" / run / step / output / "step.json"), step
    assert os.path.isdir(tmp_path / "runs" / run / "exporter" / "export" / "serving_model")
