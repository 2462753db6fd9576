"""TrainConfig: the one configuration dataclass of a training run.

The CLI (``train`` options) and the app's Train form both fill it; it is saved as
``config.json`` in the run directory so a run can be rebuilt from that folder alone.
Defaults follow the paper (VGG16, ImageNet weights, 224×224, two stages at lr 1e-3
then 1e-4 with the last 5 base layers unfrozen), except the split, which is
patient-wise by default because image-level splits leak patients.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

MAGNIFICATIONS = (40, 100, 200, 400)
SPLIT_PROTOCOLS = ("patient", "image", "folds")
GROUPINGS = ("slide", "case")
DEVICES = ("auto", "cpu", "gpu")
POOLINGS = ("avg", "flatten")
STAIN_METHODS = ("none", "macenko", "reinhard")
CACHE_MODES = ("auto", "on", "off")
STRATEGIES = ("default", "mirrored", "multiworker")
MIXED_PRECISION_MODES = ("auto", "on", "off")


@dataclass
class TrainConfig:
    """Everything that defines a training run. Units are stated per field."""

    # --- data ---
    data: str = ""  # BreakHis folder tree or a manifest CSV (path,label[,patient][,magnification])
    magnification: str = "all"  # "all" or one of "40", "100", "200", "400"
    split: str = "patient"  # "patient" (grouped, default), "image" (paper, leaky) or "folds" (official Folds.csv)
    fold: int = 1  # with split="folds": which fold of Folds.csv (1..5)
    folds_csv: str = ""  # with split="folds": path of the official Folds.csv
    group_by: str = "slide"  # patient key for grouped splits: "slide" id or the stricter numeric "case"
    train_fraction: float = 0.7  # of patients (or images, for split="image")
    val_fraction: float = 0.2
    test_fraction: float = 0.1
    mpp: float | None = None  # µm per pixel of the training images; None: from the BreakHis magnification (pixelsize.py)
    # --- model ---
    weights: str = "imagenet"  # "imagenet" (Keras cache), "none" (random init) or a path to .h5 / .weights.h5
    input_size: int = 224  # square input side in pixels; VGG16 needs >= 32
    pooling: str = "avg"  # head input: global average pooling ("avg") or "flatten"
    head_units: int = 256  # units of the head's Dense layer
    dropout: float = 0.5  # dropout rate of the head
    # --- training ---
    epochs_frozen: int = 25  # stage 1: whole conv base frozen
    epochs_finetune: int = 20  # stage 2: last `unfreeze` base layers trainable
    lr_frozen: float = 1e-3  # Adam learning rate of stage 1
    lr_finetune: float = 1e-4  # Adam learning rate of stage 2
    unfreeze: int = 5  # number of last VGG16 base layers trainable in stage 2 (5 = block5)
    batch_size: int = 32
    augment: bool = True  # flips, 90° rotations, crop/zoom, brightness/contrast jitter, gaussian noise
    class_weights: bool = True  # weight the loss by inverse class frequency of the training split
    early_stopping_patience: int = 0  # epochs without val_loss improvement before stopping; 0 = off
    stain_norm: str = "none"  # stain normalisation applied in training and inference alike
    cache: str = "auto"  # frozen-prefix activation caching (see cache.py): "auto" (on for CPU, off on GPU), "on", "off"
    cache_views: int = 8  # augmented views cached per training image (8 = every flip/rotation once; see cache.py)
    device: str = "auto"  # "auto", "cpu" or "gpu"
    strategy: str = "default"  # tf.distribute: "default", "mirrored" (all local GPUs), "multiworker" (TF_CONFIG)
    mixed_precision: str = "auto"  # mixed_float16: "auto" (on when training on GPU), "on", "off"
    seed: int = 0

    def __post_init__(self):
        # config.json files written before mixed_precision took auto/on/off hold a bool.
        if isinstance(self.mixed_precision, bool):
            self.mixed_precision = "on" if self.mixed_precision else "off"

    def validate(self) -> "TrainConfig":
        """Check every field; raise ConfigError naming the first bad one. Returns self."""
        if self.magnification != "all" and self.magnification not in {str(m) for m in MAGNIFICATIONS}:
            raise ConfigError(f"magnification must be all, 40, 100, 200 or 400. Received: magnification={self.magnification}")
        if self.split not in SPLIT_PROTOCOLS:
            raise ConfigError(f"split must be one of {', '.join(SPLIT_PROTOCOLS)}. Received: split={self.split}")
        if self.split == "folds" and not 1 <= self.fold <= 5:
            raise ConfigError(f"fold must be 1..5. Received: fold={self.fold}")
        if self.group_by not in GROUPINGS:
            raise ConfigError(f"group_by must be slide or case. Received: group_by={self.group_by}")
        fractions = (self.train_fraction, self.val_fraction, self.test_fraction)
        if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6 or self.train_fraction <= 0:
            raise ConfigError(f"split fractions must be >= 0 and sum to 1. Received: train_fraction, val_fraction, test_fraction = {fractions}")
        if self.mpp is not None and not 0.01 <= self.mpp <= 100:
            raise ConfigError(f"mpp must be between 0.01 and 100 µm per pixel. Received: mpp={self.mpp}")
        if self.input_size < 32:
            raise ConfigError(f"input_size must be >= 32 (VGG16 downsamples 32×). Received: input_size={self.input_size}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be avg or flatten. Received: pooling={self.pooling}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1). Received: dropout={self.dropout}")
        for name in ("epochs_frozen", "epochs_finetune"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0. Received: {name}={getattr(self, name)}")
        for name in ("lr_frozen", "lr_finetune"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0. Received: {name}={getattr(self, name)}")
        if not 0 <= self.unfreeze <= 18:
            raise ConfigError(f"unfreeze must be 0..18 (VGG16 has 18 base layers). Received: unfreeze={self.unfreeze}")
        if self.early_stopping_patience < 0:
            raise ConfigError(f"early_stopping_patience must be >= 0 (0 = off). Received: early_stopping_patience={self.early_stopping_patience}")
        if self.batch_size < 1 or self.head_units < 1 or self.cache_views < 1:
            raise ConfigError(
                f"batch_size, head_units and cache_views must be >= 1. Received: batch_size={self.batch_size}, "
                f"head_units={self.head_units}, cache_views={self.cache_views}"
            )
        for name, allowed in (("device", DEVICES), ("stain_norm", STAIN_METHODS), ("cache", CACHE_MODES),
                              ("strategy", STRATEGIES), ("mixed_precision", MIXED_PRECISION_MODES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}. Received: {name}={getattr(self, name)}")
        return self

    @property
    def magnification_filter(self) -> int | None:
        """The magnification as an int, or None for all."""
        return None if self.magnification == "all" else int(self.magnification)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Build from a dict; unknown keys raise ConfigError (a typo must not pass silently)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**values)

    def save(self, path: str | Path) -> None:
        from .files import write_json_atomic

        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))
