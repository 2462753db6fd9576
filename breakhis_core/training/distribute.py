"""Scale-out: tf.distribute strategies, and how batches are shared among replicas.

- ``"default"``: one device (the GPU if there is one, else the CPU), no replication.
- ``"mirrored"``: ``tf.distribute.MirroredStrategy`` over all local GPUs (synchronous data
  parallelism, one replica per GPU); without a GPU, over the logical CPU devices.
- ``"multiworker"``: ``tf.distribute.MultiWorkerMirroredStrategy`` over several hosts described by
  the ``TF_CONFIG`` environment variable (:func:`multiworker_task` reads it). The same command runs on
  every host (``python -m breakhis_core train DATA --strategy multiworker --run-name NAME --runs RUNS``,
  or ``resume RUNS/NAME``), with RUNS on storage they all read; the chief (task ``chief``, or
  ``worker`` 0) creates the run, holds its lock and writes its files; the other workers train in a
  scratch copy that is deleted at the end and never write the run. Each worker trains in a child
  process watched by ``workers.py`` (dead peers, SIGTERM, the cancel file).

The model is built and compiled under ``strategy.scope()``; each replica gets ``batch_size``
images, so the global batch is ``batch_size × replicas`` (keep the learning rates, or scale them
yourself).

The compute precision (float32, bfloat16 on CPUs that have it, float16 on GPUs) is chosen in
``runtime.py``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from breakhis_core.errors import ConfigError

TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}')
COLLECTIVES_DONE_ENV = "BREAKHIS_COLLECTIVES_DONE"
"""File a multi-worker training child creates once its last collective step is over (see workers.py)."""


@dataclass(frozen=True)
class WorkerTask:
    """This process's place in a multi-worker cluster, from ``TF_CONFIG``."""

    task_type: str  # "chief" or "worker"
    index: int
    address: str  # host:port of this task's TensorFlow server
    peers: dict[str, str]  # the other tasks: name ("worker 1", "chief 0") -> host:port
    is_chief: bool  # the task that owns the run's files: "chief", or "worker" 0 when there is no chief

    @property
    def name(self) -> str:
        return f"{self.task_type} {self.index}"


def multiworker_task(tf_config: str | None = None) -> WorkerTask:
    """Parse ``TF_CONFIG`` (default: the environment's) without importing TensorFlow.

    Raises:
        ConfigError: when it is missing, not JSON, or names no task of its cluster.
    """
    text = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    try:
        parsed = json.loads(text)
        cluster, task = parsed["cluster"], parsed["task"]
        task_type, index = str(task["type"]), int(task.get("index", 0))
        addresses = {f"{kind} {i}": str(address) for kind, members in cluster.items() for i, address in enumerate(members)}
        address = addresses[f"{task_type} {index}"]
    except (ValueError, TypeError, KeyError, AttributeError):
        raise ConfigError("strategy=multiworker needs the TF_CONFIG environment variable describing the cluster and "
                          f"this task, e.g. {TF_CONFIG_EXAMPLE}. Received: TF_CONFIG={text!r}") from None
    is_chief = task_type == "chief" or (task_type == "worker" and index == 0 and "chief" not in cluster)
    peers = {name: peer for name, peer in addresses.items() if name != f"{task_type} {index}"}
    return WorkerTask(task_type, index, address, peers, is_chief)


def prepare_multiworker_fit(model) -> None:
    """Work around two places where Keras (3.x) ``fit`` breaks under MultiWorkerMirroredStrategy.

    1. Keras builds a distributed model from its first batch with ``strategy.reduce("MEAN", (x, y,
       sample_weight))``; with several workers TensorFlow's collective reduce takes no nested structure
       ("Attempt to convert a value (PerReplica: …) with an unsupported type … to a Tensor"). The batch only
       gives the build its shapes, so this worker's own replica share is used (no collective needed).
    2. Each step's logs (loss, accuracy: scalars per replica) are reduced across workers with
       ``strategy.reduce("MEAN", v, axis=0)``, which fails on a scalar ("Invalid reduction dimension 0 for
       input with 0 dimensions"). The steps return them as 1-element vectors, whose mean over axis 0 is
       the mean over replicas. Epoch logs come from the metrics themselves, aggregated over all workers.

    Both replace instance attributes of ``model`` (``_maybe_symbolic_build``, ``train_step``, ``test_step``);
    the two-worker tests (``tests/test_workers.py``) fail if a Keras release changes these hooks.
    """
    import tensorflow as tf

    def local(value):
        return value.values[0] if isinstance(value, tf.distribute.DistributedValues) else value

    def build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(local, next(batches))
                break
        with model.distribute_strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    def vectors(step):
        def run(data):
            return tf.nest.map_structure(lambda v: tf.reshape(v, [1]) if v.shape.rank == 0 else v, step(data))
        return run

    model._maybe_symbolic_build = build
    model.train_step = vectors(model.train_step)
    model.test_step = vectors(model.test_step)


def signal_collectives_done() -> None:
    """Tell this worker's supervisor (``workers.py``) that no collective step is left, so peers may now exit."""
    marker = os.environ.get(COLLECTIVES_DONE_ENV)
    if marker:
        Path(marker).touch()


def make_strategy(name: str):
    """The ``tf.distribute.Strategy`` for a config's ``strategy`` field.

    Raises:
        ConfigError: for an unknown name, or ``multiworker`` without a usable ``TF_CONFIG``.
    """
    if name == "multiworker":
        multiworker_task()  # a clear error for a missing or broken TF_CONFIG
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [
            d.name for d in tf.config.list_logical_devices("CPU")
        ]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(f"strategy must be default, mirrored or multiworker. Received: strategy={name}")


def batch_bounds(n: int, batch_size: int, replicas: int = 1, what: str = "images") -> list[tuple[int, int]]:
    """``(start, stop)`` of the batches of ``n`` items, in order: full batches of ``batch_size``, then the rest.

    With several replicas (``batch_size`` is then the global batch) two rules hold:

    - every batch gives every replica at least one item: a last batch of fewer than ``replicas``
      items joins the batch before it. An empty replica share is not harmless: with oneDNN (on by
      default on CPUs with AVX-512) TensorFlow's CPU convolution returns its *input* unchanged for
      an empty batch, so the next convolution fails ("input depth must be evenly divisible by
      filter depth: 3 vs 64");
    - the first batch divides evenly among the replicas (Keras builds the distributed model from it):
      a lone batch whose size does not is split in two, each part at least ``replicas`` items.

    Raises:
        ConfigError: when ``0 < n < replicas`` (some replica would get nothing), naming ``what``.
    """
    if n <= 0:
        return []
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if replicas <= 1:
        return bounds
    if n < replicas:
        raise ConfigError(f"{n} {what} cannot be shared among {replicas} replicas (each needs at least one); "
                          f"use more data or strategy=default. Received: {what}={n}, replicas={replicas}")
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < replicas:
        bounds[-2:] = [(bounds[-2][0], n)]
    if len(bounds) == 1 and n % replicas:
        even = (n // replicas - 1) * replicas
        if even >= replicas:
            bounds = [(0, even), (even, n)]
    return bounds
