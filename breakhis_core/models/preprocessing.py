"""The ImageNet preprocessing layers a classifier carries inside it (saved with the model, so callers feed plain RGB).

Both take float32 RGB in [0, 255] of shape ``(None, S, S, 3)``, return the same shape, and never modify their input.
Which backbone uses which is ``backbones.py``'s.
"""

from __future__ import annotations

import keras

IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)
"""VGG16's "caffe" mean, in BGR order, on the [0, 255] scale."""


@keras.saving.register_keras_serializable(package="breakhis_core")
class CaffePreprocess(keras.layers.Layer):
    """VGG16 "caffe" preprocessing as a layer: RGB [0, 255] → BGR minus the ImageNet mean.

    Same arithmetic as ``keras.applications.vgg16.preprocess_input``, but it never
    modifies its input in place and it is saved with the model.
    """

    def call(self, inputs):
        bgr = keras.ops.flip(keras.ops.cast(inputs, self.compute_dtype), axis=-1)
        return bgr - keras.ops.convert_to_tensor(IMAGENET_MEAN_BGR, dtype=self.compute_dtype)


@keras.saving.register_keras_serializable(package="breakhis_core")
class ScaleShiftPreprocess(keras.layers.Layer):
    """Per-channel ``x * scale + shift`` of RGB [0, 255] inputs (channel order kept).

    Args:
        scale, shift: three floats each, one per RGB channel.
    """

    def __init__(self, scale, shift, **kwargs):
        super().__init__(**kwargs)
        self.scale, self.shift = tuple(float(v) for v in scale), tuple(float(v) for v in shift)

    def call(self, inputs):
        x = keras.ops.cast(inputs, self.compute_dtype)
        return (x * keras.ops.convert_to_tensor(self.scale, dtype=self.compute_dtype)
                + keras.ops.convert_to_tensor(self.shift, dtype=self.compute_dtype))

    def get_config(self):
        return {**super().get_config(), "scale": list(self.scale), "shift": list(self.shift)}
