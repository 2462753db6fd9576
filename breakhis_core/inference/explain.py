"""Class activation maps (Grad-CAM, Grad-CAM++, Score-CAM) and their overlays.

Every map explains one class of the 2-class softmax (0 benign, 1 malignant) on one
spatial layer (by default the backbone's Grad-CAM layer, ``backbones.find_gradcam_layer``; VGG16:
``block5_conv3``) and is scored on the pre-softmax logit,
as the methods prescribe. Maps come back at the original image's own size and aspect
ratio (a 700×460 image gives a ``(460, 700)`` map), float32 in [0, 1] (divided by their
maximum; an all-zero map stays zero).

Cost (one :class:`Explainer` per model and layer, built once and cached):

- Grad-CAM is computed directly in one compiled pass (fixed input signature, traced once):
  the same forward pass yields the class probabilities and the maps of *both* classes,
  because the backward pass only runs through the head after the explained layer. A prediction
  with its Grad-CAM therefore costs one forward pass. tf-keras-vis's ``Gradcam`` gives the
  same map (tested) but runs eagerly, rebuilds a sub-model per call and needs a separate
  prediction: on 2 shared CPU cores at 224×224 it took 3.4–5.1 s per image against
  0.6–0.9 s for prediction plus Grad-CAM here.
- Grad-CAM++ goes through ``tf_keras_vis.gradcam_plus_plus.GradcamPlusPlus``: one forward
  pass, whose logits also give the probabilities.
- Score-CAM goes through ``tf_keras_vis.scorecam.Scorecam`` in its fast variant
  (``max_N``): one pass for the probabilities, one truncated pass for the activations,
  then ``max_maps`` masked passes per image.

tf-keras-vis is given a model that *shares* the classifier's layers and returns logits (the
``ReplaceToLinear`` effect without cloning), so its maps follow later weight changes and
nothing is copied per call.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import Sequence

import cv2
import keras
import numpy as np
import tensorflow as tf

with warnings.catch_warnings():  # tf-keras-vis 0.8.7 imports scipy.ndimage.interpolation (deprecated)
    warnings.simplefilter("ignore", DeprecationWarning)
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.scores import CategoricalScore

from breakhis_core import CLASS_NAMES
from breakhis_core.errors import ModelFileError
from breakhis_core.data.images import encode_png, resize
from breakhis_core.models.backbones import find_gradcam_layer
from breakhis_core.models.classifier import check_model_io

METHODS = ("gradcam", "gradcam++", "scorecam")
DEFAULT_MAX_MAPS = 10
"""Score-CAM: activation maps kept (the highest-variance channels, as in Faster Score-CAM); each costs a forward pass."""
BATCH_SIZE = 16
COLORMAPS = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "hot": cv2.COLORMAP_HOT,
}
"""Colour map names offered to users → OpenCV constants."""


@dataclass
class CamBatch:
    """CAMs of a batch of model-sized inputs.

    Attributes:
        probabilities: ``(N, 2)`` float32 softmax probabilities.
        class_indices: ``(N,)`` int, the class each map explains.
        maps: ``(N, h, w)`` float32 >= 0 at the layer's resolution, not normalised.
    """

    probabilities: np.ndarray
    class_indices: np.ndarray
    maps: np.ndarray


@dataclass
class Explanation:
    """A class activation map of one image.

    Attributes:
        image: untouched copy of the input, ``(H, W, 3)`` uint8 RGB.
        heatmap: ``(H, W)`` float32 in [0, 1], at the image's own size.
        method: "gradcam", "gradcam++" or "scorecam".
        layer: the layer explained.
        class_index: the class explained (0 benign, 1 malignant).
        probabilities: ``(2,)`` float32, the model's probabilities for the image.
    """

    image: np.ndarray
    heatmap: np.ndarray
    method: str
    layer: str
    class_index: int
    probabilities: np.ndarray

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.class_index]

    def overlay(self, alpha: float = 0.4, colormap: int | str = cv2.COLORMAP_JET) -> np.ndarray:
        """The heat map over the image, ``(H, W, 3)`` uint8 RGB; see :func:`overlay`."""
        return overlay(self.image, self.heatmap, alpha, colormap)

    def overlay_png(self, alpha: float = 0.4, colormap: int | str = cv2.COLORMAP_JET) -> bytes:
        """The overlay as PNG bytes."""
        return encode_png(self.overlay(alpha, colormap))


class _DenseLogits(keras.layers.Layer):
    """The pre-softmax output of a Dense layer, sharing its kernel and bias (no copy)."""

    def __init__(self, dense: keras.layers.Dense, **kwargs):
        super().__init__(**kwargs)
        self.dense = dense

    def call(self, inputs):
        logits = keras.ops.matmul(inputs, self.dense.kernel)
        return logits + self.dense.bias if self.dense.use_bias else logits


class _LogitsModel(keras.Model):
    """Functional model returning logits; ``predict`` is silent (Score-CAM calls it)."""

    def predict(self, x, batch_size=None, **kwargs):
        if isinstance(x, (list, tuple)) and len(x) == 1:
            x = x[0]
        kwargs["verbose"] = 0
        return super().predict(x, batch_size=batch_size, **kwargs)


class Explainer:
    """Compiled prediction and CAM functions of one model at one layer.

    Build it once per model (:func:`explainer_for` caches it); every call then reuses the
    traced functions and tf-keras-vis objects. Inputs are model-sized batches
    ``(N, S, S, 3)`` of RGB in [0, 255] (uint8 or float); they are copied, never modified.

    Thread-safe: one Explainer serves concurrent requests (the app shares it across sessions).
    Each compiled function is traced once, under a lock (without it, 8 simultaneous first calls
    traced it 8 times); traced calls then run concurrently. Grad-CAM++ and Score-CAM run one at a
    time, because tf-keras-vis and ``Model.predict`` keep per-call state on shared objects.

    Args:
        model: a classifier as built by ``model.build_model`` (last layer Dense softmax).
        layer: name of a layer with a ``(None, h, w, c)`` output; None: the model's Grad-CAM layer
            (``backbones.find_gradcam_layer``).

    Raises:
        ModelFileError: when the model's input/output or its last layer does not fit.
        ValueError: when ``layer`` is not a spatial layer of the model.
    """

    def __init__(self, model: keras.Model, layer: str | None = None):
        self.input_size = check_model_io(model)
        layer = layer or find_gradcam_layer(model).layer
        self.layer = layer
        try:
            features = model.get_layer(layer).output
        except ValueError:
            raise ValueError(f"layer not found in the model. Received: layer={layer}") from None
        if len(features.shape) != 4:
            raise ValueError(f"layer output must be (None, h, w, c). Received: layer={layer}, shape {features.shape}")
        head = model.layers[-1]
        if not isinstance(head, keras.layers.Dense):
            raise ModelFileError(f"the model's last layer must be Dense (softmax). Received: {type(head).__name__}")
        logits = _DenseLogits(head, name="logits")(head.input)
        image = model.inputs[0]
        self._logits_model = _LogitsModel(image, logits, name="logits_model")
        self._cam_model = keras.Model(image, [features, logits], name="cam_model")
        self.num_classes = int(logits.shape[-1])
        spec = [tf.TensorSpec((None, self.input_size, self.input_size, 3), tf.float32)]
        self._probabilities_fn = tf.function(self._probabilities_graph, input_signature=spec)
        self._gradcam_fn = tf.function(self._gradcam_graph, input_signature=spec)
        self._gradcam_plus_plus = None
        self._scorecam = None
        self._traced: set[str] = set()
        self._trace_lock = threading.Lock()
        self._vis_lock = threading.Lock()

    # ------------------------------------------------------------------ public

    def probabilities(self, images: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """Class probabilities ``(N, 2)`` float32 of model-sized images ``(N, S, S, 3)``."""
        return _batched(self._compiled("_probabilities_fn"), images, batch_size)[0]

    def gradcam_all_classes(self, images: np.ndarray, batch_size: int = BATCH_SIZE) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and the Grad-CAM maps of every class, in one forward pass.

        Returns:
            probabilities ``(N, 2)`` float32 and maps ``(N, 2, h, w)`` float32 >= 0 (not normalised).
        """
        return _batched(self._compiled("_gradcam_fn"), images, batch_size)

    def cams(
        self,
        images: np.ndarray,
        method: str = "gradcam",
        class_index: int | Sequence[int] | None = None,
        max_maps: int = DEFAULT_MAX_MAPS,
        batch_size: int = BATCH_SIZE,
    ) -> CamBatch:
        """Probabilities and class activation maps of model-sized images.

        Args:
            images: ``(N, S, S, 3)`` RGB in [0, 255].
            method: "gradcam", "gradcam++" or "scorecam".
            class_index: class to explain for all images, one per image, or None for each
                image's predicted class.
            max_maps: Score-CAM only: channels kept (1..c of the layer).
            batch_size: images per forward pass.

        Raises:
            ValueError: for an unknown method, class index or max_maps.
        """
        check_method(method)
        n = len(images)
        if class_index is not None:
            classes = np.broadcast_to(np.asarray(class_index, dtype=np.int64), (n,)).copy()
            if ((classes < 0) | (classes >= self.num_classes)).any():
                raise ValueError(f"class_index must be 0 (benign) or 1 (malignant). Received: class_index={class_index}")
        if method == "gradcam":
            probabilities, maps = self.gradcam_all_classes(images, batch_size)
            classes = probabilities.argmax(axis=1) if class_index is None else classes
            return CamBatch(probabilities, classes, maps[np.arange(n), classes])
        with self._vis_lock:
            if method == "gradcam++":
                return self._run_gradcam_plus_plus(images, None if class_index is None else classes, batch_size)
            return self._run_scorecam(images, None if class_index is None else classes, max_maps, batch_size)

    # ------------------------------------------------------------------ internals

    def _compiled(self, name: str):
        """The tf.function ``name``, traced exactly once even when first called from several threads."""
        if name not in self._traced:
            with self._trace_lock:
                if name not in self._traced:
                    getattr(self, name).get_concrete_function()
                    self._traced.add(name)
        return getattr(self, name)

    def _probabilities_graph(self, x):
        return (tf.nn.softmax(tf.cast(self._logits_model(x, training=False), tf.float32)),)

    def _gradcam_graph(self, x):
        with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
            tape.watch(x)
            features, logits = self._cam_model(x, training=False)  # features in the compute dtype (bf16 too)
            logits = tf.cast(logits, tf.float32)
            targets = [logits[:, c] for c in range(self.num_classes)]
        grads = tf.stack([tf.cast(tape.gradient(t, features), tf.float32) for t in targets], axis=1)  # (N, K, h, w, c)
        features = tf.cast(features, tf.float32)
        weights = tf.reduce_mean(grads, axis=[2, 3])  # (N, K, c)
        maps = tf.nn.relu(tf.einsum("nhwc,nkc->nkhw", features, weights))
        return tf.nn.softmax(logits), maps

    def _run_gradcam_plus_plus(self, images, classes, batch_size) -> CamBatch:
        if self._gradcam_plus_plus is None:
            self._gradcam_plus_plus = GradcamPlusPlus(self._logits_model, clone=False)
        probabilities, chosen, maps = [], [], []
        for start in range(0, len(images), batch_size):
            x = np.asarray(images[start : start + batch_size], dtype=np.float32)
            given = None if classes is None else classes[start : start + batch_size]
            logits_seen = []

            def score(logits, given=given, logits_seen=logits_seen):
                logits_seen.append(logits)
                index = tf.argmax(logits, axis=-1) if given is None else tf.constant(given)
                return tf.gather(logits, index, batch_dims=1)

            cam = self._gradcam_plus_plus(
                score, x, penultimate_layer=self.layer, seek_penultimate_conv_layer=False,
                expand_cam=False, normalize_cam=False,
            )
            p = tf.nn.softmax(tf.cast(logits_seen[0], tf.float32)).numpy()
            probabilities.append(p)
            chosen.append(p.argmax(axis=1) if given is None else given)
            maps.append(np.asarray(cam, dtype=np.float32))
        return CamBatch(np.concatenate(probabilities), np.concatenate(chosen), np.concatenate(maps))

    def _run_scorecam(self, images, classes, max_maps, batch_size) -> CamBatch:
        channels = int(self._cam_model.outputs[0].shape[-1])
        if not 1 <= max_maps <= channels:
            raise ValueError(f"max_maps must be 1..{channels} (channels of {self.layer}). Received: max_maps={max_maps}")
        if self._scorecam is None:
            self._scorecam = Scorecam(self._logits_model, clone=False)
        probabilities = self.probabilities(images, batch_size)
        classes = probabilities.argmax(axis=1) if classes is None else classes
        maps = []
        for image, class_index in zip(images, classes):  # one image per call: max_N then bounds its passes
            cam = self._scorecam(
                CategoricalScore([int(class_index)]), np.asarray(image, dtype=np.float32)[None],
                penultimate_layer=self.layer, seek_penultimate_conv_layer=False, max_N=max_maps,
                batch_size=batch_size, expand_cam=False, normalize_cam=False,
            )
            maps.append(np.asarray(cam, dtype=np.float32))
        return CamBatch(probabilities, classes, np.concatenate(maps))


def _batched(fn, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, ...]:
    """Run a compiled function over float32 copies of ``images`` in batches; concatenate each output."""
    outputs = [
        [t.numpy() for t in fn(tf.constant(np.asarray(images[start : start + batch_size], dtype=np.float32)))]
        for start in range(0, len(images), batch_size)
    ]
    return tuple(np.concatenate(parts) for parts in zip(*outputs))


_CACHE: "weakref.WeakKeyDictionary[keras.Model, dict[str, Explainer]]" = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def explainer_for(model: keras.Model, layer: str | None = None) -> Explainer:
    """The cached :class:`Explainer` of ``model`` at ``layer`` (None: its Grad-CAM layer; built on first use; freed with
    the model)."""
    with _CACHE_LOCK:
        layer = layer or find_gradcam_layer(model).layer
        by_layer = _CACHE.setdefault(model, {})
        if layer not in by_layer:
            by_layer[layer] = Explainer(model, layer)
        return by_layer[layer]


def check_method(method: str) -> None:
    """Raise ValueError unless ``method`` is one of ``METHODS``."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}. Received: method={method}")


def explain(
    model: keras.Model,
    image: np.ndarray,
    method: str = "gradcam",
    class_index: int | None = None,
    layer: str | None = None,
    max_maps: int = DEFAULT_MAX_MAPS,
) -> Explanation:
    """Explain the model's decision on one image.

    The image is resized to the model's input as in training; the map is brought back to
    the image's own size.

    Args:
        model: the classifier (``(None, S, S, 3)`` RGB [0, 255] → 2 probabilities).
        image: ``(H, W, 3)`` uint8 RGB of any size; not modified.
        method: "gradcam", "gradcam++" or "scorecam".
        class_index: class to explain (0 benign, 1 malignant); None = the predicted class.
        layer: layer to explain; None: the model's Grad-CAM layer (``backbones.find_gradcam_layer``).
        max_maps: Score-CAM only: number of activation maps used.

    Returns:
        An :class:`Explanation` with an ``(H, W)`` float32 heat map in [0, 1].

    Raises:
        ValueError: for an unknown method, layer, class index or max_maps.
        ModelFileError: when the model's input, output or last layer does not fit.
    """
    explainer = explainer_for(model, layer)
    batch = explainer.cams(resize(image, explainer.input_size)[None], method, class_index, max_maps)
    return Explanation(
        image=np.array(image, copy=True),
        heatmap=normalize_map(upsample_map(batch.maps[0], image.shape[:2])),
        method=method,
        layer=explainer.layer,
        class_index=int(batch.class_indices[0]),
        probabilities=batch.probabilities[0],
    )


def upsample_map(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a ``(h, w)`` map to ``size`` = (height, width), float32."""
    height, width = size
    return cv2.resize(np.asarray(cam, dtype=np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def normalize_map(cam: np.ndarray) -> np.ndarray:
    """Scale a map >= 0 into [0, 1] by its maximum (float32); an all-zero map stays zero."""
    cam = np.maximum(np.asarray(cam, dtype=np.float32), 0.0)
    peak = float(cam.max(initial=0.0))
    return cam / peak if peak > 0 else cam


def colorize(heatmap: np.ndarray, colormap: int | str = cv2.COLORMAP_JET) -> np.ndarray:
    """A ``(H, W)`` map in [0, 1] as ``(H, W, 3)`` uint8 RGB through an OpenCV colour map (int or name)."""
    if isinstance(colormap, str):
        if colormap not in COLORMAPS:
            raise ValueError(f"colormap must be one of {', '.join(COLORMAPS)}. Received: colormap={colormap}")
        colormap = COLORMAPS[colormap]
    levels = np.round(np.clip(heatmap, 0.0, 1.0) * 255.0).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(levels, colormap), cv2.COLOR_BGR2RGB)


LEGEND_TEXT = ("heat-map colours: blue = no evidence for the explained class, red = its strongest evidence "
               "(each map scaled to its own maximum)")
"""What the heat maps' colours mean, shown beside :func:`colour_bar` wherever a heat map is shown."""


def colour_bar(width: int = 256, height: int = 12, colormap: int | str = cv2.COLORMAP_JET) -> np.ndarray:
    """The heat maps' colour scale as a legend: ``(height, width, 3)`` uint8 RGB, 0 on the left … 1 on the right."""
    return colorize(np.tile(np.linspace(0.0, 1.0, width), (height, 1)), colormap)


def overlay(
    image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, colormap: int | str = cv2.COLORMAP_JET
) -> np.ndarray:
    """Blend a coloured heat map over an image.

    Args:
        image: ``(H, W, 3)`` uint8 RGB; not modified.
        heatmap: ``(h, w)`` float in [0, 1]; resized to ``(H, W)`` when it differs.
        alpha: opacity of the heat map, 0 (image only) … 1 (heat map only).
        colormap: OpenCV colour map constant or a name of ``COLORMAPS``.

    Returns:
        ``(H, W, 3)`` uint8 RGB, the image's own size.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]. Received: alpha={alpha}")
    if heatmap.shape[:2] != image.shape[:2]:
        heatmap = upsample_map(heatmap, image.shape[:2])
    return cv2.addWeighted(np.asarray(image, dtype=np.uint8), 1.0 - alpha, colorize(heatmap, colormap), alpha, 0.0)


def overlay_png(
    image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, colormap: int | str = cv2.COLORMAP_JET
) -> bytes:
    """:func:`overlay` encoded as PNG bytes."""
    return encode_png(overlay(image, heatmap, alpha, colormap))
