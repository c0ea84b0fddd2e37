"""The trainer as two MultiWorkerMirroredStrategy workers on localhost (TF_CONFIG, one process each):
it trains what one process with two replicas trains, keeps every pool copy identical, writes only
from the chief, and resumes after both workers are SIGKILLed mid-epoch."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from llm_hardneg.components.trainer.distribute import localhost_tf_configs

CONFIG = {"batch_size": 33, "epochs": 2, "embedding_dim": 8, "num_negatives": 4, "random_ratio": 1,
          "cluster_ratio": 3, "log_every_steps": 1, "shuffle_buffer": 1000, "history_length": 5, "seed": 5,
          "checkpoint_every_steps": 2}  # 33: the replicas' slices are uneven (16 and 17 rows)

MIRRORED = """
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from llm_hardneg.components.common.cli import step_main
from llm_hardneg.components.trainer import TrainerConfig, run_trainer
sys.exit(step_main(TrainerConfig, ["examples_dir", "clusters_dir", "output_dir"], run_trainer, "", beam=False))
"""


def arguments(examples_dir, clusters_dir, output_dir, **overrides):
    return ["--examples-dir", examples_dir, "--clusters-dir", clusters_dir, "--output-dir", output_dir,
            "--config-json", json.dumps({**CONFIG, **overrides})]


def start_workers(examples_dir, clusters_dir, output_dir, scratch, **overrides):
    """Two trainer processes sharing output_dir (a shared file system, as GCS is on Vertex AI)."""
    processes = []
    for tf_config in localhost_tf_configs(2):
        env = {**os.environ, "TMPDIR": scratch, "TF_CONFIG": tf_config}
        command = [sys.executable, "-u", "-m", "llm_hardneg.components.trainer",
                   *arguments(examples_dir, clusters_dir, output_dir, distribute="multi_worker", **overrides)]
        processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                          env=env))
    return processes


def finish(processes):
    logs = [p.communicate(timeout=600)[0] for p in processes]
    for p, log in zip(processes, logs):
        assert p.returncode == 0, log[-4000:]
    return logs


def embeddings(directory):
    model = tf.saved_model.load(os.path.join(directory, "candidate_model"))
    return model(tf.constant([str(i) for i in range(1, 41)]))["embedding"].numpy()


def fingerprint(log):
    lines = [line for line in log.splitlines() if "pool copies identical on 2 replicas" in line]
    assert len(lines) == 1, log[-3000:]
    return lines[0].split("fingerprint ")[1]


def two_workers_and_two_replicas(examples_dir, clusters_dir, tmp_path, **overrides):
    """The trainer on two multi_worker processes (into tmp_path/workers) and in one process with two replicas
    (tmp_path/mirrored): their pool copies are identical and so are their candidate embeddings. Returns the
    workers' logs and the two output directories."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    workers = str(tmp_path / "workers")
    logs = finish(start_workers(examples_dir, clusters_dir, workers, str(scratch), **overrides))
    assert fingerprint(logs[0]) == fingerprint(logs[1])  # every worker's pool copy holds the same items
    assert list(scratch.iterdir()) == []  # worker 1's scratch outputs were removed
    # one process, two replicas (2 logical CPUs): the same global batches, slices and replica random streams
    mirrored = str(tmp_path / "mirrored")
    result = subprocess.run([sys.executable, "-c", MIRRORED,
                             *arguments(examples_dir, clusters_dir, mirrored, distribute="mirrored", **overrides)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert fingerprint(result.stdout) == fingerprint(logs[0])
    np.testing.assert_allclose(embeddings(workers), embeddings(mirrored), atol=1e-5)
    return logs, workers, mirrored


def test_two_workers_train_what_two_local_replicas_train_and_resume_after_sigkill(examples_dir, clusters_dir,
                                                                                   tmp_path):
    logs, workers, mirrored = two_workers_and_two_replicas(examples_dir, clusters_dir, tmp_path)
    assert "worker 0 of 2 tasks, 2 replicas" in logs[0] and "worker 1 of 2 tasks, 2 replicas" in logs[1]
    with open(os.path.join(workers, "train_summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    assert summary["replicas"] == 2 and summary["config"]["distribute"] == "multi_worker"
    with open(os.path.join(mirrored, "train_summary.json"), encoding="utf-8") as f:
        local = json.load(f)["final_metrics"]
    final = summary["final_metrics"]  # the global batch's figures, not the replicas' sum
    assert sum(v for k, v in final.items() if k.startswith("mass_")) == pytest.approx(1.0, abs=1e-4)
    assert 0 < final["pool_fill"] <= 1
    for name in ("loss", "mass_in_batch", "pool_fill"):
        assert final[name] == pytest.approx(local[name], rel=1e-4), name

    # both workers SIGKILLed mid-epoch, started again: they resume and end where the uninterrupted run ended
    killed = str(tmp_path / "killed")
    processes = start_workers(examples_dir, clusters_dir, killed, str(tmp_path / "scratch"))
    seen = []
    for line in processes[0].stdout:  # the chief; the checkpoint of epoch 2, step 2 is written before step 3
        seen.append(line)
        if "epoch 2/2 step 3/" in line:
            for p in processes:
                p.send_signal(signal.SIGKILL)
            break
    for p in processes:
        p.wait(timeout=60)
    assert processes[0].returncode == -signal.SIGKILL, "".join(seen[-20:])
    assert not os.path.exists(os.path.join(killed, "candidate_model"))

    logs = finish(start_workers(examples_dir, clusters_dir, killed, str(tmp_path / "scratch")))
    for log in logs:  # both workers resume from the chief's checkpoint
        assert "resumed from" in log and "(epoch 1, step 2/" in log, log[-3000:]
    progress = [line for line in logs[0].splitlines() if " step " in line and "examples/s" in line]
    assert "epoch 2/2 step 3/" in progress[0]  # one step lost (at most checkpoint_every_steps), not an epoch
    np.testing.assert_allclose(embeddings(killed), embeddings(workers), atol=1e-5)
