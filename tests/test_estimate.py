"""Time estimates before training (estimate.py) and the measured times a run records."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import pytest

from breakhis_core import cli
from breakhis_core.config import TrainConfig
from breakhis_core.models.backbones import BACKBONE_NAMES
from breakhis_core.training.estimate import block_gflops, estimate_run, format_duration, measure_speed

VGG16_CONVOLUTIONS = {
    "block1": ((1, 3, 64), (1, 64, 64)), "block2": ((2, 64, 128), (2, 128, 128)),
    "block3": ((4, 128, 256), (4, 256, 256), (4, 256, 256)), "block4": ((8, 256, 512), (8, 512, 512), (8, 512, 512)),
    "block5": ((16, 512, 512), (16, 512, 512), (16, 512, 512)),
}
"""VGG16's 3×3 convolutions per block: (downsampling of the input, input channels, output channels) (Simonyan &
Zisserman, 2015, table 1)."""


@pytest.mark.parametrize("size", [32, 64, 224])
def test_vgg16_flops_match_its_published_convolutions(size):
    """VGG16's FLOPs counted from the built layers equal 2 × H_out × W_out × 9 × C_in × C_out over its 13 convolutions
    (30.7 GFLOPs at 224 px, the figure of the estimate's former constant table)."""
    expected = [sum(2 * (size // factor) ** 2 * 9 * cin * cout / 1e9 for factor, cin, cout in convolutions)
                for convolutions in VGG16_CONVOLUTIONS.values()]
    assert block_gflops("vgg16", size) == pytest.approx(expected, rel=1e-9)
    if size == 224:
        assert sum(block_gflops("vgg16", size)) == pytest.approx(30.69, rel=1e-3)


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
def test_every_backbone_has_flops_in_every_block_growing_with_the_input(backbone):
    small, large = block_gflops(backbone, 64), block_gflops(backbone, 128)
    assert all(value > 0 for value in small)
    assert sum(large) == pytest.approx(4 * sum(small), rel=0.1)  # convolutions scale with the pixels


def test_a_depthwise_convolution_counts_its_channels_once():
    """EfficientNet's depthwise convolutions: 2 × H_out × W_out × kh × kw × C (no C_in × C_out product)."""
    from breakhis_core.training.estimate import layer_gflops

    inputs = keras.Input((16, 16, 8))
    depthwise = keras.layers.DepthwiseConv2D(3, padding="same")
    grouped = keras.layers.Conv2D(8, 3, padding="same", groups=4)
    depthwise(inputs), grouped(inputs)
    assert layer_gflops(depthwise) == pytest.approx(2 * 16 * 16 * 9 * 8 / 1e9)
    assert layer_gflops(grouped) == pytest.approx(2 * 16 * 16 * 9 * 2 * 8 / 1e9)


def test_estimate_follows_the_path_views_and_epochs():
    config = TrainConfig(data="x", input_size=224, epochs_frozen=10, epochs_finetune=5, cache_views=8)
    cached = estimate_run(config, 1000, 200, 100, True, 100.0)
    plain = estimate_run(config, 1000, 200, 100, False, 100.0)
    blocks = block_gflops("vgg16", 224)
    base, block5 = sum(blocks), blocks[-1]
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
    speed = measure_speed("vgg16", 32)
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
