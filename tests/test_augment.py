"""breakhis_core.data.augment: the dihedral group, the shared crop/jitter op, and both paths drawing from one definition."""

from __future__ import annotations

import numpy as np
import pytest

from breakhis_core.data import augment
from breakhis_core.training import cache
from conftest import TINY_INPUT


def _asymmetric(side: int = 6) -> np.ndarray:
    """An ``(S, S, 3)`` float32 image that no flip or rotation maps onto itself."""
    return np.arange(side * side * 3, dtype=np.float32).reshape(side, side, 3)


def test_dihedral_elements_are_the_eight_flips_and_rotations_in_order():
    image = _asymmetric()
    views = augment.dihedral_views(image)
    assert views.shape == (8, 6, 6, 3)
    np.testing.assert_array_equal(views[0], image)
    np.testing.assert_array_equal(views[1], np.rot90(image))
    np.testing.assert_array_equal(views[4], image[:, ::-1])
    assert len({view.tobytes() for view in views}) == 8
    for element in range(8):
        np.testing.assert_array_equal(views[element], augment.dihedral(image, element))
    composed = {augment.dihedral(augment.dihedral(image, a), b).tobytes() for a in range(8) for b in range(8)}
    assert composed == {view.tobytes() for view in views}, "the 8 elements form a group: closed under composition"


def test_crop_and_jitter_applies_each_parameter():
    images = np.stack([_asymmetric(8), np.full((8, 8, 3), 250.0, np.float32)])
    full = np.array([[0, 0, 1, 1]] * 2, np.float32)
    ones, zeros = np.ones(2, np.float32), np.zeros(2, np.float32)
    no_noise = np.zeros_like(images)
    identity = augment.crop_and_jitter(images, full, zeros, ones, no_noise).numpy()
    np.testing.assert_allclose(identity, images, atol=1e-3)
    halved = augment.crop_and_jitter(images, full, zeros, ones / 2, no_noise).numpy()
    mean = images[0].mean()
    np.testing.assert_allclose(halved[0], (images[0] - mean) / 2 + mean, atol=1e-3)
    shifted = augment.crop_and_jitter(images, full, np.float32([10, 10]), ones, no_noise + 1).numpy()
    np.testing.assert_allclose(shifted[0], images[0] + 11, atol=1e-3)
    assert shifted[1].max() == 255.0, "clipped to [0, 255]"
    corner = augment.crop_and_jitter(images[:1], np.array([[0, 0, 0.5, 0.5]], np.float32), zeros[:1], ones[:1],
                                     no_noise[:1]).numpy()
    assert corner.shape == (1, 8, 8, 3)
    np.testing.assert_allclose(corner[0, 0, 0], images[0, 0, 0], atol=1e-3)  # box corners on pixel centres:
    np.testing.assert_allclose(corner[0, -1, -1], images[0, 3:5, 3:5].mean(axis=(0, 1)), atol=1e-3)  # y2 = 0.5 → row 3.5


def _shift_and_noise(views: np.ndarray, grey: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-view brightness shift and noise spread of views of a flat ``grey`` image (flips, crops and
    contrast leave a flat image unchanged, so only brightness and noise remain)."""
    flat = views.reshape(len(views), -1)
    return flat.mean(axis=1) - grey, flat.std(axis=1)


@pytest.mark.parametrize("path", ["tf.data", "cache"])
def test_both_paths_draw_brightness_and_noise_from_the_one_definition(path):
    grey = 128.0
    images = np.full((64, TINY_INPUT, TINY_INPUT, 3), grey, np.float32)
    if path == "tf.data":
        views = augment.augment(images, np.array([1, 0], np.int64)).numpy()
        again = augment.augment(images, np.array([1, 0], np.int64)).numpy()
    else:
        spec = cache.ViewSpec(views=1, augment=True, seed=1)
        pairs = [(index, 0) for index in range(len(images))]
        views, again = cache.make_views(images.astype(np.uint8), pairs, spec), cache.make_views(images.astype(np.uint8), pairs, spec)
    np.testing.assert_array_equal(views, again)
    shift, spread = _shift_and_noise(views, grey)
    assert np.abs(shift).max() <= augment.BRIGHTNESS + 1.0
    assert np.abs(shift).max() > augment.BRIGHTNESS / 2, "shifts spread over ±BRIGHTNESS"
    np.testing.assert_allclose(spread, augment.NOISE_STD, rtol=0.1)


def test_cache_key_follows_the_augmentation_settings(monkeypatch):
    spec = cache.ViewSpec(views=8, augment=True, seed=0)
    before = cache.part_key("images", "block4_pool", "weights", spec, (2, 2, 512))
    monkeypatch.setattr(augment, "NOISE_STD", augment.NOISE_STD * 2)
    assert cache.part_key("images", "block4_pool", "weights", spec, (2, 2, 512)) != before
