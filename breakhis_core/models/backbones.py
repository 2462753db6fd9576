"""The ImageNet networks a classifier can stand on (its *backbone*), each defined once as a :class:`Backbone`.

Every backbone comes from ``keras.applications`` without its top (``include_top=False``) and is built on the
model's own input (``input_tensor=``), so the classifier is one graph whose layers Grad-CAM libraries find by name.
Every classifier takes ``(None, S, S, 3)`` float32 RGB in [0, 255]; the backbone's ImageNet preprocessing is a
layer inside the model, saved with it:

- ``vgg16`` (the paper's, the default): ``caffe_preprocess`` (``preprocessing.CaffePreprocess``): RGB→BGR minus the
  ImageNet mean (103.939, 116.779, 123.68), no scaling;
- ``resnet50v2``: ``tf_preprocess`` (``preprocessing.ScaleShiftPreprocess``, Keras' "tf" mode): x / 127.5 - 1, in
  [-1, 1];
- ``densenet121``: ``torch_preprocess`` (``ScaleShiftPreprocess``, Keras' "torch" mode): x / 255, minus the
  ImageNet mean (0.485, 0.456, 0.406), divided by its standard deviation (0.229, 0.224, 0.225), per RGB channel;
- ``efficientnetv2b0``: its own ``Rescaling`` (x / 255) and ``Normalization`` (the same ImageNet mean and standard
  deviation) layers (``include_preprocessing=True``).

Stage 2 ("finetuned") unfreezes the last N *blocks* of the backbone (``TrainConfig.unfreeze``). A block is a run
of consecutive layers ending at a named layer whose output is one tensor that nothing after it bypasses (a
stage boundary of the network), so the activation cache can split the model there (:meth:`Backbone.cache_split_layer`):
the frozen prefix is input → that layer, the trained suffix that layer → output.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from breakhis_core.errors import ConfigError, ModelFileError

log = logging.getLogger(__name__)

HEAD_FIRST_LAYER = "head_pool"
"""The first layer after the backbone in every classifier (``classifier.build_model``)."""
KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
"""Keras' "torch" mode statistics, on the [0, 1] scale."""


TF_MODE = ((1 / 127.5,) * 3, (-1.0,) * 3)
"""(scale, shift) of Keras' "tf" mode: [0, 255] → [-1, 1]."""
TORCH_MODE = (tuple(1 / (255 * s) for s in IMAGENET_STD_RGB), tuple(-m / s for m, s in zip(IMAGENET_MEAN_RGB, IMAGENET_STD_RGB)))
"""(scale, shift) of Keras' "torch" mode: (x / 255 - mean) / std per RGB channel."""


@dataclass(frozen=True)
class Block:
    """One block of a backbone: its name and the name of its last layer (a single-tensor block boundary)."""

    name: str
    last_layer: str


@dataclass(frozen=True)
class Backbone:
    """One ImageNet network from ``keras.applications`` as a classifier's base.

    Attributes:
        name: the registry name (``TrainConfig.backbone``, ``--backbone``, run.json "model").
        label: how people call it ("VGG16").
        application: the ``keras.applications`` function that builds it.
        preprocess_layer: name of the preprocessing layer this module puts before it (None: the network brings its
            own, see the module docstring).
        preprocess: ``(scale, shift)`` of a ``preprocessing.ScaleShiftPreprocess``; None for ``caffe_preprocess`` or
            none.
        application_options: further keyword arguments of ``application`` as (name, value) pairs.
        weights_file: Keras' file name of the ImageNet no-top weights (in ``$KERAS_HOME/models``).
        weights_url: where Keras downloads that file.
        weights_md5: the MD5 Keras checks on download.
        top_layers: layers of the ImageNet classifier, present only in the full (with-top) weights file.
        gradcam_layer: the layer Grad-CAM explains: the last spatial feature map.
        blocks: the blocks in order; stage 2 unfreezes the last ``TrainConfig.unfreeze`` of them.
        min_input_size: the smallest square input side in pixels.
    """

    name: str
    label: str
    application: str
    preprocess_layer: str | None
    preprocess: tuple[tuple[float, ...], tuple[float, ...]] | None
    application_options: tuple[tuple[str, object], ...]
    weights_file: str
    weights_url: str
    weights_md5: str
    top_layers: tuple[str, ...]
    gradcam_layer: str
    blocks: tuple[Block, ...]
    min_input_size: int = 32

    # ------------------------------------------------------------------ building

    def network(self, **arguments):
        """``keras.applications.<application>(include_top=False, **arguments)`` with this backbone's options."""
        import keras

        return getattr(keras.applications, self.application)(include_top=False, **dict(self.application_options),
                                                             **arguments)

    def build(self, inputs):
        """The base on ``inputs`` (``(None, S, S, 3)`` RGB [0, 255]): preprocessing layer, then the network.

        Returns:
            The network as a ``keras.Model`` from the classifier's input (its layers are the classifier's own;
            its ``output`` is the last block's output), randomly initialised.
        """
        from breakhis_core.models.preprocessing import CaffePreprocess, ScaleShiftPreprocess

        x = inputs
        if self.preprocess_layer == "caffe_preprocess":
            x = CaffePreprocess(name=self.preprocess_layer)(x)
        elif self.preprocess_layer is not None:
            x = ScaleShiftPreprocess(*self.preprocess, name=self.preprocess_layer)(x)
        return self.network(weights=None, input_tensor=x)

    # ------------------------------------------------------------------ blocks

    @property
    def last_layer(self) -> str:
        """The base's last layer (the last block's)."""
        return self.blocks[-1].last_layer

    def block_layers(self, model) -> list[list]:
        """The base layers of a classifier built on this backbone, per block, in the model's layer order.

        A block holds the layers after the previous block's last layer up to its own (the first block starts after the
        input and the preprocessing layer).

        Raises:
            ModelFileError: when the model lacks a block's last layer.
        """
        names = [layer.name for layer in model.layers]
        skip = {model.layers[0].name, self.preprocess_layer}
        start = next(i for i, name in enumerate(names) if name not in skip)
        blocks = []
        for block in self.blocks:
            if block.last_layer not in names:
                raise ModelFileError(f"the model has no layer {block.last_layer}, the end of {self.label}'s block "
                                     f"{block.name}. Received: model {model.name}")
            end = names.index(block.last_layer) + 1
            blocks.append(model.layers[start:end])
            start = end
        return blocks

    def check_unfreeze(self, unfreeze: int) -> None:
        """Raise ConfigError unless ``unfreeze`` is a number of blocks of this backbone (0..len(blocks))."""
        if not 0 <= unfreeze <= len(self.blocks):
            raise ConfigError(f"unfreeze must be 0..{len(self.blocks)} ({self.label} has {len(self.blocks)} blocks: "
                              f"{', '.join(b.name for b in self.blocks)}). Received: unfreeze={unfreeze}")

    def unfrozen_blocks(self, unfreeze: int) -> tuple[Block, ...]:
        """The last ``unfreeze`` blocks (those stage 2 trains)."""
        self.check_unfreeze(unfreeze)
        return self.blocks[len(self.blocks) - unfreeze:]

    def cache_split_layer(self, unfreeze: int) -> str | None:
        """The layer whose output the activation cache keeps when stage 2 trains the last ``unfreeze`` blocks.

        The last layer of the last frozen block (0 blocks → the base's last layer); None when stage 2 trains every
        block (nothing stays frozen).
        """
        self.check_unfreeze(unfreeze)
        frozen = len(self.blocks) - unfreeze
        return self.blocks[frozen - 1].last_layer if frozen else None


VGG16 = Backbone(
    name="vgg16", label="VGG16", application="VGG16",
    preprocess_layer="caffe_preprocess", preprocess=None, application_options=(),
    weights_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    weights_url=KERAS_WEIGHTS_URL + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    weights_md5="6d6bbae143d832006294945121d1f1fc",
    top_layers=("flatten", "fc1", "fc2", "predictions"),
    gradcam_layer="block5_conv3",
    blocks=tuple(Block(f"block{i}", f"block{i}_pool") for i in range(1, 6)),
)
"""The paper's network: 13 3×3 convolutions in 5 blocks, each ending in a 2×2 max pooling."""

RESNET50V2 = Backbone(
    name="resnet50v2", label="ResNet50V2", application="ResNet50V2",
    preprocess_layer="tf_preprocess", preprocess=TF_MODE, application_options=(),
    weights_file="resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
    weights_url=KERAS_WEIGHTS_URL + "resnet/resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
    weights_md5="fac2f116257151a9d068a22e544a4917",
    top_layers=("predictions",),
    gradcam_layer="post_relu",
    blocks=(Block("conv1", "pool1_pool"), Block("conv2", "conv2_block3_out"), Block("conv3", "conv3_block4_out"),
            Block("conv4", "conv4_block6_out"), Block("conv5", "post_relu")),
)
"""Pre-activation ResNet: a stem (conv1, pool1) and 4 stages of residual units (conv2…conv5, the last with the final
batch normalisation and ReLU)."""

DENSENET121 = Backbone(
    name="densenet121", label="DenseNet121", application="DenseNet121",
    preprocess_layer="torch_preprocess", preprocess=TORCH_MODE, application_options=(),
    weights_file="densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
    weights_url=KERAS_WEIGHTS_URL + "densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
    weights_md5="30ee3e1110167f948a6b9946edeeb738",
    top_layers=("predictions",),
    gradcam_layer="relu",
    blocks=(Block("conv1", "pool1"), Block("conv2", "pool2_pool"), Block("conv3", "pool3_pool"),
            Block("conv4", "pool4_pool"), Block("conv5", "relu")),
)
"""A stem (conv1, pool1) and 4 dense blocks (conv2…conv5), each but the last with its transition (pool2…pool4); the
last with the final batch normalisation and ReLU."""

EFFICIENTNETV2B0 = Backbone(
    name="efficientnetv2b0", label="EfficientNetV2B0", application="EfficientNetV2B0",
    preprocess_layer=None, preprocess=None, application_options=(("include_preprocessing", True),),
    weights_file="efficientnetv2-b0_notop.h5",
    weights_url=KERAS_WEIGHTS_URL + "efficientnet_v2/efficientnetv2-b0_notop.h5",
    weights_md5="893217f2bb855e2983157299931e43ff",
    top_layers=("predictions",),
    gradcam_layer="top_activation",
    blocks=(Block("stem", "stem_activation"), Block("block1", "block1a_project_activation"),
            Block("block2", "block2b_add"), Block("block3", "block3b_add"), Block("block4", "block4c_add"),
            Block("block5", "block5e_add"), Block("block6", "block6h_add"), Block("top", "top_activation")),
)
"""A stem, 6 stages of (fused) MBConv blocks (block1…block6) and the top 1×1 convolution (top)."""

BACKBONES = {backbone.name: backbone for backbone in (VGG16, RESNET50V2, DENSENET121, EFFICIENTNETV2B0)}
"""Every backbone by name; the first is the default (the paper's)."""
BACKBONE_NAMES = tuple(BACKBONES)
DEFAULT_BACKBONE = VGG16.name


def get_backbone(name: str) -> Backbone:
    """The backbone called ``name``.

    Raises:
        ConfigError: for an unknown name, listing the known ones.
    """
    try:
        return BACKBONES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown backbone; known backbones: {', '.join(BACKBONE_NAMES)}. Received: backbone={name}") from None


def legacy_unfreeze_blocks(layers: int) -> int:
    """VGG16 blocks for a stage-2 size counted in base layers, as config.json files before backbones held it.

    Those files count the last ``layers`` of VGG16's 18 base layers (block1 and block2: 2 convolutions and a pooling
    each; block3 to block5: 3 convolutions and a pooling). The rule: the number of blocks holding at least one
    convolution among those layers, i.e. every block stage 2 trained at least in part (5 → 1: block4_pool has no
    weights, so block5; 6 → 2; 18 → 5; 0 or 1 → 0).
    """
    in_order = [(block, kind) for block, convolutions in enumerate((2, 2, 3, 3, 3), start=1)
                for kind in ("conv",) * convolutions + ("pool",)]
    last = in_order[len(in_order) - min(max(layers, 0), len(in_order)):]
    return len({block for block, kind in last if kind == "conv"})


# ----------------------------------------------------------------------------- saved models


@dataclass(frozen=True)
class GradcamLayer:
    """The layer Grad-CAM explains in a model, and how it was found.

    Attributes:
        layer: the layer's name.
        backbone: the backbone recognised from the model's layer names, or None.
        found_by: "run record", "backbone <name> recognised from the layer names" or "last convolution output".
    """

    layer: str
    backbone: str | None
    found_by: str


def detect_backbone(model) -> Backbone | None:
    """The backbone whose Grad-CAM layer and block ends all name layers of ``model``, or None."""
    names = {layer.name for layer in model.layers}
    for backbone in BACKBONES.values():
        if backbone.gradcam_layer in names and all(block.last_layer in names for block in backbone.blocks):
            return backbone
    return None


def find_gradcam_layer(model) -> GradcamLayer:
    """The Grad-CAM layer of a model file without a run record: its backbone's, when its layer names tell the backbone,
    else the last layer that is a convolution with a ``(None, h, w, c)`` output (logged either way).

    Raises:
        ModelFileError: when the model has no convolution with a 4-D output.
    """
    backbone = detect_backbone(model)
    if backbone is not None:
        found = GradcamLayer(backbone.gradcam_layer, backbone.name, f"backbone {backbone.name} recognised from the layer names")
    else:
        convolutions = [layer for layer in model.layers if "Conv" in type(layer).__name__ and len(layer.output.shape) == 4]
        if not convolutions:
            raise ModelFileError(f"the model has no convolution with a (None, h, w, c) output for Grad-CAM. "
                                 f"Received: model {model.name}")
        found = GradcamLayer(convolutions[-1].name, None, "last convolution output")
    log.info("Grad-CAM layer of %s: %s (%s)", model.name, found.layer, found.found_by)
    return found
