import json
import os

import pytest

from llm_hardneg.tfx_pipeline import local_runner
from llm_hardneg.tfx_pipeline.config import PipelineConfig, parse, section_from_json
from llm_hardneg.tfx_pipeline.pipeline import STEP_NAMES


def test_flags_override_typed_sections(tmp_path):
    config = parse(["--data-dir", str(tmp_path), "--trainer.strategy", "oob", "--trainer.epochs", "5",
                    "--trainer.mask_history_negatives", "true", "--evaluator.ks", "10,20",
                    "--beam-arg=--runner=DirectRunner"])
    assert isinstance(config, PipelineConfig)
    assert (config.trainer.strategy, config.trainer.epochs, config.trainer.mask_history_negatives) == ("oob", 5, True)
    assert config.evaluator.ks == (10, 20)
    assert config.example_gen.items == os.path.join(str(tmp_path), "movies.dat")
    assert section_from_json("evaluator", config.section_json("evaluator")) == config.evaluator


def test_every_flag_has_a_one_line_help_and_its_default():
    """--help groups the flags by step, each with the first sentence of its field's docstring entry."""
    import argparse
    import dataclasses

    from llm_hardneg.components.common.cli import field_docs
    from llm_hardneg.tfx_pipeline.config import SECTIONS, TrainerJobConfig, add_flags

    parser = argparse.ArgumentParser()
    add_flags(parser)
    groups = {g.title: {a.dest: a.help for a in g._group_actions} for g in parser._action_groups}
    for section, cls in [*SECTIONS.items(), ("trainer_job", TrainerJobConfig)]:
        docs = field_docs(cls)
        for field in dataclasses.fields(cls):
            assert field.name in docs, f"{cls.__name__}.{field.name} has no docstring entry"
            text = groups[section][f"{section}.{field.name}"]
            assert "\n" not in docs[field.name] and len(docs[field.name]) <= 110
            assert text == f"{docs[field.name]} (default: {field.default!r})".replace("%", "%%")
    assert groups["trainer"]["trainer.negative_sharing"].startswith("how the pool draws of a step are made")

    @dataclasses.dataclass(frozen=True)
    class Toy:
        """What a toy is.

        alpha: the first. Never read further.
        beta, gamma: two at once,
          on two lines.
        """

        alpha: int = 1
        beta: str = ""
        gamma: float = 0.5
        delta: bool = False

    assert field_docs(Toy) == {"alpha": "the first", "beta": "two at once, on two lines",
                               "gamma": "two at once, on two lines"}


def test_bad_flag_value_names_flag(tmp_path):
    with pytest.raises(SystemExit, match="trainer.mask_history_negatives"):
        parse(["--data-dir", str(tmp_path), "--trainer.mask_history_negatives", "maybe"])
    with pytest.raises(ValueError, match="logq_correction must be one of .* got 'sometimes'"):
        parse(["--data-dir", str(tmp_path), "--trainer.logq_correction", "sometimes"])
    with pytest.raises(ValueError, match="strategy must be one of"):
        parse(["--data-dir", str(tmp_path), "--trainer.strategy", "nope"])


def test_compiles_to_pipeline_ir(tmp_path, movielens_dir):
    import yaml


    path = str(tmp_path / "pipeline.yaml")
    from llm_hardneg.tfx_pipeline import kubeflow_runner

    assert kubeflow_runner.main(["--output", path, "--data-dir", "gs://bucket/ml-1m", "--pipeline-root", "gs://b/r",
                                 "--image", "registry.example/llm-hardneg:1", "--beam-arg=--runner=DataflowRunner",
                                 "--beam-arg=--project=p"]) == 0
    spec = yaml.safe_load(open(path))
    tasks = spec["root"]["dag"]["tasks"]
    assert sorted(tasks) == sorted(n.replace("-", "-") for n in STEP_NAMES)
    assert tasks["trainer"]["inputs"]["artifacts"]["clusters"]["taskOutputArtifact"]["producerTask"] == "item-clusterer"
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example/llm-hardneg:1"}
    params = tasks["example-gen"]["inputs"]["parameters"]
    assert params["beam_args"]["runtimeValue"]["constant"] == ["--runner=DataflowRunner", "--project=p"]
    assert params["cache_root"]["runtimeValue"]["constant"] == ""  # the cluster's own caching applies
    config = json.loads(params["config_json"]["runtimeValue"]["constant"])
    assert config["interactions"] == "gs://bucket/ml-1m/ratings.dat" and config["items"] == "gs://bucket/ml-1m/movies.dat"
    assert spec["defaultPipelineRoot"] == "gs://b/r"
    for name, task in tasks.items():  # the trainer's inputs come from example-gen and item-clusterer
        for artifact in task["inputs"].get("artifacts", {}).values():
            assert artifact["taskOutputArtifact"]["producerTask"] in tasks, name

    # a base model (continuous training) is an imported input artifact of the trainer
    assert kubeflow_runner.main(["--output", path, "--data-dir", "gs://bucket/ml-1m", "--pipeline-root", "gs://b/r",
                                 "--base-model", "gs://b/r/yesterday/trainer/model"]) == 0
    spec = yaml.safe_load(open(path))
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["trainer"]["inputs"]["artifacts"]["base_model"]["taskOutputArtifact"]["producerTask"] == "importer"
    importer = spec["deploymentSpec"]["executors"]["exec-importer"]["importer"]
    assert importer["artifactUri"]["constant"] == "gs://b/r/yesterday/trainer/model"
    with pytest.raises(ValueError, match="both name a base model"):
        parse(["--data-dir", str(tmp_path), "--base-model", "a", "--trainer.warm_start_from", "b"])
    with pytest.raises(ValueError, match="two or more increasing timestamps"):
        parse(["--data-dir", str(tmp_path), "--window-bounds", "5,3"])
    with pytest.raises(ValueError, match="--window-epochs must be >= 1, got 0"):
        parse(["--data-dir", str(tmp_path), "--window-epochs", "0"])


def test_local_run_end_to_end(tmp_path, movielens_dir, tiny_bert, capsys):
    args = [
        "--data-dir", movielens_dir, "--pipeline-root", str(tmp_path / "runs"),
        "--item_embedder.model", tiny_bert, "--item_clusterer.num_clusters", "3",
        "--trainer.epochs", "1", "--trainer.batch_size", "64", "--trainer.embedding_dim", "8",
        "--trainer.num_negatives", "4", "--trainer.random_ratio", "1", "--trainer.cluster_ratio", "3",
        "--evaluator.ks", "5,10", "--exporter.k", "5",
    ]
    assert local_runner.main(args) == 0
    out = capsys.readouterr().out
    assert "HitRate@5" in out and "HitRate@10" in out
    # a quiet console: the steps' own lines and the tables; the rest is in the run's log file
    assert len(out.splitlines()) <= 80, out
    for noise in ("op_level_cost_estimator", "cuInit", "apitools", "executor_input", "Traceback"):
        assert noise not in out, noise
    for step in ("example_gen", "item_embedder", "item_clusterer", "trainer", "evaluator", "exporter"):
        assert f"[{step}] " in out, step
    log = out.split("full output of every step: ")[1].split()[0]
    assert "executor" in open(log).read().lower()
    # where to look next: every printed path exists
    logs = out.split("tensorboard --logdir ")[1].split()[0]
    serving = out.split("serving model:")[1].split()[0]
    report = out.split("cluster report:")[1].split()[0]
    assert os.path.isdir(logs) and os.path.isdir(serving) and os.path.isfile(report)
    (run,) = [p for p in os.listdir(tmp_path / "runs") if p not in ("cache", "logs")]
    metrics = json.load(open(tmp_path / "runs" / run / "evaluator" / "metrics" / "metrics.json"))
    assert 0 <= metrics["hit_rate@5"] <= metrics["hit_rate@10"] <= 1
    for step, output in local_runner.OUTPUTS.items():
        assert os.path.exists(tmp_path / "runs" / run / step / output / "step.json"), step
    assert os.path.isdir(tmp_path / "runs" / run / "exporter" / "export" / "serving_model")

    # a second run reuses every step its config leaves unchanged. cluster_source behavioural: item-clusterer-2
    # clusters the exported item embeddings of a first (in_batch, category) model and the final trainer trains
    # on that table, so trainer and every step after it rerun
    assert local_runner.main(args + ["--trainer.cluster_source", "behavioural"]) == 0
    runs = sorted((p for p in os.listdir(tmp_path / "runs") if p not in ("cache", "logs")),
                  key=lambda p: os.path.getmtime(tmp_path / "runs" / p))
    outputs = {**local_runner.OUTPUTS, **{f"{step}-2": local_runner.OUTPUTS[step]
                                          for step in ("item-clusterer", "trainer", "exporter")}}
    reused = {step: json.load(open(tmp_path / "runs" / runs[-1] / step / output / "step.json"))["reused"]
              for step, output in outputs.items()}
    assert reused == {"example-gen": True, "item-embedder": True, "item-clusterer": True, "trainer": False,
                      "evaluator": False, "exporter": False, "item-clusterer-2": False, "trainer-2": False,
                      "exporter-2": False}
    summary = json.load(open(tmp_path / "runs" / runs[-1] / "trainer-2" / "model" / "train_summary.json"))
    assert summary["config"]["cluster_source"] == "behavioural" and summary["num_clusters"] == 3
    first = json.load(open(tmp_path / "runs" / runs[-1] / "trainer" / "model" / "train_summary.json"))
    assert (first["config"]["strategy"], first["config"]["cluster_source"]) == ("in_batch", "category")
    assert local_runner._artifacts(str(tmp_path / "runs" / runs[-1]))["trainer"].endswith(
        os.path.join("trainer-2", "model"))

    # continuous training: one pipeline per time window, each trainer warm-started from the previous window's
    # model through a dsl.importer input; each window's examples train on it alone and evaluate on the next
    from llm_hardneg.components.example_gen import core

    stamps = [int(line.rsplit("::", 1)[1]) for line in open(os.path.join(movielens_dir, "ratings.dat")) if line.strip()]
    bounds = core.window_bounds(stamps, 2, 0.6)
    capsys.readouterr()
    assert local_runner.main(args + ["--window-bounds", ",".join(map(str, bounds)), "--window-epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "continuous training, one model per window" in out and out.count("[pipeline] window ") == 2
    windows = sorted((p for p in os.listdir(tmp_path / "runs") if p not in ("cache", "logs")),
                     key=lambda p: os.path.getmtime(tmp_path / "runs" / p))[-2:]
    examples = [json.load(open(tmp_path / "runs" / w / "example-gen" / "examples" / "summary.json")) for w in windows]
    assert [e["config"]["window_start"] for e in examples] == [0, bounds[0]]
    assert [(e["cut_timestamp"], e["config"]["window_end"]) for e in examples] == [(bounds[0], bounds[1]),
                                                                                   (bounds[1], bounds[2])]
    assert examples[1]["window"]["rows_before_window"] == sum(t < bounds[0] for t in stamps)
    first, second = (json.load(open(tmp_path / "runs" / w / "trainer" / "model" / "train_summary.json"))
                     for w in windows)
    assert first["warm_start"] is None
    assert (first["config"]["epochs"], second["config"]["epochs"]) == (1, 2)  # --window-epochs: warm windows only
    assert second["warm_start"]["items_carried"] == first["items"] and second["users"] >= first["users"]
    base_rows = json.load(open(os.path.join(second["warm_start"]["base"], "train_summary.json")))
    assert base_rows["train_examples_per_epoch"] == first["train_examples_per_epoch"]  # the imported window-0 model
    # the closing table: each window's figures as its evaluator and trainer wrote them
    metrics = json.load(open(tmp_path / "runs" / windows[1] / "evaluator" / "metrics" / "metrics.json"))
    row = next(line for line in out.splitlines() if line.startswith(f"| 1 | {bounds[1]} |")).split(" | ")
    k = min(int(key.split("@")[1]) for key in metrics if key.startswith("hit_rate@"))
    assert float(row[4]) == pytest.approx(metrics[f"hit_rate@{k}"], abs=5e-5)
    assert float(row[5]) == pytest.approx(metrics[f"ndcg@{k}"], abs=5e-5)
    assert row[3] == f"{metrics['num_queries']:,} ({metrics['by_user']['new']['queries']:,})"
    assert float(row[8]) == pytest.approx(second["pool"]["new_item_share"], abs=5e-4)


def test_behavioural_clusters_come_from_a_first_model(tmp_path):
    """The Kubeflow definition of cluster_source behavioural: item-clusterer-2 clusters the exported item
    embeddings of a first (in_batch) model, and the final trainer trains on that table (the local run of the
    same definition: test_local_run_end_to_end)."""
    import yaml

    from llm_hardneg.tfx_pipeline import kubeflow_runner

    path = str(tmp_path / "pipeline.yaml")
    assert kubeflow_runner.main(["--output", path, "--data-dir", "gs://bucket/ml-1m", "--pipeline-root", "gs://b/r",
                                 "--trainer.cluster_source", "behavioural"]) == 0
    tasks = yaml.safe_load(open(path))["root"]["dag"]["tasks"]
    producer = {name: {k: a["taskOutputArtifact"]["producerTask"] for k, a in t["inputs"].get("artifacts", {}).items()}
                for name, t in tasks.items()}
    assert producer["trainer"]["clusters"] == "item-clusterer"  # the first model
    assert producer["exporter"]["model"] == "trainer"
    assert producer["item-clusterer-2"]["embeddings"] == "exporter"
    assert producer["trainer-2"]["clusters"] == "item-clusterer-2"
    assert producer["evaluator"]["model"] == producer["exporter-2"]["model"] == "trainer-2"
    first = json.loads(tasks["trainer"]["inputs"]["parameters"]["config_json"]["runtimeValue"]["constant"])
    second = json.loads(tasks["item-clusterer-2"]["inputs"]["parameters"]["config_json"]["runtimeValue"]["constant"])
    assert (first["strategy"], first["cluster_source"], second["embedding_kind"]) == ("in_batch", "category",
                                                                                       "behavioural")


def test_user_errors_end_with_one_line_and_bugs_with_a_traceback(tmp_path, capsys):
    root = ["--pipeline-root", str(tmp_path / "runs")]
    assert local_runner.main(root + ["--trainer.strategy", "hardest"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: strategy must be one of ('in_batch', 'oob', 'cluster_oob', 'full'), got 'hardest'"

    missing = str(tmp_path / "no-such-file.csv")
    assert local_runner.main(root + ["--example_gen.source", "generic", "--example_gen.interactions", missing]) == 1
    captured = capsys.readouterr()
    first, second = captured.err.strip().splitlines()
    assert first.startswith("error: example-gen failed: ") and "no-such-file.csv" in first
    assert "Traceback" not in captured.err + captured.out
    log = second.split("traceback in ")[1].rstrip(")")
    assert "Traceback (most recent call last)" in open(log).read()


def test_failure_reads_the_last_traceback():
    lines = ["noise", "Traceback (most recent call last):", '  File "x.py", line 1', "KeyError: 'a'",
             "more", "Traceback (most recent call last):", '  File "y.py", line 2',
             "ValueError: items.csv:6: field 'text': missing [while running 'Read/Parse']"]
    kind, message, trace = local_runner.failure(lines)
    assert (kind, message) == ("ValueError", "items.csv:6: field 'text': missing")
    assert trace.startswith("Traceback") and "y.py" in trace and "x.py" not in trace
    kind, _, _ = local_runner.failure(["Traceback (most recent call last):", "apache_beam.x.SchemaViolation: bad"])
    assert kind == "SchemaViolation"


def test_trainer_job_compiles_to_a_vertex_custom_job_of_worker_pools(tmp_path, capsys):
    """--trainer_job.replicas 4: the trainer task is a Vertex AI custom job whose worker pools are a chief
    (1) and workers (3) on the requested machines, running the trainer component in the pipeline image."""
    import yaml

    from llm_hardneg.tfx_pipeline import kubeflow_runner

    path = str(tmp_path / "pipeline.yaml")
    assert kubeflow_runner.main(["--output", path, "--data-dir", "gs://bucket/ml-1m", "--pipeline-root", "gs://b/r",
                                 "--image", "registry.example/llm-hardneg:1", "--trainer.distribute", "multi_worker",
                                 "--trainer_job.replicas", "4", "--trainer_job.machine_type", "n1-standard-16",
                                 "--trainer_job.accelerator_type", "NVIDIA_TESLA_T4",
                                 "--trainer_job.accelerator_count", "2", "--trainer_job.spot", "true"]) == 0
    spec = yaml.safe_load(open(path))
    trainer = spec["components"][spec["root"]["dag"]["tasks"]["trainer"]["componentRef"]["name"]]
    parameters = trainer["inputDefinitions"]["parameters"]
    pools = parameters["worker_pool_specs"]["defaultValue"]
    assert [p["replica_count"] for p in pools] == [1, 3]
    for pool in pools:
        assert pool["machine_spec"] == {"machine_type": "n1-standard-16", "accelerator_type": "NVIDIA_TESLA_T4",
                                        "accelerator_count": 2}
        container = pool["container_spec"]
        assert container["image_uri"] == "registry.example/llm-hardneg:1"
        assert container["args"][-2:] == ["--function_to_execute", "trainer"]
        assert "config = section_from_json(\"trainer\", config_json)" in container["command"][-1]
        assert "run_trainer(config, examples.path, clusters.path, model.path)" in container["command"][-1]
    assert parameters["strategy"]["defaultValue"] == "SPOT"
    assert parameters["restart_job_on_worker_restart"]["defaultValue"] is True
    config = json.loads(spec["root"]["dag"]["tasks"]["trainer"]["inputs"]["parameters"]["config_json"]
                        ["runtimeValue"]["constant"])
    assert config["distribute"] == "multi_worker"
    other = spec["deploymentSpec"]["executors"]  # the other steps stay plain containers of the image
    assert sum(e.get("container", {}).get("image") == "registry.example/llm-hardneg:1" for e in other.values()) == 5

    with pytest.raises(ValueError, match="trainer_job.replicas 4 .* --trainer.distribute multi_worker .*'none'"):
        parse(["--data-dir", str(tmp_path), "--trainer_job.replicas", "4"])
    with pytest.raises(ValueError, match="accelerator_type and trainer_job.accelerator_count go together"):
        parse(["--data-dir", str(tmp_path), "--trainer_job.accelerator_type", "NVIDIA_TESLA_T4"])
    assert local_runner.main(["--data-dir", str(tmp_path), "--pipeline-root", str(tmp_path / "runs"),
                              "--trainer_job.machine_type", "n1-standard-16"]) == 1
    assert "describes a Vertex AI custom job; a local run trains in this process" in capsys.readouterr().err


def test_tfjob_manifest_runs_the_trainer_entry_point_on_a_chief_and_workers():
    import yaml

    from llm_hardneg.components.common.cli import step_main
    from llm_hardneg.components.trainer import TrainerConfig

    with open(os.path.join(os.path.dirname(__file__), "..", "deploy", "tfjob-trainer.yaml"), encoding="utf-8") as f:
        job = yaml.safe_load(f)
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "TFJob")
    replicas = job["spec"]["tfReplicaSpecs"]
    assert {name: spec["replicas"] for name, spec in replicas.items()} == {"Chief": 1, "Worker": 3}
    (chief,), (worker,) = (replicas[r]["template"]["spec"]["containers"] for r in ("Chief", "Worker"))
    assert chief == worker and chief["name"] == "tensorflow"  # the operator's container name for TF_CONFIG ports
    assert chief["command"][:3] == ["python", "-m", "llm_hardneg.components.trainer"]
    seen = []
    assert step_main(TrainerConfig, ["examples_dir", "clusters_dir", "output_dir"],
                     lambda config, *paths: seen.append((config, paths)), "", argv=chief["command"][3:]) == 0
    (config, paths), = seen
    assert config.distribute == "multi_worker" and config.checkpoint_every_steps > 0
    assert paths == ("/data/run/examples", "/data/run/clusters", "/data/run/model")
