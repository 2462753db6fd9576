"""The classifier: an ImageNet backbone (``backbones.py``; VGG16 is the paper's) and a new head, and the
trainable-layer switch of its two stages.

Architecture::

    input "image" (H, W, 3) float32 RGB in [0, 255]
    → preprocessing       the backbone's, a layer inside the model (VGG16: caffe_preprocess, RGB→BGR minus the
                          ImageNet mean; see backbones.py for the others)
    → backbone            keras.applications network without its top, built on the model input, so Grad-CAM
                          finds its layer (``Backbone.gradcam_layer``, VGG16: ``block5_conv3``) by name
    → head_pool           global average pooling ("avg") or flatten
    → head_dense          Dense(head_units, relu)
    → head_bn             BatchNormalization (momentum HEAD_BN_MOMENTUM = 0.9)
    → head_dropout        Dropout(0.5)
    → predictions         Dense(K, softmax): one output per class of the task (``task.py``): malignancy
                          K = 2 (index 0 benign, 1 malignant), subtype K = 8 (the tumour types)

Preprocessing lives inside the model, so every caller feeds plain RGB and a saved
``.keras`` file is complete on its own (no separate preprocessing to forget).
"""

from __future__ import annotations

import keras
import numpy as np

from breakhis_core.config import STAGES
from breakhis_core.errors import WeightsError
from breakhis_core.models import preprocessing as _preprocessing  # noqa: F401  registers the preprocessing layers
from breakhis_core.models.backbones import DEFAULT_BACKBONE, HEAD_FIRST_LAYER, Backbone, get_backbone
from breakhis_core.models.weights import resolve_weights
from breakhis_core.task import Task, task_for_outputs

HEAD_BN_MOMENTUM = 0.9
"""Momentum of head_bn's moving mean and variance (Keras' default is 0.99). The head's inputs move
every step while the base trains (stage 2, and all of a from-scratch run); with 0.99 the moving
statistics used at inference lag far behind the batch statistics used in training, so validation
predictions swing from epoch to epoch (docs/TRAINING.md)."""


def build_model(
    input_size: int = 224,
    weights: str | None = "imagenet",
    pooling: str = "avg",
    head_units: int = 256,
    dropout: float = 0.5,
    num_classes: int = 2,
    seed: int | None = None,
    backbone: str = DEFAULT_BACKBONE,
) -> keras.Model:
    """Build the classifier (see module docstring) named ``breakhis_<backbone>``, all base layers frozen (stage "frozen").

    Args:
        input_size: square input side in pixels (>= the backbone's ``min_input_size``, 32).
        weights: "imagenet" (Keras cache, downloaded once), "none" (random init), or a local
            ``.h5`` / ``.weights.h5`` file holding the backbone's no-top weights.
        pooling: "avg" or "flatten" before the head.
        head_units: units of the head's Dense layer.
        dropout: head dropout rate.
        num_classes: the task's ``Task.n_classes``: 2 (benign, malignant) or 8 (tumour types).
        seed: seed of the head's initialisers.
        backbone: a name of ``backbones.BACKBONES`` (default "vgg16", the paper's).

    Returns:
        An uncompiled ``keras.Model`` taking ``(None, input_size, input_size, 3)`` float32 RGB
        in [0, 255] and returning ``(None, num_classes)`` softmax probabilities.

    Raises:
        ConfigError: for an unknown backbone.
        WeightsError: when the weights cannot be obtained or do not fit the backbone.
    """
    network = get_backbone(backbone)
    if input_size < network.min_input_size:
        raise ValueError(f"input_size must be >= {network.min_input_size}. Received: input_size={input_size}")
    if pooling not in ("avg", "flatten"):
        raise ValueError(f"pooling must be avg or flatten. Received: pooling={pooling}")
    weights_path = resolve_weights(weights, network)
    inputs = keras.Input((input_size, input_size, 3), name="image")
    base = network.build(inputs)
    if weights_path is not None:
        _load_base_weights(base, network, weights_path, input_size)
    x = base.output
    x = (keras.layers.GlobalAveragePooling2D if pooling == "avg" else keras.layers.Flatten)(name=HEAD_FIRST_LAYER)(x)
    init = keras.initializers.GlorotUniform(seed=seed)
    x = keras.layers.Dense(head_units, activation="relu", kernel_initializer=init, name="head_dense")(x)
    x = keras.layers.BatchNormalization(momentum=HEAD_BN_MOMENTUM, name="head_bn")(x)
    x = keras.layers.Dropout(dropout, seed=seed, name="head_dropout")(x)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", kernel_initializer=init, dtype="float32", name="predictions"
    )(x)
    model = keras.Model(inputs, outputs, name=f"breakhis_{network.name}")
    set_stage(model, "frozen", backbone=network)
    return model


def _load_base_weights(base: keras.Model, backbone: Backbone, path: str, input_size: int) -> None:
    """Load the backbone's no-top weights from ``path`` into ``base``, layer by layer in order (as Keras loads them)."""
    try:
        reference = backbone.network(weights=path, input_shape=(input_size, input_size, 3))
    except Exception as exc:
        raise WeightsError(f"weights file does not fit {backbone.label} without top ({type(exc).__name__}: {exc}). "
                           f"Received: weights={path}") from None
    targets = [layer for layer in base.layers if layer.weights]
    sources = [layer for layer in reference.layers if layer.weights]
    for target, source in zip(targets, sources, strict=True):
        target.set_weights(source.get_weights())


def model_backbone(model: keras.Model) -> Backbone:
    """The backbone of a classifier built by :func:`build_model` (from its name ``breakhis_<backbone>``)."""
    return get_backbone(model.name.removeprefix("breakhis_"))


def set_stage(model: keras.Model, stage: str, unfreeze: int = 1, backbone: Backbone | None = None) -> None:
    """Set which layers train.

    - ``"frozen"``: the whole base is frozen; only the head trains.
    - ``"finetuned"``: the last ``unfreeze`` blocks of the backbone train too (VGG16: 1 = block5, its three
      convolutions and its pooling), plus the head.

    Args:
        backbone: the model's backbone; default read from the model's name (``breakhis_<backbone>``).

    The model must be (re)compiled after this call.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be {' or '.join(STAGES)}. Received: stage={stage}")
    backbone = backbone or model_backbone(model)
    blocks = backbone.block_layers(model)
    trained = 0 if stage == "frozen" else unfreeze
    backbone.check_unfreeze(trained)
    frozen = {id(layer) for block in blocks[: len(blocks) - trained] for layer in block}
    for layer in model.layers[: model.layers.index(blocks[0][0])]:  # the input and the preprocessing
        layer.trainable = False
    for layer in model.layers[model.layers.index(blocks[0][0]):]:
        layer.trainable = id(layer) not in frozen


def trainable_layer_names(model: keras.Model) -> list[str]:
    """Names of layers that hold trainable weights."""
    return [layer.name for layer in model.layers if layer.trainable_weights]


def compile_model(model: keras.Model, learning_rate: float) -> None:
    """Compile with Adam(learning_rate), sparse categorical cross-entropy and accuracy."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def model_task(model: keras.Model) -> Task:
    """The task of a classifier, told by its output size (2 malignancy, 8 subtype).

    Raises:
        ModelFileError: when the output size fits no task.
    """
    output_shape = tuple(model.outputs[0].shape)
    return task_for_outputs(output_shape[-1], output_shape)


def check_model_io(model: keras.Model) -> int:
    """Check a loaded model takes ``(None, S, S, 3)`` images and returns the class probabilities of a task
    (2 or 8: :func:`model_task`).

    Returns:
        The input side S in pixels.

    Raises:
        ModelFileError: when the input or output shape does not fit.
    """
    from breakhis_core.errors import ModelFileError

    try:
        input_shape = tuple(model.inputs[0].shape)
        output_shape = tuple(model.outputs[0].shape)
    except (AttributeError, IndexError):
        raise ModelFileError("model has no single image input and output") from None
    if len(model.inputs) != 1 or len(input_shape) != 4 or input_shape[3] != 3 or input_shape[1] != input_shape[2] or not input_shape[1]:
        raise ModelFileError(f"model input must be (None, S, S, 3) RGB images. Received: input shape {input_shape}")
    if len(model.outputs) != 1 or len(output_shape) != 2:
        raise ModelFileError(f"model must have one output of class probabilities (None, K). Received: output shape "
                             f"{output_shape}")
    task_for_outputs(output_shape[-1], output_shape)
    return int(input_shape[1])


def predict_probabilities(model: keras.Model, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Class probabilities ``(N, K)`` float32 (K the model's outputs) for RGB images ``(N, S, S, 3)`` (uint8 or float
    in [0, 255])."""
    probabilities = []
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start : start + batch_size], dtype=np.float32)
        probabilities.append(np.asarray(model(batch, training=False)))
    return np.concatenate(probabilities) if probabilities else np.zeros((0, model.outputs[0].shape[-1]), np.float32)
