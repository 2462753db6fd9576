"""Scale-out: tf.distribute strategies, and how batches are shared among replicas.

- ``"default"``: one device (the GPU if there is one, else the CPU), no replication.
- ``"mirrored"``: ``tf.distribute.MirroredStrategy`` over all local GPUs (synchronous data
  parallelism, one replica per GPU); without a GPU, over the logical CPU devices.
- ``"multiworker"``: ``tf.distribute.MultiWorkerMirroredStrategy`` over several hosts described by
  the ``TF_CONFIG`` environment variable. Start the same command (``python -m breakhis_core resume
  RUN_DIR``) on every host, with RUN_DIR on storage they all read; the chief (task ``chief``, or
  ``worker`` 0) writes the run files, the other workers write to a scratch copy that is deleted
  at the end. The ``cancel`` file is not used under multiworker: stop every worker instead (the
  run resumes from its last completed epoch).

The model is built and compiled under ``strategy.scope()``; each replica gets ``batch_size``
images, so the global batch is ``batch_size × replicas`` (keep the learning rates, or scale them
yourself).

The compute precision (float32, bfloat16 on CPUs that have it, float16 on GPUs) is chosen in
``runtime.py``.
"""

from __future__ import annotations

import json
import os
from .errors import ConfigError

def make_strategy(name: str):
    """The ``tf.distribute.Strategy`` for a config's ``strategy`` field.

    Raises:
        ConfigError: for an unknown name, or ``multiworker`` without a usable ``TF_CONFIG``.
    """
    if name == "multiworker":
        try:
            cluster = json.loads(os.environ.get("TF_CONFIG", "")).get("cluster")
        except (ValueError, AttributeError):
            cluster = None
        if not cluster:
            raise ConfigError(
                "strategy=multiworker needs the TF_CONFIG environment variable describing the cluster and this "
                'task, e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", '
                '"index": 0}}. Received: TF_CONFIG=' + repr(os.environ.get("TF_CONFIG", ""))
            )
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


def is_chief(strategy) -> bool:
    """True unless this process is a non-chief worker of a multi-worker strategy."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief
