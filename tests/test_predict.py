"""predict.py: magnification, batched prediction, TTA, CAMs, tiling, routing and case verdicts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from breakhis_core.inference import explain, predict as pr
from breakhis_core.data.augment import dihedral_views
from breakhis_core.config import TrainConfig
from breakhis_core.errors import BreakHisError, ModelFileError, RunNotFoundError
from breakhis_core.data.images import read_image
from breakhis_core.runs.registry import Run


@pytest.fixture(scope="module")
def samples(sample_files) -> tuple[list[np.ndarray], list[str]]:
    """The first 6 sample images ((460, 700, 3) uint8) and their file names."""
    files = sample_files[:6]
    return [read_image(f) for f in files], [f.name for f in files]


@pytest.fixture(scope="module")
def predictor(tiny_model) -> pr.Predictor:
    return pr.Predictor(tiny_model, "tiny")


def test_magnification_and_slide_from_every_sample_name(sample_files):
    for path in sample_files:
        assert pr.magnification_from_name(path.name) == int(path.parent.name.removesuffix("X"))
        assert pr.slide_from_name(path.name) == path.parent.parent.name.split("_", 3)[-1]
    assert pr.magnification_from_name("capture.png") is None
    assert pr.slide_from_name("capture.png") is None


def test_magnification_given_wins_over_the_name():
    assert pr.resolve_magnification("SOB_B_A-14-22549AB-40-001.png") == (40, "filename")
    assert pr.resolve_magnification("SOB_B_A-14-22549AB-40-001.png", "100X") == (100, "given")
    assert pr.resolve_magnification("capture.png") == (None, "unknown")
    assert pr.normalize_magnification("all") is None
    with pytest.raises(BreakHisError, match="magnification=50"):
        pr.normalize_magnification(50)


def test_batched_predictions(predictor, samples):
    images, names = samples
    originals = [image.copy() for image in images]
    predictions = predictor.predict(images, names, magnifications=[None, 200, None, None, None, None])
    assert [p.name for p in predictions] == names
    for p, name in zip(predictions, names):
        assert p.p_benign + p.p_malignant == pytest.approx(1.0, abs=1e-5)
        assert p.verdict == ("malignant" if p.p_malignant >= 0.5 else "benign")
        assert p.confidence == pytest.approx(max(p.p_benign, p.p_malignant))
        assert p.model_id == "tiny" and p.route == "all-magnification model tiny"
        assert p.image_size == (460, 700) and "resized to 32×32" in p.input_rule
        assert p.heatmap is None and p.tiling is None and p.tta_p_malignant is None
    assert predictions[0].magnification_source == "filename"
    assert (predictions[1].magnification, predictions[1].magnification_source) == (200, "given")
    one_by_one = [predictor.predict([image], [name])[0].p_malignant for image, name in zip(images, names)]
    # Without oneDNN, float32 sums over a batch of 6 and of 1 differ from run to run (Eigen's thread split): up
    # to ~2e-4 in P(malignant) through this random, unnormalised base; the images differ by ~1e-2
    np.testing.assert_allclose([p.p_malignant for p in predictions], one_by_one, atol=5e-4)
    for image, original in zip(images, originals):
        np.testing.assert_array_equal(image, original)
    assert set(predictions[0].to_dict()) >= {"name", "p_malignant", "verdict", "route", "input_rule"}


def test_tta_uses_eight_views(predictor, samples):
    image, name = samples[0][0], samples[1][0]
    views = dihedral_views(cv2.resize(image, (32, 32)))
    assert views.shape == (8, 32, 32, 3)
    np.testing.assert_array_equal(views[0], cv2.resize(image, (32, 32)))
    assert len({view.tobytes() for view in views}) == 8
    p = predictor.predict([image], [name], tta=True)[0]
    assert p.tta_p_malignant.shape == (8,)
    assert p.p_malignant == pytest.approx(float(p.tta_p_malignant.mean()), abs=1e-6)
    assert p.tta_std == pytest.approx(float(p.tta_p_malignant.std()), abs=1e-6)
    assert "8 flips/rotations" in p.input_rule


def test_low_confidence_rule():
    assert pr.low_confidence(0.55) == (True, "P(malignant) 0.55 is within 0.15 of 0.5")
    assert pr.low_confidence(0.9) == (False, "")
    flagged, reason = pr.low_confidence(0.9, tta_std=0.2)
    assert flagged and "TTA spread" in reason


@pytest.mark.parametrize("method", explain.METHODS)
def test_heatmaps_at_image_size(predictor, samples, method):
    images, names = samples
    originals = [image.copy() for image in images[:2]]
    predictions = predictor.predict(images[:2], names[:2], cam=method, max_maps=4)
    for p, image in zip(predictions, images):
        assert p.heatmap.shape == image.shape[:2] == (460, 700)
        assert p.heatmap.dtype == np.float32 and 0.0 <= p.heatmap.min() and p.heatmap.max() <= 1.0
        assert p.cam_method == method and p.cam_class == 1  # by default the evidence for malignant, whatever the verdict
    for image, original in zip(images[:2], originals):
        np.testing.assert_array_equal(image, original)


def test_gradcam_of_a_prediction_matches_explain(predictor, tiny_model, samples):
    image = samples[0][0]
    p = predictor.predict([image], cam="gradcam", cam_class=1)[0]
    of_verdict = predictor.predict([image], cam="gradcam", cam_class=None)[0]
    assert of_verdict.cam_class == int(of_verdict.verdict == "malignant")
    reference = explain.explain(predictor.compute_model, image, "gradcam", class_index=1)  # bf16 on CPUs with it
    np.testing.assert_allclose(p.heatmap, reference.heatmap, atol=1e-5)
    assert p.p_malignant == pytest.approx(float(reference.probabilities[1]), abs=1e-5)


def test_tiling_a_large_image_stitches_a_full_heat_map(predictor, samples):
    large = cv2.resize(samples[0][0], (2000, 1400))
    original = large.copy()
    p = predictor.predict([large], ["capture.png"], tile=True, cam="gradcam", tta=True)[0]
    assert (p.tiling.rows, p.tiling.cols, p.tiling.tile_size) == (4, 3, (460, 700))
    assert p.tiling.p_malignant.shape == (4, 3)
    assert p.p_malignant == pytest.approx(float(p.tiling.p_malignant.mean()), abs=1e-5)
    assert p.heatmap.shape == (1400, 2000) and 0.0 <= p.heatmap.min() and p.heatmap.max() <= 1.0
    assert "tiled" in p.input_rule and "mean of the tile probabilities" in p.input_rule
    np.testing.assert_array_equal(large, original)
    small = predictor.predict([samples[0][0]], tile=True)[0]
    assert small.tiling is None and "not tiled: shorter side 460 px < 920 px" in small.input_rule


def test_tile_boxes_cover_the_image():
    rows, cols, corners = pr.tile_boxes(1400, 2000)
    covered = np.zeros((1400, 2000), bool)
    for top, left in corners:
        covered[top : top + 460, left : left + 700] = True
    assert (rows, cols, len(corners)) == (4, 3, 12) and covered.all()
    assert pr.should_tile(3000, 4000) and not pr.should_tile(919, 4000)


def test_router_picks_the_magnification_model(tiny_model, samples):
    images, names = samples[0][:3], ["SOB_B_A-14-22549AB-40-001.png", "SOB_B_A-14-22549AB-100-027.png", "capture.png"]
    router = pr.ModelRouter({"all": pr.Predictor(tiny_model, "all-model"), "40X": pr.Predictor(tiny_model, "m40", 40)})
    predictions = router.predict(images, names)
    assert [p.model_id for p in predictions] == ["m40", "all-model", "all-model"]
    assert predictions[0].route == "40X model m40"
    assert predictions[1].route == "all-magnification model all-model (no 100X model)"
    assert predictions[2].route == "all-magnification model all-model (magnification unknown)"
    assert router.predict(images[2:], names[2:], magnifications=[40])[0].model_id == "m40"
    single = pr.ModelRouter({40: pr.Predictor(tiny_model, "m40", 40)})
    with pytest.raises(BreakHisError, match="magnification=None"):
        single.predict(images[2:], names[2:])
    with pytest.raises(BreakHisError, match="magnification=100"):
        single.route(100)


def test_cases_follow_the_slide_ids(predictor, sample_files):
    images = [read_image(f) for f in sample_files]
    predictions = predictor.predict(images, [f.name for f in sample_files])
    cases = pr.group_cases(predictions)
    slides = {f.parent.parent.name.split("_", 3)[-1] for f in sample_files}
    assert {c.case_id for c in cases} == slides and len(cases) == len(slides) > 1
    for case in cases:
        assert {pr.slide_from_name(p.name) for p in case.predictions} == {case.case_id}
        assert case.p_malignant == pytest.approx(np.mean([p.p_malignant for p in case.predictions]))
        assert case.verdict == ("malignant" if case.p_malignant >= 0.5 else "benign")
        assert case.rule.startswith("mean P(malignant)")
        assert sum(row["images"] for row in case.by_magnification) == len(case.predictions)
    whole = pr.group_cases(predictions, by="upload", rule="majority")
    assert len(whole) == 1 and whole[0].case_id == pr.ONE_CASE and len(whole[0].predictions) == len(sample_files)
    assert whole[0].rule.startswith("majority vote")
    assert [row["magnification"] for row in whole[0].by_magnification] == ["40X", "100X", "200X", "400X"]


def test_from_file_and_from_run(tiny_model, samples, tmp_path):
    path = tmp_path / "frozen.keras"
    tiny_model.save(path)
    image = samples[0][0]
    expected = pr.Predictor(tiny_model).predict([image])[0].p_malignant
    loaded = pr.Predictor.from_file(path)
    assert loaded.model_id == "frozen" and loaded.predict([image])[0].p_malignant == pytest.approx(expected, abs=1e-5)
    run = Run("run-1", tmp_path, TrainConfig(magnification="40"), "done", "", models={"frozen": path})
    from_run = pr.Predictor.from_run(run)
    assert (from_run.model_id, from_run.magnification) == ("run-1:frozen", 40)
    with pytest.raises(RunNotFoundError):
        pr.Predictor.from_run(run, "finetuned")
    with pytest.raises(ModelFileError):
        pr.Predictor.from_file(tmp_path / "missing.keras")


def test_a_run_routes_by_the_magnification_it_was_trained_on(tiny_model, tmp_path):
    """``ModelRouter.from_run``: the router of ``breakhis predict --model`` and of the Diagnose page."""
    path = tmp_path / "frozen.keras"  # never read: the loaded model is handed over
    mag40 = Run("run-40", tmp_path, TrainConfig(magnification="40"), "done", "", models={"frozen": path})
    router = pr.ModelRouter.from_run(mag40, "frozen", tiny_model)
    assert list(router.predictors) == [40] and router.predictors[40].model is tiny_model
    assert router.predictors[40].model_id == "run-40:frozen"
    assert router.refusal("SOB_B_A-14-22549AB-40-001.png") is None
    assert router.refusal("capture.png", "40X") is None  # the caller's magnification wins over the name
    assert "magnification=100" in router.refusal("SOB_B_A-14-22549AB-100-027.png")
    assert "magnification=None" in router.refusal("capture.png")
    assert "magnification=400" in router.refusal("SOB_B_A-14-22549AB-40-001.png", 400)
    everything = Run("run-all", tmp_path, TrainConfig(), "done", "", models={"frozen": path})
    router = pr.ModelRouter.from_run(everything, "frozen", tiny_model)
    assert list(router.predictors) == [None]
    assert router.refusal("capture.png") is None and router.refusal("SOB_B_A-14-22549AB-100-027.png") is None
    with pytest.raises(RunNotFoundError):
        pr.ModelRouter.from_run(everything, "finetuned", tiny_model)


def test_stain_normalisation_of_the_run_applies_at_inference(tiny_model, sample_files):
    from breakhis_core.data.images import read_image
    from breakhis_core.inference.predict import Predictor

    image = read_image(sample_files[0])
    plain = Predictor(tiny_model, "m").predict([image])[0]
    normalised = Predictor(tiny_model, "m", stain_norm="macenko").predict([image])[0]
    assert plain.p_malignant != pytest.approx(normalised.p_malignant, abs=1e-7)


def test_bfloat16_predictor_agrees_with_float32_and_keeps_the_model_float32(tiny_model, samples):
    images = samples[0]
    exact = pr.Predictor(tiny_model, "m", precision="off")
    fast = pr.Predictor(tiny_model, "m", precision="on")  # bf16 on any CPU (emulated where the CPU lacks it)
    assert exact.compute_model is tiny_model and exact.precision.policy == "float32"
    assert fast.precision.policy == "mixed_bfloat16"
    policies = {layer.name: layer.dtype_policy.name for layer in fast.compute_model.layers}
    assert policies["predictions"] == "float32" and policies["block5_conv3"] == "mixed_bfloat16"
    assert {layer.dtype_policy.name for layer in tiny_model.layers} == {"float32"}, "the given model is untouched"
    assert pr.Predictor(tiny_model, "m", precision="on").compute_model is fast.compute_model, "one twin per model"
    for cam in ("gradcam", "gradcam++"):
        a, b = exact.predict(images, cam=cam), fast.predict(images, cam=cam)
        for p, q in zip(a, b):
            assert isinstance(q.p_malignant, float) and abs(p.p_malignant - q.p_malignant) < 0.02
            assert q.heatmap.dtype == np.float32 and q.heatmap.shape == p.heatmap.shape


def test_calibration_and_threshold_shape_probabilities_verdicts_and_cases(tiny_model, predictor, samples):
    from breakhis_core.evaluation.calibration import apply_temperature

    images, names = samples
    raw = predictor.predict(images, names)
    raw_p = np.array([p.p_malignant for p in raw])
    threshold = float(np.median(raw_p))
    calibrated = pr.Predictor(tiny_model, "tiny", temperature=3.0, threshold=threshold).predict(images, names)
    np.testing.assert_allclose([p.p_malignant for p in calibrated], apply_temperature(raw_p, 3.0), rtol=1e-5)
    np.testing.assert_allclose([p.p_benign + p.p_malignant for p in calibrated], 1.0, rtol=1e-6)
    shifted = pr.Predictor(tiny_model, "tiny", threshold=threshold).predict(images, names)
    for p in shifted:
        assert p.threshold == threshold and p.verdict == ("malignant" if p.p_malignant >= threshold else "benign")
        assert p.low_confidence == (abs(p.p_malignant - threshold) < pr.LOW_CONFIDENCE_MARGIN)
        assert p.confidence == (p.p_malignant if p.verdict == "malignant" else p.p_benign)
    for case in pr.group_cases(shifted):
        assert case.verdict == ("malignant" if case.p_malignant >= threshold else "benign")
        assert f"{threshold:.2f}" in case.rule
    assert all(p.threshold == 0.5 and p.temperature == 1.0 for p in raw)  # the defaults change nothing
