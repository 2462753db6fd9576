"""The VGG16 classifier of the paper, and the trainable-layer switch of its two stages.

Architecture (after ``keras.applications.vgg16``)::

    input (H, W, 3) float32 RGB in [0, 255]
    → caffe_preprocess    RGB→BGR, minus the ImageNet mean (103.939, 116.779, 123.68); no scaling
    → VGG16 conv base     block1_conv1 … block5_conv3, block5_pool (built on the model input,
                          so Grad-CAM finds ``block5_conv3`` by name)
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
from breakhis_core.models.weights import resolve_weights
from breakhis_core.task import Task, task_for_outputs

IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)
LAST_CONV_LAYER = "block5_conv3"
"""Default Grad-CAM layer."""
HEAD_BN_MOMENTUM = 0.9
"""Momentum of head_bn's moving mean and variance (Keras' default is 0.99). The head's inputs move
every step while the base trains (stage 2, and all of a from-scratch run); with 0.99 the moving
statistics used at inference lag far behind the batch statistics used in training, so validation
predictions swing from epoch to epoch (docs/TRAINING.md)."""


@keras.saving.register_keras_serializable(package="breakhis_core")
class CaffePreprocess(keras.layers.Layer):
    """VGG16 "caffe" preprocessing as a layer: RGB [0, 255] → BGR minus the ImageNet mean.

    Same arithmetic as ``keras.applications.vgg16.preprocess_input``, but it never
    modifies its input in place and it is saved with the model.
    """

    def call(self, inputs):
        bgr = keras.ops.flip(keras.ops.cast(inputs, self.compute_dtype), axis=-1)
        return bgr - keras.ops.convert_to_tensor(IMAGENET_MEAN_BGR, dtype=self.compute_dtype)


def build_model(
    input_size: int = 224,
    weights: str | None = "imagenet",
    pooling: str = "avg",
    head_units: int = 256,
    dropout: float = 0.5,
    num_classes: int = 2,
    seed: int | None = None,
) -> keras.Model:
    """Build the VGG16 classifier (see module docstring), all base layers frozen (stage "frozen").

    Args:
        input_size: square input side in pixels (>= 32).
        weights: "imagenet" (Keras cache, downloaded once), "none" (random init), or a local
            ``.h5`` / ``.weights.h5`` file holding VGG16 no-top weights.
        pooling: "avg" or "flatten" before the head.
        head_units: units of the head's Dense layer.
        dropout: head dropout rate.
        num_classes: the task's ``Task.n_classes``: 2 (benign, malignant) or 8 (tumour types).
        seed: seed of the head's initialisers.

    Returns:
        An uncompiled ``keras.Model`` taking ``(None, input_size, input_size, 3)`` float32 RGB
        in [0, 255] and returning ``(None, num_classes)`` softmax probabilities.

    Raises:
        WeightsError: when the weights cannot be obtained or do not fit VGG16.
    """
    if input_size < 32:
        raise ValueError(f"input_size must be >= 32. Received: input_size={input_size}")
    if pooling not in ("avg", "flatten"):
        raise ValueError(f"pooling must be avg or flatten. Received: pooling={pooling}")
    weights_path = resolve_weights(weights)
    inputs = keras.Input((input_size, input_size, 3), name="image")
    preprocessed = CaffePreprocess(name="caffe_preprocess")(inputs)
    base = keras.applications.VGG16(include_top=False, weights=None, input_tensor=preprocessed)
    if weights_path is not None:
        _load_base_weights(base, weights_path, input_size)
    x = base.output
    x = (keras.layers.GlobalAveragePooling2D if pooling == "avg" else keras.layers.Flatten)(name="head_pool")(x)
    init = keras.initializers.GlorotUniform(seed=seed)
    x = keras.layers.Dense(head_units, activation="relu", kernel_initializer=init, name="head_dense")(x)
    x = keras.layers.BatchNormalization(momentum=HEAD_BN_MOMENTUM, name="head_bn")(x)
    x = keras.layers.Dropout(dropout, seed=seed, name="head_dropout")(x)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", kernel_initializer=init, dtype="float32", name="predictions"
    )(x)
    model = keras.Model(inputs, outputs, name="breakhis_vgg16")
    set_stage(model, "frozen")
    return model


def _load_base_weights(base: keras.Model, path: str, input_size: int) -> None:
    """Load VGG16 no-top weights from ``path`` into ``base``, layer by layer by name."""
    try:
        reference = keras.applications.VGG16(include_top=False, weights=path, input_shape=(input_size, input_size, 3))
    except Exception as exc:
        raise WeightsError(f"weights file does not fit VGG16 without top ({type(exc).__name__}: {exc}). Received: weights={path}") from None
    for layer in reference.layers:
        if layer.weights:
            base.get_layer(layer.name).set_weights(layer.get_weights())


def base_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The 18 VGG16 base layers in order (block1_conv1 … block5_pool)."""
    return [layer for layer in model.layers if layer.name.startswith("block")]


def set_stage(model: keras.Model, stage: str, unfreeze: int = 5) -> None:
    """Set which layers train.

    - ``"frozen"``: the whole VGG16 base is frozen; only the head trains.
    - ``"finetuned"``: the last ``unfreeze`` base layers train too (5 = block4_pool, block5_conv1-3,
      block5_pool, i.e. the block5 convolutions carry the trainable weights), plus the head.

    The model must be (re)compiled after this call.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be {' or '.join(STAGES)}. Received: stage={stage}")
    layers = base_layers(model)
    trainable = set() if stage == "frozen" else {layer.name for layer in layers[len(layers) - unfreeze :]} if unfreeze else set()
    for layer in model.layers:
        if layer.name.startswith("block"):
            layer.trainable = layer.name in trainable
        elif layer.name in ("image", "caffe_preprocess"):
            layer.trainable = False
        else:
            layer.trainable = True


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
