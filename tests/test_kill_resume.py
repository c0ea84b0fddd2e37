"""SIGKILL the trainer mid-epoch, start it again: it resumes from the last checkpoint (model,
optimizer, pool, random state, input position), written every 2 steps, and ends exactly where an
uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import tensorflow as tf

CONFIG = {"batch_size": 32, "epochs": 3, "embedding_dim": 8, "num_negatives": 4, "random_ratio": 1,
          "cluster_ratio": 3, "log_every_steps": 1, "shuffle_buffer": 1000, "history_length": 5, "seed": 5,
          "checkpoint_every_steps": 2}


def trainer_command(examples_dir, clusters_dir, output_dir):
    return [sys.executable, "-u", "-m", "llm_hardneg.components.trainer", "--examples-dir", examples_dir,
            "--clusters-dir", clusters_dir, "--output-dir", output_dir, "--config-json", json.dumps(CONFIG)]


def embeddings(directory):
    model = tf.saved_model.load(os.path.join(directory, "candidate_model"))
    return model(tf.constant([str(i) for i in range(1, 41)]))["embedding"].numpy()


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(examples_dir, clusters_dir, tmp_path):
    killed = str(tmp_path / "killed")
    process = subprocess.Popen(trainer_command(examples_dir, clusters_dir, killed), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in process.stdout:  # kill inside epoch 2 at step 5: the checkpoint of step 4 was written
        seen.append(line)
        if "epoch 2/3 step 5/" in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(seen[-20:])
    assert not os.path.exists(os.path.join(killed, "candidate_model"))

    resumed = subprocess.run(trainer_command(examples_dir, clusters_dir, killed), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "(epoch 1, step 4/" in resumed.stdout, resumed.stdout[-3000:]
    progress = [line for line in resumed.stdout.splitlines() if " step " in line and "examples/s" in line]
    assert "epoch 2/3 step 5/" in progress[0]  # one step lost (at most checkpoint_every_steps), not an epoch

    uninterrupted = str(tmp_path / "uninterrupted")
    subprocess.run(trainer_command(examples_dir, clusters_dir, uninterrupted), check=True, capture_output=True,
                   timeout=300)
    np.testing.assert_allclose(embeddings(killed), embeddings(uninterrupted), atol=1e-6)
