"""Time estimates before training (estimate.py) and the measured times a run records."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import pytest

from breakhis_core import cli
from breakhis_core.config import TrainConfig
from breakhis_core.training.estimate import (
    base_gflops,
    convolution_gflops,
    estimate_run,
    format_duration,
    measure_speed,
)


@pytest.mark.parametrize("size", [32, 64, 224])
def test_convolution_flops_match_the_keras_vgg16_layers(size):
    """The FLOP table against the convolutions of Keras' own VGG16 at that input: 2 × H_out × W_out × 9 × C_in × C_out."""
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(size, size, 3))
    expected = {}
    for layer in base.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, channels_out = layer.output.shape
            expected[layer.name] = 2 * height * width * 9 * layer.input.shape[-1] * channels_out / 1e9
    assert convolution_gflops(size) == pytest.approx(expected)
    assert base_gflops(size, 3)[1] == pytest.approx(sum(expected[f"block5_conv{i}"] for i in (1, 2, 3)))


def test_estimate_follows_the_path_views_and_epochs():
    config = TrainConfig(data="x", input_size=224, epochs_frozen=10, epochs_finetune=5, cache_views=8)
    cached = estimate_run(config, 1000, 200, 100, True, 100.0)
    plain = estimate_run(config, 1000, 200, 100, False, 100.0)
    base, block5 = base_gflops(224, 3)
    assert cached.cache_s == pytest.approx((8 * 1000 + 200) * base / 100)
    assert plain.cache_s == 0 and plain.frozen_s > 10 * cached.frozen_s  # the plain path runs the base every epoch
    assert cached.finetuned_s == pytest.approx(5 * (1000 * 3 * block5 + 200 * block5) / (100 * 0.4) + 5 * 1.0)
    in_float32 = estimate_run(config, 1000, 200, 100, True, 100.0, evaluation_slowdown=2.0)
    assert in_float32.evaluation_s == pytest.approx(2 * cached.evaluation_s)
    fewer_views = estimate_run(TrainConfig(data="x", cache_views=2), 1000, 200, 100, True, 100.0)
    assert fewer_views.cache_s < cached.cache_s / 3
    faster = estimate_run(config, 1000, 200, 100, True, 200.0)
    assert faster.cache_s == pytest.approx(cached.cache_s / 2)
    assert cached.total_s == pytest.approx(cached.cache_s + cached.frozen_s + cached.finetuned_s + cached.evaluation_s)
    assert cached.describe().startswith(f"about {format_duration(cached.total_s)}: cache ")


def test_measured_speed_is_positive_and_plausible():
    speed = measure_speed(32)
    assert 0.05 < speed < 1e6  # GFLOP/s of any CPU or GPU


def test_run_records_its_estimate_and_measured_times(sample_dir, tmp_path, capsys):
    code = cli.main(["train", str(sample_dir), "--runs", str(tmp_path), "--weights", "none", "--recipe", "paper",
                     "--input-size", "32", "--epochs-frozen", "1", "--epochs-finetune", "1", "--batch-size", "8"])
    captured = capsys.readouterr()
    assert code == 0
    assert "time estimate: about " in captured.err
    run_dir = Path(captured.out.strip().splitlines()[-1])
    info = json.loads((run_dir / "run.json").read_text())
    estimate, timings = info["time_estimate"], info["timings"]
    assert estimate["path"] == "cached" and estimate["total_s"] > 0 and estimate["gflops_per_s"] > 0
    assert set(timings) >= {"loading_s", "cache_s", "frozen_s", "finetuned_s", "evaluation_s", "total_s"}
    assert timings["cache_s"] > 0 and timings["total_s"] >= timings["finetuned_s"] > 0
