"""The classifier builder on VGG16 (the paper's backbone): architecture, stages, weights sources, preprocessing, saving."""

from __future__ import annotations

import time

import keras
import numpy as np
import pytest

from breakhis_core.errors import WeightsError
from breakhis_core.models.backbones import VGG16
from breakhis_core.models.classifier import build_model, check_model_io, set_stage, trainable_layer_names

HEAD = ["head_dense", "head_bn", "predictions"]


def test_architecture(tiny_model):
    assert tiny_model.input_shape == (None, 32, 32, 3)
    assert tiny_model.output_shape == (None, 2)
    names = [layer.name for layer in tiny_model.layers]
    assert tiny_model.name == "breakhis_vgg16"
    assert names[:3] == ["image", "caffe_preprocess", "block1_conv1"]
    assert "block5_conv3" in names  # Grad-CAM target layer sits in the model itself
    assert names[-5:] == ["head_pool", "head_dense", "head_bn", "head_dropout", "predictions"]
    assert check_model_io(tiny_model) == 32


def test_stages_switch_trainable_layers():
    model = build_model(32, weights="none", seed=1)
    assert trainable_layer_names(model) == HEAD
    set_stage(model, "finetuned", unfreeze=1)
    assert trainable_layer_names(model) == ["block5_conv1", "block5_conv2", "block5_conv3"] + HEAD
    set_stage(model, "finetuned", unfreeze=2)
    assert trainable_layer_names(model) == ["block4_conv1", "block4_conv2", "block4_conv3",
                                            "block5_conv1", "block5_conv2", "block5_conv3"] + HEAD
    set_stage(model, "finetuned", unfreeze=5)
    assert len(trainable_layer_names(model)) == 13 + len(HEAD)
    set_stage(model, "frozen")
    assert trainable_layer_names(model) == HEAD


def test_preprocessing_matches_keras_and_keeps_input(tiny_model):
    image = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3)).astype(np.float32)
    original = image.copy()
    layer_out = keras.Model(tiny_model.input, tiny_model.get_layer("caffe_preprocess").output)(image)
    expected = keras.applications.vgg16.preprocess_input(image.copy())
    np.testing.assert_allclose(np.asarray(layer_out), expected, atol=1e-4)
    np.testing.assert_array_equal(image, original)


def test_imagenet_offline_fails_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # empty cache
    started = time.monotonic()
    with pytest.raises(WeightsError) as info:
        build_model(32, weights="imagenet")
    assert time.monotonic() - started < 30
    message = str(info.value)
    assert VGG16.weights_file in message and "--weights" in message and str(tmp_path) in message


def test_local_weights_file(tmp_path):
    reference = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "vgg16_notop.weights.h5"
    reference.save_weights(path)
    model = build_model(32, weights=str(path))
    np.testing.assert_array_equal(
        model.get_layer("block3_conv2").get_weights()[0], reference.get_layer("block3_conv2").get_weights()[0]
    )


def test_bad_weights_files(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        build_model(32, weights=str(tmp_path / "missing.h5"))
    junk = tmp_path / "junk.weights.h5"
    junk.write_text("not hdf5")
    with pytest.raises(WeightsError, match="is not an HDF5 weights file"):
        build_model(32, weights=str(junk))
    with pytest.raises(WeightsError, match="Received: weights=resnet"):
        build_model(32, weights="resnet")


def test_saved_classifier_reloads_with_its_preprocessing(tiny_model, tmp_path):
    """A built classifier, saved, comes back through ``model_loading.load_model`` (safe mode) giving the same
    probabilities from raw [0, 255] RGB: its caffe preprocessing is a registered layer saved with the model,
    computes VGG16's caffe arithmetic and leaves the caller's array as it was."""
    from breakhis_core.models.loading import load_model

    path = tmp_path / "m.keras"
    tiny_model.save(path)
    loaded = load_model(path)
    batch = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    original = batch.copy()
    np.testing.assert_allclose(np.asarray(loaded(batch)), np.asarray(tiny_model(batch)), atol=1e-6)
    preprocess = keras.Model(loaded.inputs, loaded.get_layer("caffe_preprocess").output)
    expected = keras.applications.vgg16.preprocess_input(original.copy())
    np.testing.assert_allclose(np.asarray(preprocess(batch)), expected, atol=1e-4)
    np.testing.assert_array_equal(batch, original)
