"""Starting weights: the real ImageNet file offline, files that are not VGG16 no-top weights, a damaged Keras cache."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from breakhis_core import cli
from breakhis_core.errors import WeightsError
from breakhis_core.models.classifier import build_model
from breakhis_core.training.setup import prepare_run
from breakhis_core.models.backbones import VGG16
from breakhis_core.models.weights import check_notop_weights, file_sha256, install_imagenet_weights
from conftest import tiny_config

IMAGENET_BLOCK1_KERNEL_0000 = 0.42947057
"""block1_conv1 kernel[0, 0, 0, 0] of Keras' ImageNet VGG16 (a property of the published weights file)."""


def write_keras_h5(path, layers: dict[str, dict[str, np.ndarray]]) -> None:
    """Write weights in Keras' HDF5 layout: attribute ``layer_names``, a group per layer with ``weight_names``."""
    with h5py.File(path, "w") as handle:
        handle.attrs["layer_names"] = [name.encode() for name in layers]
        for name, weights in layers.items():
            group = handle.create_group(name)
            group.attrs["weight_names"] = [f"{name}/{w}".encode() for w in weights]
            for weight, value in weights.items():
                group.create_dataset(f"{name}/{weight}", data=value)


def vgg16_layers(imagenet_file) -> dict[str, dict[str, np.ndarray]]:
    """The layers of the real file, as written by :func:`write_keras_h5`."""
    def text(value) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    layers = {}
    with h5py.File(imagenet_file, "r") as handle:
        for name in map(text, handle.attrs["layer_names"]):
            weights = map(text, handle[name].attrs["weight_names"])
            layers[name] = {weight.split("/", 1)[1]: handle[name][weight][()] for weight in weights}
    return layers


def test_default_imagenet_model_holds_the_published_weights(imagenet_weights):
    model = build_model(32)  # weights="imagenet" is the default: from the Keras cache, offline
    kernel = model.get_layer("block1_conv1").get_weights()[0]
    assert kernel[0, 0, 0, 0] == pytest.approx(IMAGENET_BLOCK1_KERNEL_0000, abs=1e-7)
    random_model = build_model(32, weights="none", seed=0)
    image = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    import keras

    features = [np.asarray(keras.Model(m.input, m.get_layer("block5_pool").output)(image)) for m in (model, random_model)]
    assert not np.allclose(features[0], features[1], atol=1e-3)


@pytest.mark.parametrize("kind", ["empty", "not-hdf5", "truncated", "with-top", "other-network", "wrong-shape"])
def test_unfit_weights_files_are_refused_before_a_run_exists(kind, imagenet_weights, sample_dir, tmp_path):
    path = tmp_path / f"{kind}.h5"
    expected = {
        "empty": "is empty",
        "not-hdf5": "is not an HDF5 weights file",
        "truncated": "truncated",
        "with-top": "holds a full VGG16 with its ImageNet classifier",
        "other-network": "is not VGG16's convolutional base",
        "wrong-shape": "layer block3_conv2 has weights of shape",
    }[kind]
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "not-hdf5":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    elif kind == "truncated":
        path.write_bytes(imagenet_weights.read_bytes()[:4096])
    else:
        layers = vgg16_layers(imagenet_weights)
        if kind == "with-top":
            layers.update(flatten={}, fc1={"kernel": np.zeros((4, 4), np.float32)}, predictions={"bias": np.zeros(2)})
        elif kind == "other-network":
            layers = {"conv1_conv": {"kernel": np.zeros((7, 7, 3, 64), np.float32)}, "conv1_bn": {"gamma": np.ones(64)}}
        else:
            layers["block3_conv2"]["kernel"] = np.zeros((3, 3, 256, 128), np.float32)
        write_keras_h5(path, layers)
    runs = tmp_path / "runs"
    with pytest.raises(WeightsError) as info:
        prepare_run(tiny_config(sample_dir, weights=str(path)), runs)
    assert expected in str(info.value) and str(path) in str(info.value)
    assert not runs.exists() or not any(runs.iterdir())
    code = cli.main(["train", str(sample_dir), "--runs", str(runs), "--weights", str(path), "--quiet"])
    assert code == 2 and (not runs.exists() or not any(runs.iterdir()))


def test_damaged_keras_cache_names_the_file_to_delete(imagenet_weights, tmp_path, monkeypatch, sample_dir):
    home = tmp_path / "keras"
    (home / "models").mkdir(parents=True)
    damaged = home / "models" / VGG16.weights_file
    damaged.write_bytes(imagenet_weights.read_bytes()[:100_000])
    monkeypatch.setenv("KERAS_HOME", str(home))
    with pytest.raises(WeightsError) as info:
        prepare_run(tiny_config(sample_dir, weights="imagenet"), tmp_path / "runs")
    assert f"Delete {damaged}" in str(info.value)
    assert not (tmp_path / "runs").exists()


def test_weights_install_makes_imagenet_work_offline(imagenet_weights, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    assert cli.main(["weights", "check", str(imagenet_weights)]) == 0
    assert file_sha256(imagenet_weights) in capsys.readouterr().out
    assert cli.main(["weights", "install", str(imagenet_weights)]) == 0
    installed = tmp_path / "keras" / "models" / VGG16.weights_file
    assert installed.is_file() and not installed.is_symlink()
    assert file_sha256(installed) == file_sha256(imagenet_weights)
    check_notop_weights(installed, VGG16)
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"")
    assert cli.main(["weights", "install", str(bad)]) == 2
    assert file_sha256(installed) == file_sha256(imagenet_weights)  # a refused file replaces nothing


def test_run_with_default_weights_trains_both_stages_from_imagenet(imagenet_weights, sample_dir, tmp_path):
    """The paper's recipe as shipped (weights imagenet, recipe paper): stage 1 keeps the base at the published values,
    stage 2 changes block5 only, and the run records the file's SHA-256. (The last epochs are kept, so that stage 2's
    deployed model is one it trained, not its starting point.)"""
    from breakhis_core.models.loading import load_model
    from breakhis_core.training.train import run_training

    config = tiny_config(sample_dir, weights="imagenet", input_size=64, epochs_frozen=2, epochs_finetune=2,
                         keep_epoch="last")
    run_dir = prepare_run(config, tmp_path)
    assert run_training(run_dir) == "done"
    info = json.loads((run_dir / "run.json").read_text())
    assert info["weights"]["source"] == "imagenet"
    assert info["weights"]["sha256"] == file_sha256(imagenet_weights)
    frozen, finetuned = (load_model(run_dir / f"{stage}.keras") for stage in ("frozen", "finetuned"))
    published = build_model(64)
    for layer in ("block1_conv1", "block4_conv3", "block5_conv3"):
        np.testing.assert_array_equal(frozen.get_layer(layer).get_weights()[0], published.get_layer(layer).get_weights()[0])
    np.testing.assert_array_equal(finetuned.get_layer("block4_conv3").get_weights()[0],
                                  published.get_layer("block4_conv3").get_weights()[0])
    assert not np.array_equal(finetuned.get_layer("block5_conv3").get_weights()[0],
                              published.get_layer("block5_conv3").get_weights()[0])
