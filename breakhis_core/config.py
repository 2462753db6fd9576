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
from .runtime import PRECISION_MODES as MIXED_PRECISION_MODES

MAGNIFICATIONS = (40, 100, 200, 400)
SPLIT_PROTOCOLS = ("patient", "image", "folds", "cv")
THRESHOLD_RULES = ("fixed", "youden", "sensitivity")
GROUPINGS = ("slide", "case")
DEVICES = ("auto", "cpu", "gpu")
POOLINGS = ("avg", "flatten")
STAIN_METHODS = ("none", "macenko", "reinhard")
CACHE_MODES = ("auto", "on", "off")
STRATEGIES = ("default", "mirrored", "multiworker")
KEEP_EPOCH_CHOICES = ("best_val_loss", "best_val_accuracy", "last")
RECIPES = ("auto", "paper", "scratch")
SCRATCH_UNFREEZE = 18
"""Base layers stage 2 trains in the "scratch" recipe: all 18 of VGG16."""


@dataclass
class TrainConfig:
    """Everything that defines a training run. Units are stated per field."""

    # --- data ---
    data: str = ""  # BreakHis folder tree or a manifest CSV (path,label[,patient][,magnification])
    magnification: str = "all"  # "all" or one of "40", "100", "200", "400"
    split: str = "patient"  # "patient" (grouped, default), "image" (paper, leaky), "folds" (official Folds.csv)
    # or "cv" (fold `fold` of a patient-wise K-fold cross-validation, see crossval.py)
    fold: int = 1  # with split="folds": which fold of Folds.csv (1..5); with split="cv": the test fold (1..cv_folds)
    folds_csv: str = ""  # with split="folds": path of the official Folds.csv
    group_by: str = "slide"  # patient key for grouped splits: "slide" id or the stricter numeric "case"
    cv_folds: int = 5  # with split="cv": K, the number of patient-wise folds (2..20)
    train_fraction: float = 0.7  # of patients (or images, for split="image")
    val_fraction: float = 0.2  # of patients; with split="folds" or "cv": of the fold's training patients
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
    early_stopping_patience: int = 0  # epochs without improvement of the keep_epoch metric before stopping; 0 = off
    keep_epoch: str = "best_val_loss"  # which epoch of each stage is deployed: "best_val_loss", "best_val_accuracy", "last"
    recipe: str = "auto"  # "paper" (stage 2 trains the last `unfreeze` base layers), "scratch" (stage 2 trains
    #                       every base layer: what a random base needs), "auto" (scratch when weights="none")
    stain_norm: str = "none"  # stain normalisation applied in training and inference alike
    cache: str = "auto"  # frozen-prefix activation caching (see cache.py): "auto" (on for CPU, off on GPU), "on", "off"
    cache_views: int = 8  # augmented views cached per training image (8 = every flip/rotation once; see cache.py)
    device: str = "auto"  # "auto", "cpu" or "gpu"
    strategy: str = "default"  # tf.distribute: "default", "mirrored" (all local GPUs), "multiworker" (TF_CONFIG)
    peer_timeout_s: float = 120.0  # multiworker: seconds a peer may stay unreachable before every worker stops
    mixed_precision: str = "auto"  # "auto": float16 on GPU, bfloat16 on CPUs with bf16 instructions; "on", "off" (runtime.py)
    # --- operating point (chosen on validation patients after training; see calibration.py) ---
    threshold_rule: str = "fixed"  # "fixed" (P(malignant) >= 0.5, the paper's), "youden" (max sens + spec - 1)
    # or "sensitivity" (the highest threshold whose validation sensitivity >= target_sensitivity)
    target_sensitivity: float = 0.95  # with threshold_rule="sensitivity": fraction in (0, 1]
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
        if self.split == "cv" and not 2 <= self.cv_folds <= 20:
            raise ConfigError(f"cv_folds must be 2..20. Received: cv_folds={self.cv_folds}")
        if self.split == "cv" and not 1 <= self.fold <= self.cv_folds:
            raise ConfigError(f"fold must be 1..cv_folds ({self.cv_folds}). Received: fold={self.fold}")
        if self.threshold_rule not in THRESHOLD_RULES:
            raise ConfigError(f"threshold_rule must be one of {', '.join(THRESHOLD_RULES)}. "
                              f"Received: threshold_rule={self.threshold_rule}")
        if not 0 < self.target_sensitivity <= 1:
            raise ConfigError(f"target_sensitivity must be in (0, 1]. Received: target_sensitivity={self.target_sensitivity}")
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
        if not self.peer_timeout_s > 0:
            raise ConfigError(f"peer_timeout_s must be > 0 seconds. Received: peer_timeout_s={self.peer_timeout_s}")
        if self.early_stopping_patience < 0:
            raise ConfigError(f"early_stopping_patience must be >= 0 (0 = off). Received: early_stopping_patience={self.early_stopping_patience}")
        if self.batch_size < 1 or self.head_units < 1 or self.cache_views < 1:
            raise ConfigError(
                f"batch_size, head_units and cache_views must be >= 1. Received: batch_size={self.batch_size}, "
                f"head_units={self.head_units}, cache_views={self.cache_views}"
            )
        for name, allowed in (("device", DEVICES), ("stain_norm", STAIN_METHODS), ("cache", CACHE_MODES),
                              ("strategy", STRATEGIES), ("mixed_precision", MIXED_PRECISION_MODES),
                              ("keep_epoch", KEEP_EPOCH_CHOICES), ("recipe", RECIPES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}. Received: {name}={getattr(self, name)}")
        if self.cache == "on" and self.stage2_unfreeze >= SCRATCH_UNFREEZE:
            raise ConfigError("cache=on needs a frozen part of the base in stage 2, but stage 2 trains all 18 base "
                              f"layers (recipe {self.resolved_recipe}). Received: cache=on, unfreeze={self.unfreeze}, "
                              f"recipe={self.recipe}, weights={self.weights}")
        return self

    @property
    def resolved_recipe(self) -> str:
        """The recipe that runs: "scratch" or "paper" ("auto" is scratch with random initial weights).

        With ``weights="none"`` the frozen base of the paper's recipe computes random features, so
        stage 1 only fits a head on noise-like features and stage 2 (block5 only) cannot repair
        blocks 1-4; the scratch recipe trains every base layer in stage 2.
        """
        if self.recipe == "auto":
            return "scratch" if self.weights in ("", "none", "None") else "paper"
        return self.recipe

    @property
    def stage2_unfreeze(self) -> int:
        """Base layers trainable in stage 2: ``unfreeze`` (paper), all 18 (scratch)."""
        return SCRATCH_UNFREEZE if self.resolved_recipe == "scratch" else self.unfreeze

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
