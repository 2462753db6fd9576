"""TrainConfig: the one configuration dataclass of a training run.

The CLI (``train`` options) and the app's Train form both fill it; it is saved as
``config.json`` in the run directory so a run can be rebuilt from that folder alone.
Defaults follow the paper (VGG16, ImageNet weights, 224×224, two stages at lr 1e-3
then 1e-4 with the last 5 base layers unfrozen), except the split, which is
patient-wise by default because image-level splits leak patients.

Each field is declared with :func:`option`: its default, its help text (units included) and, for
fields taking one of a few words, the tuple of allowed values below. These are the one definition:
``TrainConfig.validate`` checks against them, the CLI derives every ``train --field-name`` option
from the fields (type from the annotation, default, help, choices), and the app's Train page offers
the same tuples in its selectboxes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

MAGNIFICATIONS = (40, 100, 200, 400)
MAGNIFICATION_CHOICES = ("all", *(str(m) for m in MAGNIFICATIONS))
SPLIT_PROTOCOLS = ("patient", "image", "folds", "cv")
THRESHOLD_RULES = ("fixed", "youden", "sensitivity")
GROUPINGS = ("slide", "case")
NAMED_WEIGHTS = ("imagenet", "none")
"""The starting weights named by a word; any other value of ``weights`` is a path to a weights file."""
DEVICES = ("auto", "cpu", "gpu")
POOLINGS = ("avg", "flatten")
STAIN_METHODS = ("none", "macenko", "reinhard")
CACHE_MODES = ("auto", "on", "off")
STRATEGIES = ("default", "mirrored", "multiworker")
MIXED_PRECISION_MODES = ("auto", "on", "off")
KEEP_EPOCH_CHOICES = ("best_val_loss", "best_val_accuracy", "last")
RECIPES = ("auto", "paper", "scratch")
SCRATCH_UNFREEZE = 18
"""Base layers stage 2 trains in the "scratch" recipe: all 18 of VGG16."""
STAGES = ("frozen", "finetuned")
"""The training stages in the order they run: stage 1 trains the head on the frozen base, stage 2 fine-tunes.
Each names its model (``<run_id>:<stage>``, ``<stage>.keras``) and its ``history_<stage>.jsonl``."""
STAGE_LABELS = {"frozen": "frozen (stage 1)", "finetuned": "fine-tuned (stage 2)"}
"""How the app names each stage to people."""


def option(default, help: str, choices: tuple[str, ...] | None = None):
    """A TrainConfig field: ``default``, ``help`` (one sentence, units stated) and its allowed values.

    ``help`` and ``choices`` are kept in the field's metadata (``dataclasses.fields(TrainConfig)``),
    where the CLI reads them to build ``train``'s options.
    """
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    """Everything that defines a training run. Units are stated in each field's help."""

    # --- data ---
    data: str = option("", "BreakHis folder tree or a manifest CSV (path,label[,patient][,magnification])")
    magnification: str = option("all", "train on all magnifications or on one (X)", MAGNIFICATION_CHOICES)
    split: str = option("patient", "patient: grouped by patient; image: the paper's, leaky (patients on "
                        "both sides); folds: one fold of the official Folds.csv; cv: one fold of a patient-wise "
                        "K-fold cross-validation", SPLIT_PROTOCOLS)
    fold: int = option(1, "with split folds: which fold of Folds.csv (1..5); with split cv: the test fold (1..K)")
    folds_csv: str = option("", "with split folds: path of the official BreakHis Folds.csv")
    group_by: str = option("slide", "patient key of grouped splits: the slide id or the stricter numeric case",
                           GROUPINGS)
    cv_folds: int = option(5, "with split cv: K, the number of patient-wise folds (2..20)")
    train_fraction: float = option(0.7, "fraction of patients (of images, with split image) for training")
    val_fraction: float = option(0.2, "fraction of patients for validation; with split folds or cv: of the fold's "
                                      "training patients")
    test_fraction: float = option(0.1, "fraction of patients for the test split (the three fractions sum to 1)")
    mpp: float | None = option(None, "µm per pixel of the training images (default: BreakHis' own per magnification; "
                                     "needed for whole-slide prediction with manifest data)")
    # --- model ---
    weights: str = option("imagenet", "starting weights of the VGG16 base: imagenet (Keras cache), none (random: a "
                                      "frozen random base computes only random features, so recipe auto trains every "
                                      "layer) or a path to a VGG16 no-top .h5 / .weights.h5")
    input_size: int = option(224, "square input side in pixels; VGG16 needs >= 32")
    pooling: str = option("avg", "head input: global average pooling (avg) or flatten", POOLINGS)
    head_units: int = option(256, "units of the head's Dense layer")
    dropout: float = option(0.5, "dropout rate of the head, in [0, 1)")
    # --- training ---
    epochs_frozen: int = option(25, "epochs of stage 1 (whole conv base frozen)")
    epochs_finetune: int = option(20, "epochs of stage 2 (the last base layers trainable, see unfreeze)")
    lr_frozen: float = option(1e-3, "Adam learning rate of stage 1")
    lr_finetune: float = option(1e-4, "Adam learning rate of stage 2")
    unfreeze: int = option(5, "number of last VGG16 base layers trainable in stage 2 (5 = block5; 0..18)")
    batch_size: int = option(32, "training images per batch on each replica (the global batch: this × replicas)")
    augment: bool = option(True, "augment training images: flips, 90° rotations, crop/zoom, brightness/contrast "
                                 "jitter, gaussian noise")
    class_weights: bool = option(True, "weight the loss by the inverse class frequency of the training split")
    early_stopping_patience: int = option(0, "end a stage after this many epochs without improving the metric that "
                                             "chooses the kept epoch (0 = off)")
    keep_epoch: str = option("best_val_loss", "which epoch of each stage is its saved model (the last epoch without "
                                              "a validation split; cross-validation: chosen on the folds' validation "
                                              "patients pooled)", KEEP_EPOCH_CHOICES)
    recipe: str = option("auto", "paper: frozen base, then its last layers (see unfreeze; needs pretrained weights); "
                                 "scratch: stage 2 trains every base layer (what a random base needs; no feature "
                                 "caching); auto: scratch when weights is none", RECIPES)
    stain_norm: str = option("none", "stain normalisation applied in training and inference alike", STAIN_METHODS)
    cache: str = option("auto", "keep the frozen layers' outputs of augmented copies of each training image on disk, "
                                 "which trains several times faster: auto (on for CPU, off on GPU), on, off",
                        CACHE_MODES)
    cache_views: int = option(8, "augmented copies kept per training image (8 = every flip/rotation once)")
    device: str = option("auto", "device training runs on", DEVICES)
    strategy: str = option("default", "tf.distribute: default, mirrored (all local GPUs), multiworker (the hosts in "
                                      "TF_CONFIG)", STRATEGIES)
    peer_timeout_s: float = option(120.0, "multiworker: seconds a peer may stay unreachable before every worker "
                                          "stops")
    mixed_precision: str = option("auto", "auto: float16 on a GPU, bfloat16 on CPUs with bfloat16 instructions "
                                          "(AVX-512 BF16 or AMX), else float32; on: mixed precision anywhere; off: float32",
                                  MIXED_PRECISION_MODES)
    # --- operating point (chosen on validation patients after training; see calibration.py) ---
    threshold_rule: str = option("fixed", "decision threshold chosen on validation patients: fixed (P(malignant) "
                                          ">= 0.5, the paper's), youden (max sensitivity + specificity - 1) or "
                                          "sensitivity (the highest threshold whose validation sensitivity reaches the "
                                          "target sensitivity)", THRESHOLD_RULES)
    target_sensitivity: float = option(0.95, "with the sensitivity threshold rule: the validation sensitivity to reach, "
                                             "in (0, 1]")
    seed: int = option(0, "random seed of the split, the initial weights and the augmentation")

    def __post_init__(self):
        # config.json files written before mixed_precision took auto/on/off hold a bool.
        if isinstance(self.mixed_precision, bool):
            self.mixed_precision = "on" if self.mixed_precision else "off"

    def validate(self) -> "TrainConfig":
        """Check every field (first the allowed values of those with ``choices``); raise ConfigError naming the
        first bad one. Returns self."""
        for field in dataclasses.fields(self):
            allowed = field.metadata["choices"]
            if allowed and getattr(self, field.name) not in allowed:
                raise ConfigError(f"{field.name} must be one of {', '.join(allowed)}. "
                                  f"Received: {field.name}={getattr(self, field.name)}")
        if self.split == "folds" and not 1 <= self.fold <= 5:
            raise ConfigError(f"fold must be 1..5. Received: fold={self.fold}")
        if self.split == "cv" and not 2 <= self.cv_folds <= 20:
            raise ConfigError(f"cv_folds must be 2..20. Received: cv_folds={self.cv_folds}")
        if self.split == "cv" and not 1 <= self.fold <= self.cv_folds:
            raise ConfigError(f"fold must be 1..cv_folds ({self.cv_folds}). Received: fold={self.fold}")
        if not 0 < self.target_sensitivity <= 1:
            raise ConfigError(f"target_sensitivity must be in (0, 1]. Received: target_sensitivity={self.target_sensitivity}")
        fractions = (self.train_fraction, self.val_fraction, self.test_fraction)
        if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6 or self.train_fraction <= 0:
            raise ConfigError(f"split fractions must be >= 0 and sum to 1. Received: train_fraction, val_fraction, test_fraction = {fractions}")
        if self.mpp is not None and not 0.01 <= self.mpp <= 100:
            raise ConfigError(f"mpp must be between 0.01 and 100 µm per pixel. Received: mpp={self.mpp}")
        if self.input_size < 32:
            raise ConfigError(f"input_size must be >= 32 (VGG16 downsamples 32×). Received: input_size={self.input_size}")
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
