"""Training augmentation, defined once: the tf.data path and the activation cache's views draw from it.

An augmented image is: one element of the dihedral group (flips and 90° rotations), a square crop
of ``CROP_SCALE`` of the side resized back (crop/zoom), a contrast factor about the image mean, a
brightness shift, gaussian pixel noise, clipped to [0, 255]. Two callers make the random draws:

- :func:`augment` — the plain training path (``data.make_dataset``): stateless TensorFlow draws
  per batch (one rotation per batch, flips and the rest per image);
- ``cache.make_views`` — the cached path: numpy draws per image and view (``cache.view_parameters``),
  the group element through :func:`dihedral`.

Both apply the crop and the photometric jitter through :func:`crop_and_jitter`, in the same order,
and take their ranges from the constants here, so the two paths cannot drift apart.
Test-time augmentation (``predict``) uses the same group: :func:`dihedral_views`.

Images are float32 RGB in [0, 255] (the model does its backbone's preprocessing itself).
"""

from __future__ import annotations

import numpy as np

DIHEDRAL = 8
"""Elements of the dihedral group of the square: 4 rotations of the image and 4 of its mirror."""
CROP_SCALE = (0.8, 1.0)
"""Crop side as a fraction of the image side, drawn uniformly from this range."""
BRIGHTNESS = 20.0
"""Brightness shift drawn from U(-BRIGHTNESS, BRIGHTNESS), in pixel values on [0, 255]."""
CONTRAST = (0.85, 1.15)
"""Contrast factor about the image mean, drawn uniformly from this range."""
NOISE_STD = 4.0
"""Standard deviation of the additive gaussian pixel noise, in pixel values on [0, 255]."""


def settings() -> dict:
    """The augmentation's constants, as recorded in an activation cache part's key."""
    return {"dihedral": DIHEDRAL, "crop_scale": CROP_SCALE, "brightness": BRIGHTNESS, "contrast": CONTRAST,
            "noise_std": NOISE_STD}


def dihedral(image: np.ndarray, element: int) -> np.ndarray:
    """Element 0–7 of the dihedral group on a square ``(S, S, C)`` image: rot90 by ``element % 4`` of the
    image (elements 0–3) or of its left-right mirror (4–7). Element 0 is the image itself."""
    source = image[:, ::-1] if element >= 4 else image
    return np.rot90(source, element % 4)


def dihedral_views(image: np.ndarray) -> np.ndarray:
    """All 8 elements of :func:`dihedral` of a square ``(S, S, C)`` image, in order: ``(8, S, S, C)``."""
    return np.stack([dihedral(image, element) for element in range(DIHEDRAL)])


def crop_and_jitter(images, boxes, brightness, contrast, noise):
    """Crop/zoom, contrast, brightness and noise of a batch (TensorFlow ops, traceable in a ``tf.function``).

    Args:
        images: ``(B, S, S, 3)`` float32 RGB in [0, 255].
        boxes: ``(B, 4)`` float32 crop boxes ``(y1, x1, y2, x2)`` as fractions of the side; each crop is resized
            back to ``S × S`` (bilinear).
        brightness: ``(B,)`` float32 shift added after the contrast change.
        contrast: ``(B,)`` float32 factor about each image's mean.
        noise: ``(B, S, S, 3)`` float32 noise added last (already scaled by ``NOISE_STD``).

    Returns:
        ``(B, S, S, 3)`` float32 clipped to [0, 255].
    """
    import tensorflow as tf

    batch = tf.shape(images)[0]
    size = tf.shape(images)[1]
    x = tf.image.crop_and_resize(images, boxes, tf.range(batch), tf.stack([size, size]))
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    x = (x - mean) * contrast[:, None, None, None] + mean + brightness[:, None, None, None]
    return tf.clip_by_value(x + noise, 0.0, 255.0)


def augment(images, seed_pair):
    """Random augmentation of a training batch for the tf.data path (stateless, reproducible per seed).

    Random flips left-right and up-down per image, one 90° rotation per batch, then
    :func:`crop_and_jitter` with per-image draws from ``CROP_SCALE``, ``BRIGHTNESS``, ``CONTRAST`` and
    ``NOISE_STD``.

    Args:
        images: ``(B, S, S, 3)`` float32 RGB in [0, 255] (square).
        seed_pair: ``(2,)`` int tensor for the stateless random ops.

    Returns:
        Same shape, float32 in [0, 255].
    """
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed_pair, 8)
    batch = tf.shape(images)[0]
    x = tf.image.stateless_random_flip_left_right(images, seeds[0])
    x = tf.image.stateless_random_flip_up_down(x, seeds[1])
    k = tf.random.stateless_uniform([], seeds[2], 0, 4, dtype=tf.int32)
    x = tf.image.rot90(x, k)
    scale = tf.random.stateless_uniform([batch], seeds[3], *CROP_SCALE)
    offsets = tf.random.stateless_uniform([batch, 2], seeds[4], 0.0, 1.0) * (1.0 - scale[:, None])
    boxes = tf.concat([offsets, offsets + scale[:, None]], axis=1)
    brightness = tf.random.stateless_uniform([batch], seeds[5], -BRIGHTNESS, BRIGHTNESS)
    contrast = tf.random.stateless_uniform([batch], seeds[6], *CONTRAST)
    noise = tf.random.stateless_normal(tf.shape(x), seeds[7], stddev=NOISE_STD)
    return crop_and_jitter(x, boxes, brightness, contrast, noise)
