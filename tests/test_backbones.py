"""The backbone registry: every network builds, splits for the activation cache, trains through the library, records
itself in its run and explains; unknown names and unfit or missing weights are refused with clear messages."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from breakhis_core import cli
from breakhis_core.config import TrainConfig
from breakhis_core.data.images import read_image
from breakhis_core.data.samples import breakhis_sample
from breakhis_core.errors import ConfigError, WeightsError
from breakhis_core.models import backbones
from breakhis_core.models.backbones import BACKBONE_NAMES, BACKBONES, find_gradcam_layer, get_backbone
from breakhis_core.models.classifier import build_model, set_stage, trainable_layer_names
from breakhis_core.models.loading import load_model
from breakhis_core.models.weights import check_notop_weights
from breakhis_core.training import cache
from conftest import TINY_INPUT

HEAD = ["head_pool", "head_dense", "head_bn", "head_dropout", "predictions"]
CHEAPER_CHECKS = ["densenet121", "efficientnetv2b0"]
"""Backbones whose one library training step is checked in detail here (every backbone also trains end to end below)."""


@pytest.fixture(scope="module")
def tiny_models() -> dict[str, keras.Model]:
    """Each backbone's classifier at 32 px, random weights, built once for this module."""
    return {name: build_model(TINY_INPUT, weights="none", seed=0, backbone=name) for name in BACKBONE_NAMES}


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (n, TINY_INPUT, TINY_INPUT, 3)).astype(np.float32)


def test_unknown_backbone_is_refused_listing_the_known_ones(breakhis_dir, tmp_path, capsys):
    with pytest.raises(ConfigError) as info:
        get_backbone("resnet18")
    assert "resnet18" in str(info.value) and all(name in str(info.value) for name in BACKBONE_NAMES)
    with pytest.raises(ConfigError, match="known backbones: vgg16, resnet50v2"):
        build_model(TINY_INPUT, weights="none", backbone="resnet18")
    code = cli.main(["train", str(breakhis_dir), "--runs", str(tmp_path), "--backbone", "resnet18", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "resnet18" in err and all(name in err for name in BACKBONE_NAMES)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_each_backbone_builds_with_the_head_and_its_preprocessing_inside(tiny_models, name):
    model, backbone = tiny_models[name], BACKBONES[name]
    names = [layer.name for layer in model.layers]
    assert model.name == f"breakhis_{name}" and model.input_shape == (None, TINY_INPUT, TINY_INPUT, 3)
    assert names[-5:] == HEAD and model.output_shape == (None, 2)
    assert len(model.get_layer(backbone.gradcam_layer).output.shape) == 4
    assert backbone.preprocess_layer is None or names[1] == backbone.preprocess_layer
    assert trainable_layer_names(model) == ["head_dense", "head_bn", "predictions"]  # stage "frozen"


@pytest.mark.parametrize("name, preprocess", [("resnet50v2", keras.applications.resnet_v2.preprocess_input),
                                              ("densenet121", keras.applications.densenet.preprocess_input)])
def test_preprocessing_layers_do_keras_arithmetic(tiny_models, name, preprocess):
    image = _images(2)
    original = image.copy()
    model = tiny_models[name]
    layer = keras.Model(model.input, model.get_layer(BACKBONES[name].preprocess_layer).output)
    np.testing.assert_allclose(np.asarray(layer(image)), preprocess(image.copy()), atol=1e-5)
    np.testing.assert_array_equal(image, original)


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_blocks_cover_the_base_and_unfreeze_the_last_ones(tiny_models, name):
    model, backbone = tiny_models[name], BACKBONES[name]
    blocks = backbone.block_layers(model)
    base = [layer for block in blocks for layer in block]
    assert len(base) == len({id(layer) for layer in base})
    assert base[-1].name == backbone.last_layer and model.layers[model.layers.index(base[-1]) + 1].name == "head_pool"
    try:
        set_stage(model, "finetuned", 1)
        last_block = [layer.name for layer in blocks[-1] if layer.trainable_weights]
        assert last_block and trainable_layer_names(model) == last_block + ["head_dense", "head_bn", "predictions"]
        set_stage(model, "finetuned", len(blocks))
        assert {layer.name for layer in base if layer.weights} <= set(trainable_layer_names(model))
        with pytest.raises(ConfigError, match=f"0..{len(blocks)}"):
            set_stage(model, "finetuned", len(blocks) + 1)
    finally:
        set_stage(model, "frozen")


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_cache_prefix_then_suffix_equals_the_full_model_at_every_split(tiny_models, name):
    """The activation cache's sub-models, cut from the graph at each block boundary (skip connections inside the
    suffix), compute the full model's output (float32)."""
    model, backbone = tiny_models[name], BACKBONES[name]
    x = _images(3)
    full = np.asarray(model(x, training=False))
    splits = [backbone.cache_split_layer(n) for n in range(len(backbone.blocks))]
    assert splits[1] == backbone.blocks[-2].last_layer and backbone.cache_split_layer(len(backbone.blocks)) is None
    for layer in splits:
        activations = cache.prefix_model(model, layer)(x, training=False)
        suffix = cache.suffix_model(model, layer)
        np.testing.assert_allclose(np.asarray(suffix(activations, training=False)), full, rtol=0, atol=1e-5)
        features = cache.suffix_model(model, layer, "head_pool")(activations, training=False)
        head = cache.suffix_model(model, "head_pool")
        np.testing.assert_allclose(np.asarray(head(features, training=False)), full, rtol=0, atol=1e-5)


def test_a_suffix_that_needs_tensors_from_before_its_start_is_refused(tiny_models):
    """Inside a residual unit the shortcut reads a tensor from before the cut: no sub-model from there."""
    with pytest.raises(ValueError, match="cannot be split at conv5_block1_1_conv"):
        cache.suffix_model(tiny_models["resnet50v2"], "conv5_block1_1_conv")


@pytest.mark.parametrize("name", CHEAPER_CHECKS)
def test_each_backbone_trains_a_step_through_the_library_and_explains(tiny_models, name, tmp_path):
    """Stage 2's sub-model on cached activations (the cached path's fit) trains the last block of the full model;
    the saved model loads (its preprocessing layer included) and explains at the backbone's Grad-CAM layer."""
    from breakhis_core.inference.predict import Predictor
    from breakhis_core.models.classifier import compile_model

    model = build_model(TINY_INPUT, weights="none", seed=0, backbone=name)
    backbone = BACKBONES[name]
    set_stage(model, "finetuned", 1)
    compile_model(model, 1e-2)
    layer = backbone.cache_split_layer(1)
    x, y = _images(4), np.array([0, 1, 0, 1])
    activations = np.asarray(cache.prefix_model(model, layer)(x, training=False))
    suffix = cache.suffix_model(model, layer)
    suffix.compile(optimizer=model.optimizer, loss="sparse_categorical_crossentropy")
    trained = next(layer for layer in backbone.block_layers(model)[-1] if layer.trainable_weights)
    kernel = trained.get_weights()[0].copy()
    suffix.fit(activations, y, epochs=1, batch_size=4, verbose=0)
    assert not np.array_equal(trained.get_weights()[0], kernel)  # the shared layer of the full model trained
    model.save(tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)), np.asarray(model(x, training=False)), atol=1e-5)
    predictor = Predictor(loaded, "model", precision="off")
    assert predictor.layer == backbone.gradcam_layer  # found from the layer names
    image = read_image(sorted(breakhis_sample().rglob("*.png"))[0])
    (prediction,) = predictor.predict([image], ["x.png"], cam="gradcam")
    assert prediction.heatmap.shape == image.shape[:2] and np.isfinite(prediction.heatmap).all()


@pytest.mark.parametrize("name", [name for name in BACKBONE_NAMES if name != "vgg16"])
def test_each_backbone_trains_end_to_end_records_itself_and_explains(name, tmp_path, capsys):
    """``breakhis train --backbone NAME`` on the in-repo sample, the paper's recipe on the cached path (for ResNet50V2
    the suffix from conv4_block6_out holds conv5's residual units); the run records the backbone, the Grad-CAM layer
    and the cache split; ``Predictor.from_run`` predicts with that layer and a Grad-CAM map comes out. (VGG16 trains
    end to end in test_cache.py and test_weights.py.)"""
    from breakhis_core.inference.predict import Predictor
    from breakhis_core.runs import registry

    backbone = get_backbone(name)
    code = cli.main(["train", str(breakhis_sample()), "--runs", str(tmp_path), "--backbone", name,
                     "--input-size", str(TINY_INPUT), "--weights", "none", "--recipe", "paper", "--cache", "on",
                     "--epochs-frozen", "1", "--epochs-finetune", "1", "--batch-size", "8", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    run_dir = Path(captured.out.strip().splitlines()[-1])
    info = json.loads((run_dir / "run.json").read_text())
    split = backbone.cache_split_layer(1)
    assert info["model"] == {"backbone": name, "gradcam_layer": backbone.gradcam_layer, "cache_split_layer": split}
    assert info["cache"]["layer"] == split
    if name == "resnet50v2":
        assert split == "conv4_block6_out"  # a residual stage's output: conv5's units train on the cache
    assert TrainConfig.load(run_dir / "config.json").backbone == name
    run = registry.load_run(run_dir.name, tmp_path)
    predictor = Predictor.from_run(run, "finetuned", precision="off")
    assert predictor.layer == backbone.gradcam_layer and predictor.model.name == f"breakhis_{name}"
    paths = sorted(breakhis_sample().rglob("*.png"))[:2]
    images = [read_image(path) for path in paths]
    predictions = predictor.predict(images, [path.name for path in paths], cam="gradcam")
    assert all(0 <= p.p_malignant <= 1 for p in predictions)
    assert predictions[0].heatmap.shape == images[0].shape[:2] and np.isfinite(predictions[0].heatmap).all()


def test_the_recorded_gradcam_layer_wins_and_a_record_less_model_is_recognised(tiny_models, tmp_path):
    """An imported file records what its layer names tell; a network of no known backbone falls back to its last
    convolution output, and says so."""
    from breakhis_core.inference.predict import Predictor
    from breakhis_core.runs import registry
    from breakhis_core.runs.transfer import import_model

    tiny_models["densenet121"].save(tmp_path / "densenet.keras")
    run = import_model(tmp_path / "densenet.keras", tmp_path / "runs")
    assert run.info["model"] == {"backbone": "densenet121", "gradcam_layer": "relu",
                                 "gradcam_layer_found_by": "backbone densenet121 recognised from the layer names"}
    info = json.loads((run.path / "run.json").read_text())
    info["model"]["gradcam_layer"] = "conv5_block16_concat"
    (run.path / "run.json").write_text(json.dumps(info))
    assert Predictor.from_run(registry.load_run(run.run_id, tmp_path / "runs"), precision="off").layer == "conv5_block16_concat"

    inputs = keras.Input((TINY_INPUT, TINY_INPUT, 3))
    x = keras.layers.Conv2D(4, 3, name="first")(inputs)
    x = keras.layers.Conv2D(4, 3, name="second")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    plain = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    found = find_gradcam_layer(plain)
    assert (found.layer, found.backbone, found.found_by) == ("second", None, "last convolution output")
    assert find_gradcam_layer(tiny_models["vgg16"]).layer == "block5_conv3"


def test_imagenet_weights_missing_offline_name_the_expected_file(tmp_path, monkeypatch, breakhis_dir, capsys):
    """No file in the Keras cache and no network: the clear offline error naming the file and where it goes."""
    def offline(*args, **kwargs):
        raise OSError("URL fetch failure: no network")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(keras.utils, "get_file", offline)
    expected = tmp_path / "keras" / "models" / "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
    with pytest.raises(WeightsError) as info:
        build_model(TINY_INPUT, weights="imagenet", backbone="resnet50v2")
    assert str(expected) in str(info.value) and "--weights none" in str(info.value)
    code = cli.main(["train", str(breakhis_dir), "--runs", str(tmp_path / "runs"), "--backbone", "resnet50v2",
                     "--weights", "imagenet", "--quiet"])
    assert code == 2 and str(expected) in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_another_backbones_weights_file_is_refused_naming_both(tmp_path):
    """A VGG16 no-top file (Keras' HDF5 layout) given to ResNet50V2, and a ResNet50V2 one given to VGG16."""
    def write(path, network):
        with h5py.File(path, "w") as handle:
            layers = [layer for layer in network.layers if layer.weights]
            handle.attrs["layer_names"] = [layer.name.encode() for layer in layers]
            for layer in layers:
                group = handle.create_group(layer.name)
                names = [f"{layer.name}/w{i}" for i in range(len(layer.weights))]
                group.attrs["weight_names"] = [n.encode() for n in names]
                for n, weight in zip(names, layer.weights):
                    group.create_dataset(n, shape=tuple(weight.shape), dtype="float32")  # unwritten: all zeros, sparse

    vgg16 = tmp_path / "vgg16_notop.h5"
    write(vgg16, keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)))
    resnet = tmp_path / "resnet50v2_notop.h5"
    write(resnet, keras.applications.ResNet50V2(include_top=False, weights=None, input_shape=(32, 32, 3)))
    check_notop_weights(vgg16, backbones.VGG16)
    check_notop_weights(resnet, backbones.RESNET50V2)
    with pytest.raises(WeightsError, match="holds VGG16's no-top weights, not ResNet50V2's") as info:
        build_model(TINY_INPUT, weights=str(vgg16), backbone="resnet50v2")
    assert str(vgg16) in str(info.value)
    with pytest.raises(WeightsError, match="holds ResNet50V2's no-top weights, not VGG16's"):
        check_notop_weights(resnet, backbones.VGG16)
