"""tf.distribute and mixed precision: the strategy path runs on CPU with two logical devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import pytest

from breakhis_core.config import TrainConfig
from breakhis_core.distribute import make_strategy, use_mixed_precision
from breakhis_core.errors import ConfigError
from breakhis_core.train import prepare_run, run_training
from conftest import REPO_ROOT, tiny_config

# Logical devices must be configured before TensorFlow initialises, hence a fresh process.
TWO_CPUS = textwrap.dedent(
    """
    import sys
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from breakhis_core.train import run_training

    for run_dir in sys.argv[1:]:
        print(run_training(run_dir))
    """
)


def test_mirrored_strategy_trains_end_to_end_on_two_logical_cpus(sample_dir, tmp_path):
    runs = [prepare_run(tiny_config(sample_dir, strategy="mirrored", cache=cache, split="image"), tmp_path)
            for cache in ("on", "off")]
    result = subprocess.run([sys.executable, "-c", TWO_CPUS, *map(str, runs)], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["done", "done"]
    for run_dir, path in zip(runs, ("cached (8 views)", "plain")):
        info = json.loads((run_dir / "run.json").read_text())
        assert info["strategy"] == {"name": "mirrored", "replicas": 2, "global_batch_size": 16}
        assert info["training_path"] == path and info["mixed_precision"] is False
        assert json.loads((run_dir / "status.json").read_text())["status"] == "done"
        model = keras.saving.load_model(run_dir / "finetuned.keras", safe_mode=True)
        assert model.output.shape[-1] == 2


def test_multiworker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "not json")
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        make_strategy("multiworker")


@pytest.mark.parametrize("mode, on_gpu, expected", [("auto", True, True), ("auto", False, False), ("on", False, True),
                                                    ("off", True, False)])
def test_mixed_precision_is_on_for_gpu_by_default(mode, on_gpu, expected):
    assert use_mixed_precision(mode, on_gpu) is expected


def test_old_boolean_mixed_precision_configs_still_load():
    assert TrainConfig.from_dict({"mixed_precision": True}).validate().mixed_precision == "on"
    assert TrainConfig.from_dict({"mixed_precision": False}).validate().mixed_precision == "off"
    with pytest.raises(ConfigError, match="mixed_precision"):
        TrainConfig(mixed_precision="fp8").validate()


def test_mixed_precision_run_saves_float32_models(sample_dir, tmp_path):
    run_dir = prepare_run(tiny_config(sample_dir, mixed_precision="on", split="image", epochs_frozen=1), tmp_path)
    assert run_training(run_dir) == "done"
    assert json.loads((run_dir / "run.json").read_text())["mixed_precision"] is True
    assert keras.config.dtype_policy().name == "float32", "the global policy is restored"
    for stage in ("frozen", "finetuned"):
        model = keras.saving.load_model(run_dir / f"{stage}.keras", safe_mode=True)
        assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
