"""Run folders made before the task/backbone change still load, show and predict as before.

``tests/fixtures/legacy_run`` is a complete run folder written by the code of commit 3c86bf1 (``breakhis train``
on the in-repo BreakHis sample, 32 px, both stages). Its two ``.keras`` files are that code's files with the weight
values replaced by a sparse pattern (three inputs per filter, 0.5 MB each instead of 59 MB); their config, layer
names and metadata are untouched. ``legacy_run_predictions.json`` holds what that code's ``Predictor`` gave for
the in-repo sample in float32.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from breakhis_core.runs import registry
from breakhis_core.data.images import read_image, resize
from breakhis_core.inference.predict import Predictor
from breakhis_core.data.samples import breakhis_sample

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "legacy_run_predictions.json").read_text(encoding="utf-8"))
CROSS_MACHINE_TOLERANCE = 1e-3
"""oneDNN's kernels (on by default on AVX-512 CPUs) and plain Eigen's differ by up to ~3e-4 on these weights."""


@pytest.fixture()
def legacy_runs(tmp_path) -> Path:
    shutil.copytree(FIXTURES / "legacy_run", tmp_path / "legacy")
    return tmp_path


def _sample():
    paths = sorted(breakhis_sample().rglob("*.png"))
    return [path.name for path in paths], [read_image(path) for path in paths]


def test_the_old_run_is_listed_with_both_models_and_its_card(legacy_runs):
    (run,) = registry.list_runs(legacy_runs)
    assert run.run_id == "legacy"
    assert set(run.models) == {"frozen", "finetuned"}
    assert run.config.input_size == 32
    assert registry.model_id(run, "finetuned") == "legacy:finetuned"
    assert run.status == "done"
    assert run.headline()["model"] == "finetuned"
    assert run.metrics["models"]["frozen"]["overall"]["image_accuracy"]["value"] is not None


@pytest.mark.parametrize("stage", ["frozen", "finetuned"])
def test_the_old_model_predicts_as_the_old_code_did(legacy_runs, stage):
    run = registry.load_run("legacy", legacy_runs)
    predictor = Predictor.from_run(run, stage, precision="off")
    names, images = _sample()
    given = {p.name: p.p_malignant for p in predictor.predict(images, names)}
    expected = EXPECTED["p_malignant"][stage]
    assert sorted(given) == sorted(expected)
    np.testing.assert_allclose([given[n] for n in expected], list(expected.values()), rtol=0, atol=CROSS_MACHINE_TOLERANCE)
    # Bit-identical to the saved Keras model on the same inputs: nothing between file and verdict alters it.
    plain = keras.saving.load_model(run.models[stage])
    raw = np.asarray(plain(np.stack([resize(image, 32) for image in images]).astype(np.float32), training=False))[:, 1]
    assert [given[name] for name in names] == [float(value) for value in raw]
