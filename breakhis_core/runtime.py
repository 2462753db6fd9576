"""The TensorFlow runtime of this machine: a quiet start-up, its devices, its CPU features and the compute precision.

- :func:`load_tensorflow` imports TensorFlow without the start-up lines its C++ core prints on stderr
  (absl's "All log messages before absl::InitializeLog()", "oneDNN custom operations are on", "Could not
  find cuda drivers", "failed call to cuInit" on a machine without a GPU). Other lines, real errors among
  them, are passed on. ``BREAKHIS_VERBOSE=1`` (the CLI's ``--verbose``) shows everything.
- :func:`select_device` and :func:`device_info`: which device training uses, and what the machine has.
- :func:`choose_precision`: float32, ``mixed_bfloat16`` (CPUs whose flags include ``avx512_bf16`` or
  ``amx_bf16``: about twice the float32 speed for VGG16) or ``mixed_float16`` (GPUs), with the reason.
  :func:`precision_policy` sets it for a block (training) and :func:`with_precision` gives a model's twin
  computing in it (inference). Saved models stay float32; the softmax layer always computes in float32.
- :func:`size_serving_thread_pools`: the app server's TensorFlow thread pools, one model pass at a time over
  every usable core (its passes take turns: ``inference_queue.py``).
"""

from __future__ import annotations

import os
import platform
import re
import sys
import tempfile
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass

from breakhis_core.config import MIXED_PRECISION_MODES
from breakhis_core.errors import ConfigError

VERBOSE_ENV = "BREAKHIS_VERBOSE"
"""Set to 1 to see TensorFlow's start-up lines (the CLI's ``--verbose`` sets it)."""

START_UP_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|^[IWE]\d{4} [\d:.]+\s+\d+ (port|cudart_stub|cuda_platform|cuda_executor|cuda_dnn|cuda_fft|cuda_blas|"
    r"cpu_feature_guard|gpu_device|computation_placer)\.cc:\d+\]"
    r"|^To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags"
)
"""Lines TensorFlow's C++ core prints while starting on any machine: version banners and probes, not errors."""

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
FLOAT32, MIXED_BFLOAT16, MIXED_FLOAT16 = "float32", "mixed_bfloat16", "mixed_float16"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def load_tensorflow():
    """Import TensorFlow (once) and probe its devices with the start-up noise filtered out of stderr.

    The C++ core writes to file descriptor 2 directly, so the descriptor itself is redirected while
    TensorFlow starts; lines that are not start-up noise are written back to stderr afterwards.
    Returns the ``tensorflow`` module.
    """
    if "tensorflow" in sys.modules or verbose():
        import tensorflow as tf

        return tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # CUDA's probe prints here on a machine without a GPU
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines()
                    if line.strip() and not START_UP_NOISE.search(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)
    return tf


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def size_serving_thread_pools() -> tuple[int, int]:
    """Size TensorFlow's pools for a server whose model passes take turns: every usable core inside an op
    (intra-op), one op at a time (inter-op), so one pass never competes with another for the cores.

    Takes effect before the process's first tensor; where TensorFlow has already run in the process (the app
    run in-process by tests after training), its pools stay as they are. Returns the (intra-op, inter-op)
    threads now set (0: TensorFlow's own choice).
    """
    tf = load_tensorflow()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(usable_cpus())
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # "cannot be modified after initialization": TensorFlow already runs with its pools
        pass
    return tf.config.threading.get_intra_op_parallelism_threads(), tf.config.threading.get_inter_op_parallelism_threads()


def select_device(device: str) -> str:
    """Make TensorFlow use the requested device; returns a description like "CPU (2 cores)".

    Must run before TensorFlow creates its first tensor. ``gpu`` without a GPU raises ConfigError.
    """
    tf = load_tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise ConfigError("device=gpu was asked for but TensorFlow finds no GPU. Received: device=gpu")
    if device == "cpu" and gpus:
        tf.config.set_visible_devices([], "GPU")
        gpus = []
    if gpus:
        return f"GPU ({', '.join(_gpu_names(gpus))})"
    return f"CPU ({os.cpu_count()} cores)"


def _gpu_names(gpus) -> list[str]:
    tf = load_tensorflow()
    names = []
    for gpu in gpus:
        try:
            names.append(tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name))
        except Exception:  # details are optional; the GPU still counts
            names.append(gpu.name)
    return names


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where the file does not exist)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@dataclass(frozen=True)
class Precision:
    """The compute precision chosen for a device, and why. ``policy`` is a Keras dtype policy name."""

    policy: str  # "float32", "mixed_bfloat16" or "mixed_float16"
    reason: str

    @property
    def mixed(self) -> bool:
        return self.policy != FLOAT32

    def to_dict(self) -> dict:
        return {"policy": self.policy, "reason": self.reason}


def choose_precision(mode: str, on_gpu: bool, flags: frozenset[str] | None = None) -> Precision:
    """The precision for ``mode`` ("auto", "on", "off") on a GPU or on this CPU (``flags``: its feature flags).

    - "off": float32 everywhere.
    - "auto": ``mixed_float16`` on a GPU; ``mixed_bfloat16`` on a CPU with bf16 instructions
      (``avx512_bf16`` or ``amx_bf16``); float32 on other CPUs, where bf16 would be emulated and slower.
    - "on": mixed precision even where "auto" would not pick it (bf16 on any CPU, float16 on a GPU).
    """
    if mode not in MIXED_PRECISION_MODES:
        raise ConfigError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION_MODES)}. Received: mixed_precision={mode}")
    if mode == "off":
        return Precision(FLOAT32, "mixed precision off (mixed_precision=off)")
    if on_gpu:
        return Precision(MIXED_FLOAT16, f"GPU: float16 compute with float32 weights (mixed_precision={mode})")
    flags = cpu_flags() if flags is None else flags
    found = [flag for flag in BF16_CPU_FLAGS if flag in flags]
    if found:
        return Precision(MIXED_BFLOAT16, f"CPU with {' and '.join(found)}: bfloat16 compute (mixed_precision={mode})")
    if mode == "on":
        return Precision(MIXED_BFLOAT16, "CPU without bf16 instructions: bfloat16 emulated, slower than float32 "
                                         "(mixed_precision=on)")
    return Precision(FLOAT32, "CPU without avx512_bf16/amx_bf16: float32 (mixed_precision=auto)")


@dataclass(frozen=True)
class DeviceInfo:
    """What this machine offers TensorFlow, for the app's "This installation" panel."""

    gpus: list[str]
    cpu_count: int
    precision: Precision  # what mixed_precision="auto" picks here
    summary: str


def device_info() -> DeviceInfo:
    """This machine's GPUs, CPU cores and the precision ``auto`` picks on it."""
    tf = load_tensorflow()
    gpus = _gpu_names(tf.config.list_physical_devices("GPU"))
    cpus = os.cpu_count() or 1
    summary = f"GPU: {', '.join(gpus)}" if gpus else f"CPU only ({cpus} cores; no GPU found)"
    return DeviceInfo(gpus, cpus, choose_precision("auto", bool(gpus)), summary)


@contextmanager
def precision_policy(policy: str):
    """Set Keras's global dtype policy to ``policy`` for the block; restore the previous one after."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


_TWINS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_TWINS_LOCK = threading.Lock()


def with_precision(model, policy: str):
    """``model`` itself for float32, else its twin computing in ``policy`` (same layers, names and weights).

    The layer named ``predictions`` (the softmax) and the input stay float32, so probabilities are
    float32 either way. Twins are kept while ``model`` lives, so repeated calls reuse one twin (and the
    compiled functions built on it).
    """
    if policy == FLOAT32:
        return model
    import keras

    def clone(layer):
        config = layer.get_config()
        if layer.name != "predictions" and "dtype" in config:
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    with _TWINS_LOCK:
        twins = _TWINS.setdefault(model, {})
        if policy not in twins:
            twin = keras.models.clone_model(model, clone_function=clone)
            twin.set_weights(model.get_weights())
            twins[policy] = twin
        return twins[policy]


def software_versions() -> dict[str, str]:
    """The versions a run records (run.json "versions"): Python, TensorFlow, Keras, NumPy and breakhis_core."""
    import keras
    import numpy as np

    from breakhis_core import __version__

    return {
        "python": platform.python_version(),
        "tensorflow": load_tensorflow().__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "breakhis_core": __version__,
    }
