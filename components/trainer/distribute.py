"""The trainer under tf.distribute: which strategy, which process writes, and what each replica reads.

'multi_worker' is TensorFlow's MultiWorkerMirroredStrategy driven by TF_CONFIG, which Vertex AI
custom jobs and Kubeflow TFJobs set on every replica: no transport of our own. Every worker runs
the same program; the chief writes the outputs and the others write to scratch directories that
are removed (all workers take part in saving: TensorFlow's multi-worker pattern).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator

import tensorflow as tf

from llm_hardneg.components.common.step import is_chief_task
from llm_hardneg.components.trainer.config import TrainerConfig
from llm_hardneg.components.trainer.data import make_dataset


def make_strategy(distribute: str) -> tf.distribute.Strategy:
    """The strategy of TrainerConfig.distribute. Create it before any other TensorFlow op of the
    process: MultiWorkerMirroredStrategy configures the collective ops at start-up."""
    if distribute == "mirrored":
        return tf.distribute.MirroredStrategy()
    if distribute == "multi_worker":
        spec = os.environ.get("TF_CONFIG", "")
        try:
            workers = json.loads(spec)["cluster"]
        except (ValueError, KeyError, TypeError):
            raise ValueError("distribute 'multi_worker' reads the cluster from the TF_CONFIG environment variable "
                             f"(set by Vertex AI custom jobs and Kubeflow TFJobs), got TF_CONFIG={spec!r}") from None
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        resolver = strategy.cluster_resolver
        print(f"[trainer] multi_worker: {resolver.task_type} {resolver.task_id} of "
              f"{sum(len(v) for v in workers.values())} tasks, {strategy.num_replicas_in_sync} replicas", flush=True)
        return strategy
    return tf.distribute.get_strategy()


def localhost_tf_configs(workers: int) -> list[str]:
    """TF_CONFIG values of a cluster of `workers` worker processes on this machine (free ports picked
    now), one per worker: for trying multi_worker on one machine, as the tests and benchmarks do."""
    sockets = [socket.socket() for _ in range(workers)]
    for s in sockets:
        s.bind(("localhost", 0))
    cluster = {"worker": [f"localhost:{s.getsockname()[1]}" for s in sockets]}
    for s in sockets:
        s.close()
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(workers)]


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's outputs: always without a cluster; in one, the 'chief'
    task, or worker 0 when the cluster has no chief (TF_CONFIG's convention, step.is_chief_task)."""
    return not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or is_chief_task()


@contextlib.contextmanager
def write_location(output_dir: str, chief: bool) -> Iterator[str]:
    """Where this process writes: output_dir on the chief, a scratch directory (removed on exit) elsewhere."""
    if chief:
        yield output_dir
        return
    scratch = tempfile.mkdtemp(prefix="llm-hardneg-worker-")
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def epoch_batches(strategy: tf.distribute.Strategy, files: list[str], config: TrainerConfig, seed: int,
                  skip: int) -> tf.distribute.DistributedDataset | tf.data.Dataset:
    """One epoch of global batches of config.batch_size, from batch `skip` on; replica r gets slice r of each.

    Sharding is done here (distribute_datasets_from_function; no auto-sharding) rather than by a
    tf.data AutoShardPolicy: FILE would give workers unequal step counts (example shards differ in
    size), and an epoch's last collective would then wait forever; DATA would parse every example on
    every worker. Here every worker reads every shard (I/O grows with the workers) but parses only
    its replicas' slices, and global batch k holds the same examples whatever the number of workers,
    so a resumed run skips whole global batches.
    """
    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        local = context.num_replicas_in_sync // context.num_input_pipelines
        first = context.input_pipeline_id * local
        return make_dataset(files, config.step_rows, config.history_length, config.shuffle_buffer, seed=seed,
                            reshuffle=False, skip=skip, slices=tuple(range(first, first + local)),
                            num_slices=context.num_replicas_in_sync, sequences=config.sequence_training)

    return strategy.distribute_datasets_from_function(dataset_fn)


def replica_values(strategy: tf.distribute.Strategy, value: Callable[[], tf.Tensor]) -> list:
    """value() [] computed on every replica (all of them, across workers), in replica order."""
    @tf.function
    def gather() -> tf.Tensor:
        return tf.distribute.get_replica_context().all_gather(value()[None], 0)

    return strategy.experimental_local_results(strategy.run(gather))[0].numpy().tolist()
