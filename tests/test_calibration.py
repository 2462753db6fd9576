"""breakhis_core.evaluation.calibration: temperature scaling, ECE/Brier, reliability and threshold rules; scikit-learn as the oracle."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss, roc_curve as sk_roc_curve

from breakhis_core.evaluation import calibration as cal
from breakhis_core.config import TrainConfig
from breakhis_core.evaluation.metrics import LabelledScores
from breakhis_core.runs.rundir import CALIBRATION_FILE


def _overconfident(n: int = 4000, true_temperature: float = 3.0, seed: int = 0):
    """Labels drawn from sigmoid(z / T0) while the 'model' reports sigmoid(z): over-confident by T0."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 4.0, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-z / true_temperature))).astype(int)
    return labels, 1 / (1 + np.exp(-z))


def test_fit_temperature_recovers_the_true_temperature_and_lowers_log_loss():
    labels, p = _overconfident()
    temperature = cal.fit_temperature(labels, p)
    assert temperature == pytest.approx(3.0, rel=0.15)
    calibrated = cal.apply_temperature(p, temperature)
    assert log_loss(labels, calibrated) < log_loss(labels, p)
    # no T on a grid does better than the fitted one (it is the minimiser)
    grid = [log_loss(labels, cal.apply_temperature(p, t)) for t in np.linspace(1.0, 6.0, 51)]
    assert log_loss(labels, calibrated) <= min(grid) + 1e-6


def test_temperature_keeps_ranking_and_the_half_point():
    labels, p = _overconfident(200)
    calibrated = cal.apply_temperature(p, 2.5)
    assert (np.argsort(p, kind="stable") == np.argsort(calibrated, kind="stable")).all()
    assert cal.apply_temperature(np.array([0.5]), 7.0)[0] == pytest.approx(0.5)
    assert cal.fit_temperature([1, 1, 1], [0.6, 0.7, 0.9]) == 1.0  # one class: nothing to fit


def test_brier_and_reliability_match_scikit_learn():
    rng = np.random.default_rng(1)
    p = rng.random(500)
    p[:20] = np.round(p[:20], 1)  # values on the bin edges
    labels = (rng.random(500) < p ** 1.5).astype(int)
    assert cal.brier_score(labels, p) == pytest.approx(brier_score_loss(labels, p))
    curve = cal.reliability(labels, p, 10)
    observed, predicted = calibration_curve(labels, p, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(curve.observed, observed)
    np.testing.assert_allclose(curve.mean_predicted, predicted)
    assert curve.count.sum() == 500
    ece = np.sum(curve.count * np.abs(observed - predicted)) / 500
    assert cal.expected_calibration_error(labels, p, 10) == pytest.approx(ece)


def test_calibration_lowers_ece_of_an_overconfident_model():
    labels, p = _overconfident()
    after = cal.apply_temperature(p, cal.fit_temperature(labels, p))
    assert cal.expected_calibration_error(labels, after) < cal.expected_calibration_error(labels, p) / 2
    assert cal.brier_score(labels, after) < cal.brier_score(labels, p)


def test_threshold_rules_against_scikit_learn_roc():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 300)
    p = np.clip(0.3 * labels + rng.normal(0.35, 0.2, 300), 0, 1)
    fpr, tpr, thresholds = sk_roc_curve(labels, p, drop_intermediate=False)
    youden = cal.choose_threshold(labels, p, "youden")
    assert youden == pytest.approx(thresholds[np.argmax(tpr - fpr)])
    for target in (0.8, 0.95, 1.0):
        chosen = cal.choose_threshold(labels, p, "sensitivity", target)
        sensitivity = ((p >= chosen) & (labels == 1)).sum() / (labels == 1).sum()
        assert sensitivity >= target
        higher = p[p > chosen]  # any higher threshold misses the target
        if len(higher):
            above = higher.min()
            assert ((p >= above) & (labels == 1)).sum() / (labels == 1).sum() < target
    assert cal.choose_threshold(labels, p, "fixed") == 0.5
    assert cal.choose_threshold([1, 1], [0.2, 0.9], "youden") == 0.5  # one class: the default
    with pytest.raises(ValueError, match="rule must be"):
        cal.choose_threshold(labels, p, "best")


def test_fit_stage_reports_operating_point_on_test_patients():
    labels, p = _overconfident(600, seed=3)
    patients = np.array([f"p{i // 6}" for i in range(600)])
    val = LabelledScores(labels[:300], p[:300], patients[:300])
    test = LabelledScores(labels[300:], p[300:], patients[300:])
    fitted = cal.fit_stage(TrainConfig(threshold_rule="sensitivity", target_sensitivity=0.9), val, test)
    assert fitted["rule"] == "sensitivity" and fitted["temperature"] > 1.5
    calibrated = cal.apply_temperature(test.p_malignant, fitted["temperature"])
    predicted = calibrated >= fitted["threshold"]
    expected = (predicted & (test.labels == 1)).sum() / (test.labels == 1).sum()
    assert fitted["test"]["operating_point"]["sensitivity"]["value"] == pytest.approx(expected)
    assert fitted["test"]["ece_after"] < fitted["test"]["ece_before"]
    one_class = cal.fit_stage(TrainConfig(threshold_rule="youden"), LabelledScores(np.ones(5, int), p[:5], patients[:5]), None)
    assert (one_class["temperature"], one_class["threshold"], one_class["rule"]) == (1.0, 0.5, "fixed")
    assert "not fitted" in one_class["fitted_on"] and one_class["fitted"] is False


def test_too_few_validation_patients_keep_the_identity_and_say_so():
    """The seen failure: a temperature at the old bound (20) fitted on 4 images squeezed every probability to 0.49."""
    labels, p = np.array([0, 1, 0, 1]), np.array([0.95, 0.9, 0.2, 0.1])  # wrong and over-confident
    four = cal.fit_stage(TrainConfig(threshold_rule="youden"), LabelledScores(labels, p, np.array(["a", "b", "c", "d"])),
                         None)
    assert (four["temperature"], four["threshold"], four["rule"], four["fitted"]) == (1.0, 0.5, "fixed", False)
    assert four["fitted_on"] == ("not fitted: 4 validation patients (2 benign, 2 malignant); at least "
                                 f"{cal.MIN_FIT_PATIENTS} with both classes are needed, so T = 1 and the fixed 0.5 threshold")
    assert four["validation"]["ece_after"] == four["validation"]["ece_before"]  # no calibration "gain"
    many = np.array([f"p{i}" for i in range(cal.MIN_FIT_PATIENTS)])
    labels, p = np.tile([0, 1], cal.MIN_FIT_PATIENTS // 2), np.tile([0.95, 0.05], cal.MIN_FIT_PATIENTS // 2)
    fitted = cal.fit_stage(TrainConfig(), LabelledScores(labels, p, many), None)
    assert fitted["fitted"] and fitted["temperature"] == pytest.approx(cal.T_BOUNDS[1], rel=1e-3)  # bounded
    assert cal.fit_refusal(LabelledScores(np.ones(12, int), p[:1].repeat(12), np.arange(12).astype(str))).startswith(
        "not fitted: 12 validation patients (0 benign, 12 malignant)")


def test_load_calibration_defaults_to_identity(tmp_path):
    assert cal.load_calibration(tmp_path, "finetuned") == cal.IDENTITY
    (tmp_path / CALIBRATION_FILE).write_text('{"stages": {"finetuned": {"temperature": 2.0, "threshold": 0.3, "rule": "youden"}}}')
    assert cal.load_calibration(tmp_path, "finetuned") == cal.StageCalibration(2.0, 0.3, "youden", fitted=True)
    (tmp_path / CALIBRATION_FILE).write_text('{"stages": {"finetuned": {"temperature": 1.0, "threshold": 0.5, '
                                             '"rule": "fixed", "fitted_on": "not fitted: the validation split lacks"}}}')
    assert cal.load_calibration(tmp_path, "finetuned") == cal.IDENTITY  # an older file's "not fitted"
    assert cal.load_calibration(tmp_path, "frozen") == cal.IDENTITY


def test_a_run_on_the_sample_keeps_the_identity_and_its_card_says_why(tiny_run):
    """The 37-image sample leaves a handful of validation patients: nothing is fitted, and the card says so."""
    import json
    import re

    stages = json.loads((tiny_run / CALIBRATION_FILE).read_text())["stages"]
    for stage, fitted in stages.items():
        assert (fitted["temperature"], fitted["threshold"], fitted["fitted"]) == (1.0, 0.5, False)
        assert cal.load_calibration(tiny_run, stage) == cal.IDENTITY
        assert re.fullmatch(r"not fitted: \d validation patients \(\d benign, \d malignant\); at least 10 with both "
                            r"classes are needed, so T = 1 and the fixed 0\.5 threshold", fitted["fitted_on"])
        assert f"| {stage} | 1.000 | 0.500 (fixed) | {fitted['fitted_on']} |" in (tiny_run / "card.md").read_text()
