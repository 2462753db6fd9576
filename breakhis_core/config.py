"""TrainConfig: the one configuration dataclass of a training run.

The CLI (``train`` options) and the app's Train form both fill it; it is saved as
``config.json`` in the run directory so a run can be rebuilt from that folder alone.
Defaults follow the paper (VGG16, ImageNet weights, 224×224, two stages at lr 1e-3
then 1e-4 with VGG16's last block, block5, unfrozen), except the split, which is
patient-wise by default because image-level splits leak patients.

``unfreeze`` counts blocks of the backbone (``models/backbones.py``). A config.json written before backbones
existed has no ``backbone`` key and counts VGG16 base layers there; :meth:`TrainConfig.from_dict` reads it as
VGG16 and maps its count to blocks with ``backbones.legacy_unfreeze_blocks`` (the blocks with at least one
convolution among those layers: 5 layers → 1 block, block5).

Each field is declared with :func:`option`: its default, its help text (units included), for fields
taking one of a few words the tuple of allowed values below, for numbers their :class:`Bounds`, and the
Train form's label. These are the one definition: ``TrainConfig.validate`` checks against them, the CLI
derives every ``train --field-name`` option from the fields (type from the annotation, default, help,
choices), and the app's Train page builds its widgets from them (label, help, bounds, default, choices).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from breakhis_core.errors import ConfigError
from breakhis_core.task import TASK_NAMES
from breakhis_core.models.backbones import BACKBONE_NAMES, DEFAULT_BACKBONE, get_backbone, legacy_unfreeze_blocks

MAGNIFICATIONS = (40, 100, 200, 400)
MAGNIFICATION_CHOICES = ("all", *(str(m) for m in MAGNIFICATIONS))
SPLIT_PROTOCOLS = ("patient", "image", "folds", "cv")
THRESHOLD_RULES = ("fixed", "youden", "sensitivity")
DEFAULT_THRESHOLD = 0.5
"""The decision threshold on P(malignant) when none was fitted (rule "fixed", the paper's; a run without
calibration.json, an uncalibrated model): an image at or above it is called malignant."""
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
STAGES = ("frozen", "finetuned")
"""The training stages in the order they run: stage 1 trains the head on the frozen base, stage 2 fine-tunes.
Each names its model (``<run_id>:<stage>``, ``<stage>.keras``) and its ``history_<stage>.jsonl``."""
STAGE_LABELS = {"frozen": "frozen (stage 1)", "finetuned": "fine-tuned (stage 2)"}
"""How the app names each stage to people."""


OFFICIAL_FOLDS = 5
"""Folds of the official BreakHis Folds.csv (``split="folds"``: ``fold`` is 1..5)."""


@dataclass(frozen=True)
class Bounds:
    """The allowed range of a numeric TrainConfig field, read by ``TrainConfig.validate`` and the Train form.

    Attributes:
        low, high: the ends (None: unbounded), in the field's unit; inclusive unless ``low_open`` / ``high_open``.
        step: the form's step (None: the widget's own).
        note: why, or the unit, appended to the error message ("VGG16 has 18 base layers", "µm per pixel").
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    step: float | None = None
    note: str = ""

    def contains(self, value) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        """The range in words: "between 0 and 18" (both ends included), "in [0, 1)", ">= 1", "> 0"."""
        if self.low is not None and self.high is not None:
            if not (self.low_open or self.high_open):
                return f"between {self.low:g} and {self.high:g}"
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}"

    def check(self, name: str, value) -> None:
        """Raise ConfigError naming ``name``, its range and ``value`` when it lies outside."""
        if not self.contains(value):
            note = f" ({self.note})" if self.note else ""
            raise ConfigError(f"{name} must be {self.describe()}{note}. Received: {name}={value}")


def option(default, help: str, choices: tuple[str, ...] | None = None, *, bounds: Bounds | None = None,
           label: str | None = None):
    """A TrainConfig field: ``default``, ``help`` (one sentence, units stated), its allowed values (``choices``
    for words, ``bounds`` for numbers) and the Train form's ``label``.

    They are kept in the field's metadata (``dataclasses.fields(TrainConfig)``, :func:`config_field`), where the
    CLI reads them to build ``train``'s options and the Train page its widgets.
    """
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "bounds": bounds,
                                                        "label": label})


def config_field(name: str) -> dataclasses.Field:
    """The TrainConfig field ``name``; its ``metadata`` holds "help", "choices", "bounds" and "label"."""
    return next(f for f in dataclasses.fields(TrainConfig) if f.name == name)


@dataclass
class TrainConfig:
    """Everything that defines a training run. Units are stated in each field's help."""

    # --- data ---
    data: str = option("", "BreakHis folder tree or a manifest CSV (path,label[,patient][,magnification][,tumour_type])")
    magnification: str = option("all", "train on all magnifications or on one (X)", MAGNIFICATION_CHOICES,
                                label="Magnification")
    split: str = option("patient", "patient: grouped by patient; image: the paper's, leaky (patients on "
                        "both sides); folds: one fold of the official Folds.csv; cv: one fold of a patient-wise "
                        "K-fold cross-validation", SPLIT_PROTOCOLS,
                        label="Split protocol")
    fold: int = option(1, "with split folds: which fold of Folds.csv (1..5); with split cv: the test fold (1..K)",
                       bounds=Bounds(1), label="Fold")
    folds_csv: str = option("", "with split folds: path of the official BreakHis Folds.csv")
    group_by: str = option("slide", "patient key of grouped splits: the slide id or the stricter numeric case",
                           GROUPINGS,
                           label="Patient key")
    cv_folds: int = option(5, "with split cv: K, the number of patient-wise folds (2..20)",
                           bounds=Bounds(2, 20), label="Folds K (cross-validation)")
    train_fraction: float = option(0.7, "fraction of patients (of images, with split image) for training",
                                   bounds=Bounds(0, 1, low_open=True, step=0.05), label="Train fraction")
    val_fraction: float = option(0.2, "fraction of patients for validation; with split folds or cv: of the fold's "
                                      "training patients",
                                 bounds=Bounds(0, 1, step=0.05), label="Validation fraction")
    test_fraction: float = option(0.1, "fraction of patients for the test split (the three fractions sum to 1)",
                                  bounds=Bounds(0, 1, step=0.05), label="Test fraction")
    mpp: float | None = option(None, "µm per pixel of the training images (default: BreakHis' own per magnification; "
                                     "needed for whole-slide prediction with manifest data)",
                               bounds=Bounds(0.01, 100, note="µm per pixel"))
    # --- model ---
    task: str = option("malignancy", "what the model tells apart: malignancy (benign or malignant, the paper's) or "
                                     "subtype (the 8 BreakHis tumour types; P(malignant) is the sum of the 4 malignant "
                                     "types)", TASK_NAMES, label="Task")
    backbone: str = option(DEFAULT_BACKBONE, "ImageNet network the classifier stands on (vgg16: the paper's)",
                           BACKBONE_NAMES, label="Backbone")
    weights: str = option("imagenet", "starting weights of the base: imagenet (Keras cache), none (random: a "
                                      "frozen random base computes only random features, so recipe auto trains every "
                                      "layer) or a path to the backbone's no-top .h5 / .weights.h5")
    input_size: int = option(224, "square input side in pixels (>= 32)",
                             bounds=Bounds(32, step=32, note="every backbone downsamples 32×"), label="Input size (px)")
    pooling: str = option("avg", "head input: global average pooling (avg) or flatten", POOLINGS,
                          label="Head pooling")
    head_units: int = option(256, "units of the head's Dense layer",
                             bounds=Bounds(1), label="Head units")
    dropout: float = option(0.5, "dropout rate of the head, in [0, 1)",
                            bounds=Bounds(0, 1, high_open=True, step=0.05), label="Dropout")
    # --- training ---
    epochs_frozen: int = option(25, "epochs of stage 1 (whole conv base frozen)",
                                bounds=Bounds(0), label="Epochs, stage 1 (frozen base)")
    epochs_finetune: int = option(20, "epochs of stage 2 (the last base layers trainable, see unfreeze)",
                                  bounds=Bounds(0), label="Epochs, stage 2 (fine-tuning)")
    lr_frozen: float = option(1e-3, "Adam learning rate of stage 1",
                              bounds=Bounds(0, low_open=True, step=1e-4), label="Learning rate, stage 1")
    lr_finetune: float = option(1e-4, "Adam learning rate of stage 2",
                                bounds=Bounds(0, low_open=True, step=1e-5), label="Learning rate, stage 2")
    unfreeze: int = option(1, "number of last blocks of the backbone trainable in stage 2 (VGG16: 1 = block5, "
                              "0..5; the upper bound is the backbone's block count)",
                           bounds=Bounds(0), label="Blocks unfrozen in stage 2")
    batch_size: int = option(32, "training images per batch on each replica (the global batch: this × replicas)",
                             bounds=Bounds(1), label="Batch size")
    augment: bool = option(True, "augment training images: flips, 90° rotations, crop/zoom, brightness/contrast "
                                 "jitter, gaussian noise",
                           label="Augmentation")
    class_weights: bool = option(True, "weight the loss by the inverse class frequency of the training split",
                                 label="Class-weighted loss")
    early_stopping_patience: int = option(0, "end a stage after this many epochs without improving the metric that "
                                             "chooses the kept epoch (0 = off)",
                                          bounds=Bounds(0, note="0 = off"),
                                          label="Early stopping patience (0 = off)")
    keep_epoch: str = option("best_val_loss", "which epoch of each stage is its saved model (the last epoch without "
                                              "a validation split; cross-validation: chosen on the folds' validation "
                                              "patients pooled)", KEEP_EPOCH_CHOICES,
                             label="Model kept from each stage")
    recipe: str = option("auto", "paper: frozen base, then its last layers (see unfreeze; needs pretrained weights); "
                                 "scratch: stage 2 trains every base layer (what a random base needs; no feature "
                                 "caching); auto: scratch when weights is none", RECIPES,
                         label="Recipe")
    stain_norm: str = option("none", "stain normalisation applied in training and inference alike", STAIN_METHODS,
                             label="Stain normalisation")
    cache: str = option("auto", "keep the frozen layers' outputs of augmented copies of each training image on disk, "
                                 "which trains several times faster: auto (on for CPU, off on GPU), on, off",
                        CACHE_MODES,
                        label="Feature caching")
    cache_views: int = option(8, "augmented copies kept per training image (8 = every flip/rotation once)",
                              bounds=Bounds(1), label="Cached views per image")
    device: str = option("auto", "device training runs on", DEVICES,
                         label="Device")
    strategy: str = option("default", "tf.distribute: default, mirrored (all local GPUs), multiworker (the hosts in "
                                      "TF_CONFIG)", STRATEGIES)
    peer_timeout_s: float = option(120.0, "multiworker: seconds a peer may stay unreachable before every worker "
                                          "stops",
                                   bounds=Bounds(0, low_open=True, note="seconds"))
    mixed_precision: str = option("auto", "auto: float16 on a GPU, bfloat16 on CPUs with bfloat16 instructions "
                                          "(AVX-512 BF16 or AMX), else float32; on: mixed precision anywhere; off: float32",
                                  MIXED_PRECISION_MODES,
                                  label="Mixed precision")
    # --- operating point (chosen on validation patients after training; see calibration.py) ---
    threshold_rule: str = option("fixed", "decision threshold chosen on validation patients: fixed (P(malignant) "
                                          f">= {DEFAULT_THRESHOLD:g}, the paper's), youden (max sensitivity + specificity - 1) or "
                                          "sensitivity (the highest threshold whose validation sensitivity reaches the "
                                          "target sensitivity)", THRESHOLD_RULES,
                                 label="Decision threshold")
    target_sensitivity: float = option(0.95, "with the sensitivity threshold rule: the validation sensitivity to reach, "
                                             "in (0, 1]",
                                       bounds=Bounds(0, 1, low_open=True, step=0.01),
                                       label="X: target sensitivity")
    seed: int = option(0, "random seed of the split, the initial weights and the augmentation",
                       bounds=Bounds(0, 2**31 - 1), label="Seed")

    def __post_init__(self):
        # config.json files written before mixed_precision took auto/on/off hold a bool.
        if isinstance(self.mixed_precision, bool):
            self.mixed_precision = "on" if self.mixed_precision else "off"

    def validate(self) -> "TrainConfig":
        """Check every field (the allowed values of those with ``choices``, then the ranges of those with
        ``bounds``, then the checks across fields); raise ConfigError naming the first bad one. Returns self.

        ``unfreeze``'s upper bound is the backbone's block count (``Backbone.check_unfreeze``), the one bound that
        depends on another field."""
        for field in dataclasses.fields(self):
            allowed = field.metadata["choices"]
            if allowed and getattr(self, field.name) not in allowed:
                raise ConfigError(f"{field.name} must be one of {', '.join(allowed)}. "
                                  f"Received: {field.name}={getattr(self, field.name)}")
        for field in dataclasses.fields(self):
            bounds, value = field.metadata["bounds"], getattr(self, field.name)
            if bounds is not None and value is not None:
                bounds.check(field.name, value)
        if self.split == "folds" and not 1 <= self.fold <= OFFICIAL_FOLDS:
            raise ConfigError(f"fold must be 1..{OFFICIAL_FOLDS}. Received: fold={self.fold}")
        if self.split == "cv" and not 1 <= self.fold <= self.cv_folds:
            raise ConfigError(f"fold must be 1..cv_folds ({self.cv_folds}). Received: fold={self.fold}")
        fractions = (self.train_fraction, self.val_fraction, self.test_fraction)
        if abs(sum(fractions) - 1.0) > 1e-6:
            raise ConfigError(f"split fractions must be >= 0 and sum to 1. Received: train_fraction, val_fraction, test_fraction = {fractions}")
        get_backbone(self.backbone).check_unfreeze(self.unfreeze)
        if self.cache == "on" and self.stage2_trains_whole_base:
            backbone = get_backbone(self.backbone)
            raise ConfigError(f"cache=on needs a frozen part of the base in stage 2, but stage 2 trains all "
                              f"{len(backbone.blocks)} blocks of {backbone.label} (recipe {self.resolved_recipe}). "
                              f"Received: cache=on, unfreeze={self.unfreeze}, recipe={self.recipe}, weights={self.weights}")
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
        """Blocks of the backbone trainable in stage 2: ``unfreeze`` (paper), all of them (scratch)."""
        return len(get_backbone(self.backbone).blocks) if self.resolved_recipe == "scratch" else self.unfreeze

    @property
    def stage2_trains_whole_base(self) -> bool:
        """Whether stage 2 trains every block (then no frozen prefix exists to cache)."""
        return self.stage2_unfreeze >= len(get_backbone(self.backbone).blocks)

    @property
    def magnification_filter(self) -> int | None:
        """The magnification as an int, or None for all."""
        return None if self.magnification == "all" else int(self.magnification)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Build from a dict; unknown keys raise ConfigError (a typo must not pass silently).

        A dict without ``backbone`` is a config.json from before backbones: VGG16, with ``unfreeze`` in base layers,
        mapped to blocks (``backbones.legacy_unfreeze_blocks``, see the module docstring).
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
        if "backbone" not in values and "unfreeze" in values:
            values = {**values, "unfreeze": legacy_unfreeze_blocks(values["unfreeze"])}
        return cls(**values)

    def save(self, path: str | Path) -> None:
        from breakhis_core.files import write_json_atomic

        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))
