"""Shared fixtures: the real BreakHis and IDC images, and tiny models; the run's closing count of skipped tests.

Two sets of real images:

- the product's own sample in the repository (``assets/samples``: 8 BreakHis images, 200 IDC patches of 5
  patients; ``breakhis_core.data.samples``), always present: :func:`breakhis_dir`, :func:`sample_files` and
  :func:`idc_manifest` fall back to it, and :func:`tiny_run` trains on it, when the larger samples are absent;
- the larger samples in ``../shared`` beside the repository (``$BREAKHIS_TEST_SHARED`` names another folder):
  37 BreakHis images and 5,020 IDC patches. Tests that need that many (:func:`sample_dir`, :func:`idc_dir`)
  skip with the reason when they are absent (they are always present in CI).

Every test runs with an app home of its session's own (``$BREAKHIS_HOME`` in a temporary folder), never the
user's.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["BREAKHIS_HOME"] = tempfile.mkdtemp(prefix="breakhis-home-")

from breakhis_core.data import samples  # noqa: E402  (after BREAKHIS_HOME is set)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BREAKHIS_TEST_SHARED") or REPO_ROOT.parent / "shared")
BREAKHIS_SAMPLE = SHARED / "breakhis_sample"
IDC_SAMPLE = SHARED / "idc_sample"
IMAGENET_WEIGHTS = SHARED / "weights" / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
"""The VGG16 no-top ImageNet weights under Keras' file name, beside the repository (never committed)."""
EMPTY_KERAS_HOME = tempfile.mkdtemp(prefix="keras-home-empty-")
os.environ["KERAS_HOME"] = EMPTY_KERAS_HOME  # no test reads or writes the user's ~/.keras
TINY_INPUT = 32
"""Input side of the tiny test models (VGG16's minimum); real runs use 224."""


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """../shared/breakhis_sample: 37 real BreakHis PNGs, 23 slides, 4 magnifications."""
    if not BREAKHIS_SAMPLE.is_dir():
        pytest.skip(f"needs the larger BreakHis sample (37 images), not found at {BREAKHIS_SAMPLE} (it lies in ../shared "
                    "beside the repository)")
    return BREAKHIS_SAMPLE


@pytest.fixture(scope="session")
def sample_files(breakhis_dir) -> list[Path]:
    """The real BreakHis PNG paths of :func:`breakhis_dir`, sorted: 37 from ../shared, else the in-repo 8 (every
    magnification, both classes)."""
    return sorted(breakhis_dir.rglob("*.png"))


@pytest.fixture(scope="session")
def idc_dir() -> Path:
    """../shared/idc_sample: 5,020 real 50×50 IDC patches with manifest.csv."""
    if not (IDC_SAMPLE / "manifest.csv").is_file():
        pytest.skip(f"needs the larger IDC sample (5,020 patches), not found at {IDC_SAMPLE} (it lies in ../shared "
                    "beside the repository)")
    return IDC_SAMPLE


@pytest.fixture(scope="session")
def breakhis_dir() -> Path:
    """Real BreakHis images in the official layout: ../shared/breakhis_sample (37), else the in-repo sample (8)."""
    return BREAKHIS_SAMPLE if BREAKHIS_SAMPLE.is_dir() else samples.breakhis_sample()


@pytest.fixture(scope="session")
def idc_manifest() -> Path:
    """A manifest of real IDC patches: ../shared/idc_sample's (5,020), else the in-repo sample's (200)."""
    shared = IDC_SAMPLE / "manifest.csv"
    return shared if shared.is_file() else samples.idc_manifest()


@pytest.fixture(scope="session")
def imagenet_home(tmp_path_factory) -> Path:
    """A Keras folder holding the shared ImageNet weights (linked by ``weights.install_imagenet_weights``)."""
    from breakhis_core.models.weights import install_imagenet_weights

    if not IMAGENET_WEIGHTS.is_file():
        pytest.skip(f"ImageNet VGG16 weights not found at {IMAGENET_WEIGHTS} (they ship in ../shared/weights beside the "
                    "repo); the product downloads them from Keras' URL instead")
    home = tmp_path_factory.mktemp("keras-home")
    install_imagenet_weights(IMAGENET_WEIGHTS, home, link=True)
    return home


@pytest.fixture
def imagenet_weights(imagenet_home, monkeypatch) -> Path:
    """``weights="imagenet"`` works offline in this test (and in the processes it starts): KERAS_HOME points at
    :func:`imagenet_home`. Returns the weights file."""
    monkeypatch.setenv("KERAS_HOME", str(imagenet_home))
    return IMAGENET_WEIGHTS


@pytest.fixture(scope="session")
def tiny_model():
    """An untrained VGG16 classifier at 32×32, random weights (weights='none'), seed 0."""
    from breakhis_core.models.classifier import build_model

    return build_model(TINY_INPUT, weights="none", seed=0)


def tiny_config(data, **overrides):
    """A TrainConfig that runs both stages end to end in seconds on a CPU (32×32, 1 epoch each).

    The paper's recipe is pinned (``weights="none"`` would choose "scratch"), so the tests see its stages.
    """
    from breakhis_core.config import TrainConfig

    values = dict(data=str(data), weights="none", input_size=TINY_INPUT, epochs_frozen=1, epochs_finetune=1,
                  batch_size=8, device="cpu", seed=0, recipe="paper")
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def tiny_run(breakhis_dir, tmp_path_factory) -> Path:
    """A finished patient-wise run trained on the BreakHis images of :func:`breakhis_dir` (tiny config); shared by
    many tests."""
    from breakhis_core.training.setup import prepare_run
    from breakhis_core.training.train import run_training

    runs = tmp_path_factory.mktemp("runs")
    run_dir = prepare_run(tiny_config(breakhis_dir), runs)
    assert run_training(run_dir) == "done"
    return run_dir


@pytest.fixture(scope="session")
def subtype_run(sample_dir, tmp_path_factory) -> Path:
    """``breakhis train --task subtype`` on the shared 37-image sample (tiny config), run "subtype" of its own runs
    folder. The split is image-level (leaky): a patient-wise split of 23 slides cannot put each of the 8 types in
    training, validation and test; the run shows the mechanics, not a measurement."""
    from breakhis_core import cli

    runs = tmp_path_factory.mktemp("subtype_runs")
    assert cli.main(["train", str(sample_dir), "--task", "subtype", "--split", "image", "--input-size", str(TINY_INPUT),
                     "--weights", "none", "--epochs-frozen", "1", "--epochs-finetune", "1", "--device", "cpu",
                     "--runs", str(runs), "--run-name", "subtype", "--quiet"]) == 0
    return runs / "subtype"


@pytest.fixture(scope="session")
def tiny_runs_root(tiny_run, tmp_path_factory) -> Path:
    """A runs folder of the app tests' own: the tiny run (linked, not copied) set as the active model."""
    from breakhis_core.runs import default_model

    root = tmp_path_factory.mktemp("app_runs")
    (root / tiny_run.name).symlink_to(tiny_run, target_is_directory=True)
    default_model.set_default(tiny_run.name, "finetuned", root)
    return root


@pytest.fixture(scope="session")
def tiny_experiment(sample_dir, tmp_path_factory) -> dict:
    """A finished 2-fold cross-validation of the BreakHis sample (tiny config, stage 2 with 0 epochs) whose process
    "died" after fold 1 and was resumed with ``python -m breakhis_core resume``.

    Returns ``{"root", "exp_dir", "fold1_mtime_ns"}``: the runs folder, the experiment folder and the
    modification time of fold 1's model before the resume (resuming must not train it again).
    """
    import subprocess
    import sys

    from breakhis_core import cli
    from breakhis_core.training import crossval
    from breakhis_core.files import write_json_atomic
    from breakhis_core.runs.experimentdir import ExperimentDir
    from breakhis_core.runs.rundir import now_iso
    from breakhis_core.training.train import run_training

    root = tmp_path_factory.mktemp("cv_runs")
    config = tiny_config(sample_dir, split="cv", cv_folds=2, threshold_rule="youden", epochs_finetune=0)
    exp_dir = crossval.prepare_experiment(config, root)
    fold1, fold2 = (root / run_id for run_id in crossval.load_experiment(exp_dir).info["runs"])
    assert run_training(fold1) == "done"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    write_json_atomic(ExperimentDir(exp_dir).state_file, {"status": "running", "pid": gone.pid, "started": now_iso(),
                                                          "fold": 2, "current_run": fold2.name})
    interrupted = crossval.load_experiment(exp_dir).status
    fold1_mtime_ns = (fold1 / "finetuned.keras").stat().st_mtime_ns
    assert cli.main(["resume", str(exp_dir), "--quiet"]) == 0
    return {"root": root, "exp_dir": exp_dir, "fold1_mtime_ns": fold1_mtime_ns, "interrupted_status": interrupted}


@pytest.fixture(scope="session")
def postgres_cluster():
    """A throwaway PostgreSQL cluster on a unix socket (tests/postgres.py), stopped at the end of the session."""
    from postgres import PostgresCluster, postgres_bin, postgres_required

    bin_dir = postgres_bin()
    if bin_dir is None:
        reason = "PostgreSQL (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin"
        if postgres_required():
            pytest.fail(reason)
        pytest.skip(reason)
    cluster = PostgresCluster(bin_dir).start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """An empty case database of the test's own: a SQLite file, or a new database on the PostgreSQL cluster."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cases.db'}"
    return request.getfixturevalue("postgres_cluster").new_database()


def _skip_reason(report) -> str:
    """The reason a test report gives for its skip (``longrepr`` is ``(file, line, "Skipped: reason")``)."""
    text = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return text.removeprefix("Skipped: ")


def pytest_terminal_summary(terminalreporter) -> None:
    """End the run with how many tests skipped and why, one line per reason, most frequent first."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        terminalreporter.write_line("No test was skipped.")
        return
    reasons = Counter(_skip_reason(report) for report in skipped)
    terminalreporter.section(f"{len(skipped)} skipped, by reason")
    for reason, count in reasons.most_common():
        terminalreporter.write_line(f"{count:5d}  {reason}")
