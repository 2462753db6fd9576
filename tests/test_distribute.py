"""tf.distribute and mixed precision: the strategy path runs on CPU with two logical devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from breakhis_core.config import TrainConfig
from breakhis_core.training.pipeline import make_dataset
from breakhis_core.training.distribute import batch_bounds, make_strategy
from breakhis_core.runtime import choose_precision
from breakhis_core.errors import ConfigError
from breakhis_core.training.setup import prepare_run
from breakhis_core.training.train import run_training
from conftest import REPO_ROOT, tiny_config

# Logical devices must be configured before TensorFlow initialises, hence a fresh process.
TWO_CPUS = textwrap.dedent(
    """
    import sys
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from breakhis_core.training.train import run_training

    for run_dir in sys.argv[1:]:
        print(run_training(run_dir))
    """
)


@pytest.mark.parametrize("onednn", ["0", "1"])
def test_mirrored_strategy_trains_end_to_end_on_two_logical_cpus(sample_dir, tmp_path, onednn):
    """Both paths under MirroredStrategy, with TensorFlow's oneDNN kernels off and on (CPUs differ in the default).

    The sample's split leaves batches that are not multiples of the global batch of 16; under oneDNN an empty
    replica share used to crash the first convolution (see ``distribute.batch_bounds``).
    """
    runs = [prepare_run(tiny_config(sample_dir, strategy="mirrored", cache=cache, split="image"), tmp_path)
            for cache in ("on", "off")]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": onednn}
    result = subprocess.run([sys.executable, "-c", TWO_CPUS, *map(str, runs)], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["done", "done"]
    for run_dir, path in zip(runs, ("cached (8 views)", "plain")):
        info = json.loads((run_dir / "run.json").read_text())
        assert info["strategy"] == {"name": "mirrored", "replicas": 2, "global_batch_size": 16}
        assert info["training_path"] == path
        assert info["precision"] == choose_precision("auto", on_gpu=False).to_dict()  # bf16 on CPUs that have it
        assert json.loads((run_dir / "status.json").read_text())["status"] == "done"
        model = keras.saving.load_model(run_dir / "finetuned.keras", safe_mode=True)
        assert model.output.shape[-1] == 2


@pytest.mark.parametrize("replicas", [1, 2, 3, 4])
@pytest.mark.parametrize("batch_size", [4, 8, 16])
def test_batch_bounds_never_leave_a_replica_empty(replicas, batch_size):
    global_batch = batch_size * replicas
    for n in range(replicas, 3 * global_batch + 2):
        bounds = batch_bounds(n, global_batch, replicas)
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(stop == next_start for (_, stop), (next_start, _) in zip(bounds, bounds[1:])), "contiguous"
        sizes = [stop - start for start, stop in bounds]
        assert min(sizes) >= replicas, (n, bounds)
        assert max(sizes) < global_batch + replicas, (n, bounds)
        if n >= 2 * replicas:
            assert sizes[0] % replicas == 0, (n, bounds)


def test_batch_bounds_refuse_fewer_items_than_replicas():
    assert batch_bounds(0, 16, 2) == []
    assert batch_bounds(1, 16, 1) == [(0, 1)]
    with pytest.raises(ConfigError, match="1 validation images cannot be shared among 2 replicas"):
        batch_bounds(1, 16, 2, "validation images")


@pytest.mark.parametrize("training", [False, True])
def test_datasets_batch_as_batch_bounds_say(training):
    n, batch_size, replicas = 17, 16, 2
    images = np.arange(n * 4 * 4 * 3, dtype=np.uint8).reshape(n, 4, 4, 3)
    dataset = make_dataset(images, np.arange(n), batch_size, training, augment_images=training, replicas=replicas)
    batches = list(dataset)
    assert [len(labels) for _, labels in batches] == [stop - start for start, stop in batch_bounds(n, batch_size, replicas)]
    assert int(dataset.cardinality()) == len(batches)
    assert sorted(int(v) for _, labels in batches for v in labels) == list(range(n))


def test_multiworker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "not json")
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        make_strategy("multiworker")


BF16_CPU = frozenset({"avx2", "avx512f", "avx512_bf16"})
AMX_CPU = frozenset({"avx2", "amx_bf16"})
AVX2_CPU = frozenset({"avx2", "fma"})


@pytest.mark.parametrize("mode, on_gpu, flags, policy", [
    ("auto", True, AVX2_CPU, "mixed_float16"),
    ("auto", False, BF16_CPU, "mixed_bfloat16"),
    ("auto", False, AMX_CPU, "mixed_bfloat16"),
    ("auto", False, AVX2_CPU, "float32"),
    ("on", False, AVX2_CPU, "mixed_bfloat16"),
    ("on", True, BF16_CPU, "mixed_float16"),
    ("off", False, BF16_CPU, "float32"),
    ("off", True, AVX2_CPU, "float32"),
])
def test_precision_follows_the_device_and_the_cpu_flags(mode, on_gpu, flags, policy):
    precision = choose_precision(mode, on_gpu, flags)
    assert precision.policy == policy
    assert precision.reason and f"mixed_precision={mode}" in precision.reason
    if policy == "mixed_bfloat16" and mode == "auto":
        assert "bf16" in precision.reason


def test_precision_mode_is_checked():
    with pytest.raises(ConfigError, match="mixed_precision"):
        choose_precision("fp8", False, AVX2_CPU)


def test_old_boolean_mixed_precision_configs_still_load():
    assert TrainConfig.from_dict({"mixed_precision": True}).validate().mixed_precision == "on"
    assert TrainConfig.from_dict({"mixed_precision": False}).validate().mixed_precision == "off"
    with pytest.raises(ConfigError, match="mixed_precision"):
        TrainConfig(mixed_precision="fp8").validate()


def test_mixed_precision_run_saves_float32_models(sample_dir, tmp_path):
    run_dir = prepare_run(tiny_config(sample_dir, mixed_precision="on", split="image", epochs_frozen=1), tmp_path)
    assert run_training(run_dir) == "done"
    assert json.loads((run_dir / "run.json").read_text())["precision"]["policy"] == "mixed_bfloat16"  # on a CPU
    assert keras.config.dtype_policy().name == "float32", "the global policy is restored"
    for stage in ("frozen", "finetuned"):
        model = keras.saving.load_model(run_dir / f"{stage}.keras", safe_mode=True)
        assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
