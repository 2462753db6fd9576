"""stain.py: Macenko and Reinhard normalisation on the real BreakHis samples, and its fallbacks."""

from __future__ import annotations

import pickle
import time
import warnings

import cv2
import numpy as np
import pytest

from breakhis_core.config import STAIN_METHODS
from breakhis_core.data.arrays import load_arrays
from breakhis_core.data.records import scan
from breakhis_core.errors import ConfigError
from breakhis_core.data.images import read_image
from breakhis_core.data.stain import get_normalizer, normalize_stain

METHODS = ("macenko", "reinhard")


@pytest.fixture(scope="module")
def samples(sample_dir) -> list[np.ndarray]:
    """All 37 images of the larger sample, (460, 700, 3) uint8 RGB (the colour spread needs that many slides)."""
    return [read_image(path) for path in sorted(sample_dir.rglob("*.png"))]


def lab_mean_spread(images: list[np.ndarray]) -> np.ndarray:
    """Standard deviation across images of each image's mean CIELAB L, a, b (OpenCV 8-bit scale), ``(3,)``."""
    means = [cv2.cvtColor(image, cv2.COLOR_RGB2LAB).reshape(-1, 3).mean(axis=0) for image in images]
    return np.std(means, axis=0)


# ----------------------------------------------------------------------------- choosing a method


def test_get_normalizer():
    assert get_normalizer("none") is None
    for method in METHODS:
        normalizer = get_normalizer(method)
        image = np.full((8, 8, 3), 200, np.uint8)
        assert normalizer(image).shape == (8, 8, 3)
        pickle.loads(pickle.dumps(normalizer))  # usable from worker processes
    assert set(STAIN_METHODS) == {"none", *METHODS}


@pytest.mark.parametrize("call", [get_normalizer, lambda m: normalize_stain(np.zeros((4, 4, 3), np.uint8), m)])
def test_unknown_method_is_a_config_error(call):
    with pytest.raises(ConfigError, match="Received: stain_norm=vahadane"):
        call("vahadane")


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8)])
def test_bad_image_is_a_value_error(bad):
    with pytest.raises(ValueError, match="Received: shape="):
        normalize_stain(bad, "macenko")


# ----------------------------------------------------------------------------- real samples


@pytest.mark.parametrize("method", METHODS)
def test_real_images_keep_shape_and_input(samples, method):
    for image in samples[::9]:
        before = image.copy()
        out = normalize_stain(image, method)
        np.testing.assert_array_equal(image, before)
        assert out.shape == image.shape and out.dtype == np.uint8 and out.flags.c_contiguous
        assert not np.shares_memory(out, image)
        assert 1.0 < np.abs(out.astype(np.int16) - image).mean() < 80.0  # changed, not destroyed
        assert 40 < out.mean() < 250


@pytest.mark.parametrize("method", METHODS)
def test_normalised_slides_are_closer_in_colour(samples, method):
    before = lab_mean_spread(samples)
    after = lab_mean_spread([normalize_stain(image, method) for image in samples])
    assert (after < before).all(), (before, after)
    assert (after[1:] < 0.5 * before[1:]).all(), (before, after)  # chroma (a, b) spread at least halved


@pytest.mark.parametrize("method", METHODS)
def test_views_normalise_like_copies(samples, method):
    view = samples[0][::2, ::-1]
    np.testing.assert_array_equal(normalize_stain(view, method), normalize_stain(view.copy(), method))


@pytest.mark.parametrize("method", METHODS)
def test_fast_on_a_breakhis_image(samples, method):
    image = samples[0]
    normalize_stain(image, method)
    best = min(_timed(normalize_stain, image, method) for _ in range(3))
    assert best < 0.1, f"{method}: {best * 1000:.0f} ms for 700×460"


def test_training_pipeline_applies_the_normalizer(sample_dir):
    records = scan(sample_dir).records[:3]
    plain = load_arrays(records, 32).images
    normalised = load_arrays(records, 32, transform=get_normalizer("macenko"))
    assert normalised.images.shape == plain.shape == (3, 32, 32, 3) and not normalised.rejected
    assert not np.array_equal(normalised.images, plain)


# ----------------------------------------------------------------------------- fallbacks


def _mostly_white() -> np.ndarray:
    image = np.full((100, 100, 3), 245, np.uint8)
    image[:10, :10] = (150, 60, 160)  # 1 % tissue
    return image


def _uniform_pink() -> np.ndarray:
    return np.full((50, 70, 3), (200, 120, 180), np.uint8)


def _grey_ramp() -> np.ndarray:
    return np.repeat(np.linspace(0, 200, 64).astype(np.uint8)[None, :, None], 3, axis=2).repeat(16, axis=0)  # no colour


FALLBACKS = {
    "white": lambda: np.full((46, 70, 3), 255, np.uint8),
    "mostly_white": _mostly_white,
    "uniform_pink": _uniform_pink,
    "black": lambda: np.zeros((20, 20, 3), np.uint8),
    "one_pixel": lambda: np.full((1, 1, 3), 120, np.uint8),
    "greyscale": _grey_ramp,
    "empty": lambda: np.zeros((0, 0, 3), np.uint8),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", FALLBACKS)
def test_images_without_usable_stain_are_returned_unchanged(kind, method):
    image = FALLBACKS[kind]()
    out = normalize_stain(image, method)
    np.testing.assert_array_equal(out, image)
    assert out is not image


@pytest.mark.parametrize("method", METHODS)
def test_noise_and_two_colour_images_raise_no_numeric_warnings(method):
    noise = np.random.default_rng(0).integers(0, 256, (40, 60, 3), np.uint8)
    two_colours = np.zeros((40, 60, 3), np.uint8)
    two_colours[:, :30] = (90, 40, 150)  # haematoxylin-like
    two_colours[:, 30:] = (240, 130, 190)  # eosin-like
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for image in (noise, two_colours):
            out = normalize_stain(image, method)
            assert out.shape == image.shape and out.dtype == np.uint8


def _timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start
