"""How long a training run will take on this machine, said before it starts.

The estimate counts the floating-point operations of each part of a run and divides them by this machine's
measured speed (:func:`measure_speed`: a timed forward pass of the run's base on a few images, in the run's
precision). Counting (forward FLOPs per image, 2 × multiply-adds, of the base's convolutions and dense layers
read from the built network, :func:`block_gflops`; a training step costs 3 × the forward pass of the layers that
train, the backward pass being about twice the forward):

- cached path (``cache.py``): the cache passes every training view and validation image through the base once
  (``views × n_train + n_val`` forward passes); stage 1 then trains the head alone on cached features (next to
  nothing); stage 2 trains the unfrozen blocks from cached activations (``3 × those blocks`` per training image
  and epoch, ``those blocks`` per validation image; VGG16: block5 from ``block4_pool``);
- plain path: every epoch passes every image through the whole base; stage 2 adds the backward pass of the layers
  it trains;
- evaluation: both models predict the test and validation splits once.

Training steps reach about ``TRAINING_SPEED_FRACTION`` of the forward speed (small batches, the backward pass's
memory traffic; measured on 2-core CPUs), and evaluation predicts with the saved float32 models, at about half the
speed of a mixed-precision forward pass (``evaluation_slowdown``). Each epoch also saves a checkpoint (the whole
model, about 59 MB for VGG16), counted at ``CHECKPOINT_S``. The
estimate is recorded in run.json (``"time_estimate"``) beside the measured ``"timings"``, so a lab sees how close
it came; measured figures are in the README.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from functools import lru_cache

from breakhis_core.config import TrainConfig
from breakhis_core.models.backbones import get_backbone
SPEED_PIXELS = 4 * 224 * 224
"""Pixels of the timed forward pass of :func:`measure_speed`: 4 images at 224 px, more smaller ones (at most
``SPEED_BATCH``), since a pass over a few small images runs far below the speed of a training batch (at 64 px, 4
images gave 164 GFLOP/s where the cache then ran at about 700)."""
SPEED_BATCH = 32
"""The most images of the timed pass (the default training batch)."""
CHECKPOINT_S = 1.0
"""Seconds to save one epoch's checkpoint (a 59 MB ``.keras`` file) on a local disk."""
TRAINING_SPEED_FRACTION = 0.4
"""Share of the measured forward speed that training steps reach (about 0.4 for stage 2 of a 1,520-image run at
64 px on a 2-core CPU with bfloat16)."""


def layer_gflops(layer) -> float:
    """Forward GFLOPs per image of one built layer, from its output shape: a convolution 2 × H_out × W_out × kh × kw ×
    C_in / groups × C_out, a depthwise convolution 2 × H_out × W_out × kh × kw × C_out, a dense layer 2 × inputs ×
    units per position; 0 for every other layer (pooling, normalisation, activations, additions: memory-bound and
    small)."""
    import keras

    shape = layer.output.shape
    positions = 1
    for side in shape[1:-1]:
        positions *= int(side)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        height, width = layer.kernel_size
        return 2 * positions * height * width * int(shape[-1]) / 1e9
    if isinstance(layer, keras.layers.Conv2D):
        height, width = layer.kernel_size
        return 2 * positions * height * width * int(layer.input.shape[-1]) // layer.groups * int(shape[-1]) / 1e9
    if isinstance(layer, keras.layers.Dense):
        return 2 * positions * int(layer.input.shape[-1]) * layer.units / 1e9
    return 0.0


@lru_cache(maxsize=16)
def block_gflops(backbone: str, input_size: int) -> tuple[float, ...]:
    """Forward GFLOPs per image of each block of the backbone (``Backbone.blocks``, in order) at a square input of
    ``input_size`` pixels, counted on the built network (:func:`layer_gflops`)."""
    import keras

    network = get_backbone(backbone)
    base = network.build(keras.Input((input_size, input_size, 3)))
    return tuple(sum(layer_gflops(layer) for layer in block) for block in network.block_layers(base))


@dataclass(frozen=True)
class TimeEstimate:
    """Expected seconds of each part of a run on this machine.

    Attributes:
        cache_s: building the activation cache (0 on the plain path).
        frozen_s: stage 1, all its epochs.
        finetuned_s: stage 2, all its epochs.
        evaluation_s: test predictions, learning check and calibration of both models.
        gflops_per_s: the measured forward speed the estimate divides by.
        path: "cached" or "plain".
    """

    cache_s: float
    frozen_s: float
    finetuned_s: float
    evaluation_s: float
    gflops_per_s: float
    path: str

    @property
    def total_s(self) -> float:
        return self.cache_s + self.frozen_s + self.finetuned_s + self.evaluation_s

    def to_dict(self) -> dict:
        return {**asdict(self), "total_s": self.total_s}

    @classmethod
    def from_dict(cls, record: dict | None) -> "TimeEstimate | None":
        """The estimate a run recorded (run.json "time_estimate"), or None when it has none."""
        if not record:
            return None
        return cls(*(record[name] for name in ("cache_s", "frozen_s", "finetuned_s", "evaluation_s", "gflops_per_s",
                                               "path")))

    def describe(self) -> str:
        """One line for people, e.g. "about 12 min: cache 4 min, stage 1 1 min, stage 2 6 min, evaluation 1 min"."""
        parts = [("cache", self.cache_s)] if self.path == "cached" else []
        parts += [("stage 1", self.frozen_s), ("stage 2", self.finetuned_s), ("evaluation", self.evaluation_s)]
        return (f"about {format_duration(self.total_s)}: " + ", ".join(f"{n} {format_duration(s)}" for n, s in parts)
                + f" ({self.path} path, {self.gflops_per_s:.0f} GFLOP/s measured here)")


def format_duration(seconds: float) -> str:
    """"45 s", "12 min", "2.5 h"."""
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@lru_cache(maxsize=8)
def measure_speed(backbone: str, input_size: int, policy: str = "float32") -> float:
    """Forward GFLOP/s of the backbone's base on this machine: ``SPEED_PIXELS`` worth of random images at
    ``input_size`` pixels (4 to ``SPEED_BATCH`` images), timed on the second call (the first builds the graph), in
    the Keras dtype ``policy``. Measured once per process and setting (the folds of a cross-validation share it)."""
    import keras
    import numpy as np

    from breakhis_core.runtime import precision_policy

    count = int(min(SPEED_BATCH, max(4, SPEED_PIXELS // (input_size * input_size))))
    with precision_policy(policy):
        base = get_backbone(backbone).build(keras.Input((input_size, input_size, 3)))
        images = np.random.default_rng(0).uniform(0, 255, (count, input_size, input_size, 3)).astype(np.float32)
        base(images, training=False)
        started = time.perf_counter()
        base(images, training=False)
        seconds = time.perf_counter() - started
    return count * sum(block_gflops(backbone, input_size)) / max(seconds, 1e-6)


def estimate_run(config: TrainConfig, n_train: int, n_val: int, n_test: int, cached: bool,
                 gflops_per_s: float, evaluation_slowdown: float = 1.0) -> TimeEstimate:
    """Seconds each part of ``config``'s run should take for these split sizes (images) at ``gflops_per_s`` (the
    measured forward speed in the training precision); evaluation runs ``evaluation_slowdown`` times slower (2 when
    training in mixed precision: the saved models predict in float32)."""
    blocks = block_gflops(config.backbone, config.input_size)
    base, trainable = sum(blocks), sum(blocks[len(blocks) - config.stage2_unfreeze:])
    views = config.cache_views if config.augment else 1
    if cached:
        cache = (views * n_train + n_val) * base
        frozen = 0.0
        finetuned = config.epochs_finetune * (n_train * 3 * trainable + n_val * trainable)
    else:
        cache = 0.0
        frozen = config.epochs_frozen * (n_train + n_val) * base
        finetuned = config.epochs_finetune * (n_train * (base + 2 * trainable) + n_val * base)
    evaluation = 2 * (n_test + n_val) * base * 2
    speed = max(gflops_per_s, 1e-3)
    training = speed * TRAINING_SPEED_FRACTION
    return TimeEstimate(cache / speed, frozen / training + CHECKPOINT_S * config.epochs_frozen,
                        finetuned / training + CHECKPOINT_S * config.epochs_finetune,
                        evaluation * evaluation_slowdown / speed, gflops_per_s, "cached" if cached else "plain")

