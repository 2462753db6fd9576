"""explain.py: CAM shapes and ranges at the image's own size, agreement with tf-keras-vis, overlays."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

from breakhis_core.inference import explain as ex
from breakhis_core.data.images import decode_image, read_image
from breakhis_core.models.classifier import build_model, compile_model, set_stage


@pytest.fixture(scope="module")
def sample_image(sample_files) -> np.ndarray:
    """A real 700×460 BreakHis image, (460, 700, 3) uint8."""
    return read_image(sample_files[0])


def _model(seed: int, size: int = 32) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return build_model(size, weights="none", seed=seed)


@pytest.mark.parametrize("method", ex.METHODS)
def test_heatmap_has_the_image_size_and_lies_in_unit_range(tiny_model, sample_image, method):
    original = sample_image.copy()
    explanation = ex.explain(tiny_model, sample_image, method, max_maps=4)
    assert sample_image.shape == (460, 700, 3)
    assert explanation.heatmap.shape == (460, 700)
    assert explanation.heatmap.dtype == np.float32
    assert 0.0 <= explanation.heatmap.min() and explanation.heatmap.max() <= 1.0
    assert explanation.class_index == int(np.argmax(explanation.probabilities))
    assert explanation.probabilities.shape == (2,) and explanation.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(sample_image, original)
    assert explanation.image is not sample_image
    np.testing.assert_array_equal(explanation.image, original)


def test_chosen_class_is_explained(tiny_model, sample_image):
    for class_index in (0, 1):
        assert ex.explain(tiny_model, sample_image, "gradcam++", class_index=class_index).class_index == class_index


def test_direct_gradcam_matches_tf_keras_vis(tiny_model):
    with warnings.catch_warnings():  # tf-keras-vis imports scipy.ndimage.interpolation (deprecated)
        warnings.simplefilter("ignore", DeprecationWarning)
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
        from tf_keras_vis.utils.scores import CategoricalScore

    images = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    probabilities, maps = ex.explainer_for(tiny_model).gradcam_all_classes(images)
    np.testing.assert_allclose(probabilities, np.asarray(tiny_model(images)), atol=1e-5)
    reference = Gradcam(tiny_model, model_modifier=ReplaceToLinear())
    for class_index in (0, 1):
        expected = reference(
            CategoricalScore([class_index] * 3), images, penultimate_layer="block5_conv3",
            seek_penultimate_conv_layer=False, expand_cam=False, normalize_cam=False,
        )
        np.testing.assert_allclose(maps[:, class_index], np.asarray(expected), rtol=1e-4, atol=1e-6)


def test_cams_differ_between_models(sample_image):
    first = ex.explain(_model(1), sample_image, "gradcam++")
    second = ex.explain(_model(2), sample_image, "gradcam++")
    assert first.heatmap.max() > 0 and second.heatmap.max() > 0
    assert not np.allclose(first.heatmap, second.heatmap, atol=1e-3)


def test_explainer_follows_weight_changes_without_retracing(sample_image):
    model = _model(3)
    explainer = ex.explainer_for(model)
    before = ex.explain(model, sample_image, "gradcam")
    set_stage(model, "finetuned")
    compile_model(model, 0.05)
    batch = np.stack([sample_image[:32, :32], sample_image[-32:, -32:]])
    model.train_on_batch(batch.astype(np.float32), np.array([0, 1]))
    after = ex.explain(model, sample_image, "gradcam")
    assert ex.explainer_for(model) is explainer
    assert not np.allclose(before.probabilities, after.probabilities)
    explainer.gradcam_all_classes(np.zeros((5, 32, 32, 3), np.uint8))
    assert explainer._gradcam_fn.experimental_get_tracing_count() == 1


def test_invalid_arguments_raise(tiny_model, sample_image):
    with pytest.raises(ValueError, match="method="):
        ex.explain(tiny_model, sample_image, "lime")
    with pytest.raises(ValueError, match="class_index="):
        ex.explain(tiny_model, sample_image, class_index=2)
    with pytest.raises(ValueError, match="max_maps="):
        ex.explain(tiny_model, sample_image, "scorecam", max_maps=0)
    with pytest.raises(ValueError, match="layer="):
        ex.explain(tiny_model, sample_image, layer="no_such_layer")


def test_overlay_keeps_size_and_blends(sample_image):
    heatmap = np.linspace(0, 1, 460 * 700, dtype=np.float32).reshape(460, 700)
    original = sample_image.copy()
    blended = ex.overlay(sample_image, heatmap, alpha=0.5, colormap="turbo")
    assert blended.shape == (460, 700, 3) and blended.dtype == np.uint8
    np.testing.assert_array_equal(ex.overlay(sample_image, heatmap, alpha=0.0), sample_image)
    np.testing.assert_array_equal(ex.overlay(sample_image, heatmap, alpha=1.0), ex.colorize(heatmap))
    assert ex.overlay(sample_image, heatmap[::10, ::10], alpha=0.3).shape == (460, 700, 3)
    np.testing.assert_array_equal(sample_image, original)
    assert decode_image(ex.overlay_png(sample_image, heatmap)).shape == (460, 700, 3)
    with pytest.raises(ValueError, match="colormap="):
        ex.colorize(heatmap, "rainbowish")
    with pytest.raises(ValueError, match="alpha="):
        ex.overlay(sample_image, heatmap, alpha=1.5)


def test_normalize_map():
    assert ex.normalize_map(np.zeros((3, 4))).max() == 0.0
    np.testing.assert_allclose(ex.normalize_map(np.array([[0.0, 2.0], [1.0, 4.0]])), [[0, 0.5], [0.25, 1]])
