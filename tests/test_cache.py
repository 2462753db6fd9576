"""Frozen-prefix activation cache: shared-layer sub-models, views, files, feeding, and both training paths."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from breakhis_core.training import cache
from breakhis_core.training import cleanup
from breakhis_core.errors import DiskSpaceError
from breakhis_core.files import read_jsonl
from breakhis_core.models.backbones import VGG16
from breakhis_core.models.classifier import build_model, set_stage, trainable_layer_names
from breakhis_core.training.setup import prepare_run
from breakhis_core.runs.rundir import CANCEL_FILE
from breakhis_core.training.train import run_training
from conftest import TINY_INPUT, tiny_config

HISTORY_KEYS = {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds", "checkpoint_s"}


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, TINY_INPUT, TINY_INPUT, 3), dtype=np.uint8)


def test_sub_models_share_layers_and_equal_the_full_model(tmp_path):
    model = build_model(TINY_INPUT, weights="none", seed=0)
    set_stage(model, "finetuned", unfreeze=1)
    layer = VGG16.cache_split_layer(1)
    assert layer == "block4_pool"
    x = _images(4).astype(np.float32)
    full = np.asarray(model(x, training=False))
    activations = cache.prefix_model(model, layer)(x, training=False)
    stage2 = cache.suffix_model(model, layer)
    np.testing.assert_allclose(np.asarray(stage2(activations, training=False)), full, rtol=1e-5, atol=1e-6)
    stage1 = cache.suffix_model(model, "head_pool")
    pooled = keras.layers.GlobalAveragePooling2D()(model.get_layer("block5_pool")(
        model.get_layer("block5_conv3")(model.get_layer("block5_conv2")(model.get_layer("block5_conv1")(activations)))))
    np.testing.assert_allclose(np.asarray(stage1(pooled, training=False)), full, rtol=1e-5, atol=1e-6)
    assert [w.name for w in stage2.trainable_weights] == [w.name for w in model.trainable_weights]

    # Training the sub-model trains the full model; the full model saves and loads as an ordinary model.
    stage2.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    stage2.fit(np.asarray(activations), np.array([0, 1, 0, 1]), epochs=1, verbose=0)
    after = np.asarray(model(x, training=False))
    assert not np.allclose(after, full)
    np.testing.assert_allclose(np.asarray(stage2(activations, training=False)), after, rtol=1e-5, atol=1e-6)
    model.save(tmp_path / "full.keras")
    loaded = keras.saving.load_model(tmp_path / "full.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)), after, rtol=1e-5, atol=1e-6)
    assert [l.name for l in loaded.layers] == [l.name for l in model.layers]


@pytest.mark.parametrize("unfreeze, expected", [(1, "block4_pool"), (0, "block5_pool"), (2, "block3_pool"),
                                                (4, "block1_pool"), (5, None)])
def test_cached_layer_is_the_last_layer_of_the_last_frozen_block(tiny_model, unfreeze, expected):
    assert VGG16.cache_split_layer(unfreeze) == expected
    if expected is not None:  # nothing the prefix computes trains in stage 2
        set_stage(tiny_model, "finetuned", unfreeze)
        try:
            assert not cache.prefix_model(tiny_model, expected).trainable_weights
        finally:
            set_stage(tiny_model, "frozen")


def test_views_cover_the_dihedral_group_and_are_deterministic():
    spec = cache.ViewSpec(views=8, augment=True, seed=3)
    params = cache.view_parameters(5, spec, TINY_INPUT)
    assert sorted(p["element"] for p in params) == list(range(8)), "K=8: every flip/rotation exactly once"
    for p in params:
        scale = p["box"][2] - p["box"][0]
        assert 0.8 <= scale <= 1.0 and p["box"].min() >= 0 and p["box"].max() <= 1.0 + 1e-6
        assert -20 <= p["brightness"] <= 20 and 0.85 <= p["contrast"] <= 1.15
    twelve = [p["element"] for p in cache.view_parameters(5, cache.ViewSpec(12, True, 3), TINY_INPUT)]
    assert sorted(twelve[:8]) == list(range(8)) and len(set(twelve[8:])) == 4
    images = _images(3)
    pairs = [(0, 0), (2, 7), (1, 3)]
    first = cache.make_views(images, pairs, spec)
    np.testing.assert_array_equal(first, cache.make_views(images, pairs[::-1], spec)[::-1])
    assert first.shape == (3, TINY_INPUT, TINY_INPUT, 3) and first.min() >= 0 and first.max() <= 255
    plain = cache.make_views(images, [(1, 0)], cache.ViewSpec(1, False, 3))
    np.testing.assert_array_equal(plain[0], images[1])


def _mean_prefix(x):
    return np.asarray(x).reshape(len(x), 4, TINY_INPUT // 4, 4, TINY_INPUT // 4, 3).mean(axis=(2, 4))


def test_part_files_roundtrip_and_never_look_complete_when_broken(tmp_path):
    images, labels = _images(5), np.array([0, 1, 1, 0, 1])
    spec = cache.ViewSpec(3, True, 0)
    batches = []
    part = cache.build_part(tmp_path / "part", images, labels, spec, _mean_prefix, "test", 4, batches.append)
    assert part.activations.shape == (5, 3, 4, 4, 3) and part.activations.dtype == np.float16
    assert batches == [1, 2, 3, 4]
    expected = _mean_prefix(cache.make_views(images, [(2, 1)], spec))[0]
    np.testing.assert_allclose(part.activations[2, 1], expected, rtol=1e-3, atol=0.1)
    np.testing.assert_array_equal(cache.open_part(tmp_path / "part").labels, labels)

    features = cache.derive_features(part, "features-x", lambda a: np.asarray(a).mean(axis=(1, 2)), 7)
    assert features.shape == (5, 3, 3)
    np.testing.assert_allclose(features[4, 2], part.activations[4, 2].astype(np.float32).mean(axis=(0, 1)), rtol=1e-2)

    # A cancelled build leaves no file behind, and a truncated file is not a cache.
    def cancel(number):
        if number == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.build_part(tmp_path / "other", images, labels, spec, _mean_prefix, "test", 4, cancel)
    assert cache.open_part(tmp_path / "other") is None and not list((tmp_path / "other").iterdir())
    with open(tmp_path / "part" / "activations.f16", "r+b") as handle:
        handle.truncate(100)
    assert cache.open_part(tmp_path / "part") is None
    dead = tmp_path / "part" / "activations.f16.tmp-999999999"
    dead.write_bytes(b"x")
    cache.build_part(tmp_path / "part", images, labels, spec, _mean_prefix, "test", 4)
    assert not dead.exists() and cache.open_part(tmp_path / "part") is not None


def test_float16_overflow_is_refused(tmp_path):
    with pytest.raises(Exception, match="float16 range"):
        cache.build_part(tmp_path / "p", _images(2), np.array([0, 1]), cache.ViewSpec(1, False, 0),
                         lambda x: np.full((len(x), 2), 1e6, np.float32), "block4_pool", 2)


def test_not_enough_disk_space_is_refused_with_the_figures(tmp_path, monkeypatch):
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda path: _Usage(2 << 30))
    with pytest.raises(DiskSpaceError, match=r"needs 3\.0 GiB .* only 2\.0 GiB is free.*--no-cache"):
        cache.check_free_space(tmp_path / "missing" / "folder", 3 << 30, "1 image")
    assert cache.estimate_bytes(5536, 1582, 8, (14, 14, 512)) == (5536 * 8 + 1582) * 14 * 14 * 512 * 2


class _Usage:
    def __init__(self, free):
        self.free = free


def test_feed_draws_one_view_per_image_each_epoch_and_resumes_identically():
    n, views = 10, 4
    array = np.zeros((n, views, 1), np.float16)
    for i in range(n):
        array[i, :, 0] = [i * 10 + v for v in range(views)]
    labels = np.arange(n) % 2
    full = [(x.numpy()[:, 0], y.numpy()) for x, y in cache.feed_dataset(array, labels, 4, 0, "finetuned", 0, 3, True)]
    assert len(full) == 9  # 3 epochs × ceil(10 / 4)
    epochs = [np.concatenate([x for x, _ in full[e * 3 : e * 3 + 3]]) for e in range(3)]
    for values in epochs:
        assert sorted(values // 10) == list(range(n))  # every image once per epoch
    assert len({tuple(np.sort(v)) for v in epochs}) > 1  # views differ between epochs
    resumed = [x.numpy()[:, 0] for x, _ in cache.feed_dataset(array, labels, 4, 0, "finetuned", 1, 3, True)]
    np.testing.assert_array_equal(np.concatenate(resumed), np.concatenate(epochs[1:]))
    again = [x.numpy()[:, 0] for x, _ in cache.feed_dataset(array, labels, 4, 0, "finetuned", 0, 3, True)]
    np.testing.assert_array_equal(np.concatenate(again), np.concatenate([x for x, _ in full]))
    evaluation = np.concatenate([x.numpy()[:, 0] for x, _ in cache.feed_dataset(array, labels, 4, 0, "frozen", 0, 1, False)])
    np.testing.assert_array_equal(evaluation, np.arange(n) * 10)


# ----------------------------------------------------------------------------- training paths


def _check_contract(run_dir: Path) -> dict:
    assert json.loads((run_dir / "status.json").read_text())["status"] == "done"
    for stage in ("frozen", "finetuned"):
        (line,) = read_jsonl(run_dir / f"history_{stage}.jsonl")
        assert HISTORY_KEYS <= set(line)
    finetuned = keras.saving.load_model(run_dir / "finetuned.keras", safe_mode=True)
    assert trainable_layer_names(finetuned) == ["block5_conv1", "block5_conv2", "block5_conv3", "head_dense", "head_bn", "predictions"]
    assert json.loads((run_dir / "metrics.json").read_text())["models"].keys() == {"frozen", "finetuned"}
    return json.loads((run_dir / "run.json").read_text())


def test_cached_run_records_its_path_and_reuses_the_cache(sample_dir, tmp_path):
    config = tiny_config(sample_dir, cache="on", cache_views=2, split="image", epochs_finetune=1)
    first = prepare_run(config, tmp_path)
    assert run_training(first) == "done"
    info = _check_contract(first)
    assert info["training_path"] == "cached (2 views)"
    assert info["cache"]["layer"] == "block4_pool" and info["cache"]["reused"] is False
    counts = info["split"]["counts"]
    views = counts["train"]["images"] * 2 + counts["val"]["images"]
    assert info["cache"]["bytes"] == views * (2 * 2 * 512 + 512) * 2  # block4_pool 2×2×512 at 32×32 + 512 head inputs
    folders = sorted((tmp_path / ".cache" / "activations").iterdir())
    assert len(folders) == 2 and all((f / "meta.json").is_file() for f in folders)
    assert sorted(info["cache"]["parts"].values()) == [f.name for f in folders]
    second = prepare_run(config, tmp_path)
    assert run_training(second) == "done"
    assert json.loads((second / "run.json").read_text())["cache"]["reused"] is True
    assert sorted((tmp_path / ".cache" / "activations").iterdir()) == folders
    assert cleanup.delete_run(first.name, tmp_path) == 0  # the second run uses the same parts
    assert cleanup.delete_run(second.name, tmp_path) >= info["cache"]["bytes"]  # activations + head inputs
    assert cleanup.cache_usage(tmp_path)[1:] == (0, 0)


def test_plain_path_stays_available(sample_dir, tmp_path):
    run_dir = prepare_run(tiny_config(sample_dir, cache="off", split="image"), tmp_path)
    assert run_training(run_dir) == "done"
    assert _check_contract(run_dir)["training_path"] == "plain"
    assert not (tmp_path / ".cache").exists()


def test_cancel_while_caching_then_resume(sample_dir, tmp_path):
    run_dir = prepare_run(tiny_config(sample_dir, cache="on", cache_views=2, epochs_finetune=0), tmp_path)

    def cancel_while_caching(event):
        if event.get("stage") == "caching" and event.get("batch", 0) >= 1:
            (run_dir / CANCEL_FILE).touch()

    assert run_training(run_dir, listener=cancel_while_caching) == "cancelled"
    assert json.loads((run_dir / "status.json").read_text())["status"] == "cancelled"
    leftovers = [p for p in (tmp_path / ".cache").rglob("*") if p.is_file()]
    assert not leftovers, leftovers
    assert run_training(run_dir) == "done"
    assert json.loads((run_dir / "progress.json").read_text())["stage"] == "done"


def test_full_disk_fails_the_run_with_the_figures(sample_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda path: _Usage(1 << 20))
    run_dir = prepare_run(tiny_config(sample_dir, cache="on"), tmp_path)
    with pytest.raises(DiskSpaceError):
        run_training(run_dir)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and "DiskSpaceError" in status["error"] and "--no-cache" in status["error"]


def test_cli_train_options_fill_the_config(sample_dir):
    from breakhis_core.cli import build_parser, config_from_args

    def parse(*options):
        return config_from_args(build_parser().parse_args(["train", str(sample_dir), *options]))

    config = parse("--no-cache", "--cache-views", "4", "--strategy", "mirrored", "--mixed-precision", "off")
    assert (config.cache, config.cache_views, config.strategy, config.mixed_precision) == ("off", 4, "mirrored", "off")
    assert (parse().cache, parse().mixed_precision, parse("--cache", "on").cache) == ("auto", "auto", "on")
