"""The CLI contract: commands, JSON output and exit codes (0 ok, 2 bad input, 1 internal error)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from breakhis_core.runs import registry
from breakhis_core.cli import main
from breakhis_core.inference.outputs import PREDICTION_COLUMNS
from conftest import REPO_ROOT


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_scan_json(capsys, sample_dir):
    code, out, _ = run_cli(capsys, "scan", sample_dir, "--json")
    summary = json.loads(out)
    assert code == 0
    assert (summary["images"], summary["patients"], len(summary["magnifications"]), len(summary["tumour_types"])) == (37, 23, 4, 8)


def test_scan_table_lists_rejected(capsys, sample_files, tmp_path):
    (tmp_path / sample_files[0].name).write_bytes(sample_files[0].read_bytes())
    (tmp_path / "scan_0001.png").write_bytes(sample_files[1].read_bytes())
    code, out, _ = run_cli(capsys, "scan", tmp_path)
    assert code == 0
    assert "images 1," in out and "rejected 1 files" in out and "scan_0001.png" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["scan", "/nonexistent/folder"], "does not exist"),
        (["train", "{sample}", "--mag", "50"], "invalid choice"),
        (["train", "{sample}", "--split", "folds:x"], "fold number"),
        (["frobnicate"], "invalid choice"),
        (["evaluate", "no-such-run", "--runs", "{tmp}"], "no-such-run"),
        (["card", "no-such-run", "--runs", "{tmp}"], "no-such-run"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, sample_dir, tmp_path, argv, message):
    argv = [a.format(sample=sample_dir, tmp=tmp_path) for a in argv]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert message in err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_imagenet_offline_exits_2_fast(capsys, sample_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    started = time.monotonic()
    code, _, err = run_cli(capsys, "train", sample_dir, "--runs", tmp_path / "runs", "--weights", "imagenet")
    assert code == 2 and time.monotonic() - started < 30
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_train_evaluate_runs_card(capsys, sample_dir, tmp_path):
    runs = tmp_path / "runs"
    code, out, err = run_cli(
        capsys, "train", sample_dir, "--runs", runs, "--weights", "none", "--input-size", "32",
        "--epochs-frozen", "1", "--epochs-finetune", "1", "--batch-size", "8", "--device", "cpu", "--split", "image",
    )
    assert code == 0, err
    run_dir = Path(out.strip().splitlines()[-1])
    assert run_dir.parent == runs and (run_dir / "finetuned.keras").is_file()
    assert "finetuned" in err  # the progress bar names the stages
    learning = registry.load_run(run_dir).learning("finetuned")
    assert f"learning check {run_dir.name}:finetuned: {learning.text}" in out.splitlines()

    code, out, _ = run_cli(capsys, "evaluate", run_dir, "--json")
    metrics = json.loads(out)
    assert code == 0 and metrics["protocol"] == "image" and metrics["leaky"] is True
    assert set(metrics["models"]) == {"frozen", "finetuned"}

    code, out, _ = run_cli(capsys, "evaluate", run_dir.name, "--runs", runs)
    assert code == 0 and "LEAKY" in out and "patient_recognition_rate" in out

    code, out, _ = run_cli(capsys, "runs", "--runs", runs, "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 1 and rows[0]["status"] == "done"

    code, out, _ = run_cli(capsys, "card", run_dir.name, "--runs", runs)
    assert code == 0 and "image" in out.lower() and "not a diagnosis" in out.lower()


def test_module_entry_point_exit_codes(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "breakhis_core", "runs", "--runs", str(tmp_path)],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "no runs yet" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "breakhis_core", "scan", str(tmp_path)],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "error: no usable BreakHis images" in bad.stderr


def test_predict_files_json_out_and_bad_files(capsys, tiny_run, sample_files, tmp_path):
    from breakhis_core.runs.default_model import set_default

    runs = tiny_run.parent
    set_default(tiny_run.name, "finetuned", runs)
    bad = tmp_path / "notes.png"
    bad.write_text("<html>not an image</html>")
    files = [sample_files[0], sample_files[-1], bad]
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "predict", *files, "--runs", runs, "--cam", "gradcam", "--tta", "--out", out, "--json")
    assert code == 0, err
    result = json.loads(stdout)
    assert [p["name"] for p in result["predictions"]] == [sample_files[0].name, sample_files[-1].name]
    for prediction in result["predictions"]:
        assert prediction["verdict"] in ("benign", "malignant")
        assert abs(prediction["p_benign"] + prediction["p_malignant"] - 1) < 1e-5
        assert prediction["magnification_source"] == "filename" and prediction["magnification"] in (40, 100, 200, 400)
        assert prediction["model_id"] == f"{tiny_run.name}:finetuned"
        assert prediction["learning_check"] == registry.load_run(tiny_run).learning("finetuned").text
        assert len(prediction["tta_p_malignant"]) == 8
    assert result["errors"][0]["file"] == "notes.png" and "notes.png" in err
    assert {c["case_id"] for c in result["cases"]} == {sample_files[0].parent.parent.name.split("_")[-1],
                                                        sample_files[-1].parent.parent.name.split("_")[-1]}
    assert len(list(out.glob("*_gradcam.png"))) == 2
    assert "not a diagnosis" in (out / "report.html").read_text()
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0] == ",".join(PREDICTION_COLUMNS) and len(rows) == 3
    assert rows[0].startswith("name,magnification,magnification_source,p_benign,p_malignant,verdict,confidence,"
                              "low_confidence,low_confidence_reason,tta_std,model_id,route,input_rule,")  # old columns first
    table = csv.DictReader(io.StringIO((out / "predictions.csv").read_text()))
    assert {row["case"] for row in table} == {c["case_id"] for c in result["cases"]}


def test_predict_model_ref_magnification_override_and_no_readable_file(capsys, tiny_run, sample_files, tmp_path):
    code, stdout, _ = run_cli(capsys, "predict", sample_files[0], "--model", f"{tiny_run}:frozen",
                              "--magnification", "200", "--cam", "none")
    assert code == 0
    learning = registry.load_run(tiny_run).learning("frozen")
    assert bool(learning.warning(f"{tiny_run.name}:frozen")) and f"warning: {learning.warning(f'{tiny_run.name}:frozen')}" in stdout
    assert f"{tiny_run.name}:frozen" in stdout and ",200,given," in stdout
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    code, _, err = run_cli(capsys, "predict", empty, "--model", str(tiny_run))
    assert code == 2 and "none of the 1 files" in err
    code, _, err = run_cli(capsys, "predict", sample_files[0], "--runs", tmp_path / "no-runs")
    assert code == 2 and "no trained model" in err


def test_predict_pdf_writes_the_report_as_pdf(capsys, tiny_run, sample_files, tmp_path):
    import shutil

    from breakhis_core.inference.report import pdf_unavailable

    code, _, err = run_cli(capsys, "predict", sample_files[0], "--model", str(tiny_run), "--pdf")
    assert code == 2 and "--pdf without --out" in err
    if pdf_unavailable() or shutil.which("pdftotext") is None:
        pytest.skip("WeasyPrint/Pango or poppler-utils missing (.ci/run installs them)")
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "predict", sample_files[0], "--model", str(tiny_run), "--cam", "none",
                                "--out", out, "--pdf", "--json")
    assert code == 0, err
    verdict = json.loads(stdout)["predictions"][0]["verdict"]
    text = subprocess.run(["pdftotext", str(out / "report.pdf"), "-"], capture_output=True, text=True, check=True).stdout
    assert verdict.upper() in text and sample_files[0].name in text and "Reviewer sign-off" in text


def test_progress_bar_follows_the_cache_build_then_the_epochs():
    """The CLI bar shows the cache build's own fraction before any epoch, then the fraction of all epochs."""
    import io

    from breakhis_core.cli import _Bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    bar = _Bar(stream)
    bar({"stage": "caching", "batch": 6, "batches": 8, "epochs_done": 0, "total_epochs": 45, "message": "caching"})
    assert "[" + "#" * 22 + "." * 8 + "]  75% caching" in stream.getvalue()
    bar({"stage": "frozen", "batch": 0, "batches": 4, "epochs_done": 9, "total_epochs": 45, "message": "frozen"})
    bar.close()
    assert stream.getvalue().rstrip().endswith("20% frozen")


def test_progress_without_a_terminal_is_plain_periodic_lines():
    """Into a log file or pipe: no carriage returns; a line per stage or epoch change, else one per interval."""
    import io

    from breakhis_core.cli import _Bar

    now = [0.0]
    stream = io.StringIO()
    bar = _Bar(stream, interval_s=30, clock=lambda: now[0])
    for batch in range(1, 11):  # 10 batches of epoch 1, 5 s apart: the first line, then one after 30 s
        now[0] += 5
        bar({"stage": "frozen", "epoch": 1, "batch": batch, "batches": 10, "epochs_done": 0, "total_epochs": 2,
             "message": f"frozen epoch 1/2 batch {batch}/10"})
    bar({"stage": "frozen", "epoch": 2, "batch": 0, "batches": 10, "epochs_done": 1, "total_epochs": 2,
         "message": "frozen epoch 2/2"})
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert lines == ["progress   5% frozen epoch 1/2 batch 1/10", "progress  35% frozen epoch 1/2 batch 7/10",
                     "progress  50% frozen epoch 2/2"], lines


def test_train_log_of_a_cli_run_has_operator_lines_and_no_carriage_returns(sample_dir, tmp_path):
    """``train`` with stderr in a file (as the app's job does): plain progress lines and INFO log records."""
    import os

    log_path = tmp_path / "train.log"
    env = {**os.environ, "BREAKHIS_LOG_LEVEL": "INFO", "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log_path, "w") as log:
        result = subprocess.run([sys.executable, "-m", "breakhis_core", "train", str(sample_dir), "--runs", str(tmp_path / "runs"),
                                 "--weights", "none", "--input-size", "32", "--epochs-frozen", "1", "--epochs-finetune", "1",
                                 "--batch-size", "8", "--device", "cpu", "--cache-views", "1"],
                                cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True, timeout=600)
    text = log_path.read_text()
    assert result.returncode == 0, text[-3000:]
    assert "\r" not in text
    assert "progress " in text
    assert " INFO breakhis_core.runs.progress: run " in text and ": running" in text and ": done" in text


def test_cache_command_reports_and_clears(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("BREAKHIS_CACHE", raising=False)
    part = tmp_path / ".cache" / "activations" / ("0" * 24)
    part.mkdir(parents=True)
    (part / "activations.f16").write_bytes(b"\0" * 4096)
    assert main(["cache", "--runs", str(tmp_path)]) == 0
    assert "1 part(s), 4.0 KiB" in capsys.readouterr().out
    assert main(["cache", "--runs", str(tmp_path), "--clear"]) == 0
    assert "4.0 KiB freed" in capsys.readouterr().out and not part.exists()
    assert main(["cache", "--runs", str(tmp_path)]) == 0
    assert "0 part(s), 0 bytes" in capsys.readouterr().out


def test_start_up_lines_of_tensorflow_stay_off_stderr_unless_verbose(sample_files, tmp_path):
    """A TensorFlow-loading command prints its own error line and nothing of TensorFlow's start-up (absl, CUDA
    probes, the oneDNN banner); ``--verbose`` shows them again. The error names a file that is no image."""
    from breakhis_core.runtime import START_UP_NOISE

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "BREAKHIS_VERBOSE")}
    command = [sys.executable, "-m", "breakhis_core", "predict", str(not_an_image), "--runs", str(tmp_path / "runs")]
    quiet = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
    loud = subprocess.run(command[:3] + ["--verbose"] + command[3:], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, env=env)
    for result in (quiet, loud):
        assert result.returncode == 2 and "error:" in result.stderr, result.stderr[-2000:]
    assert [line for line in quiet.stderr.splitlines() if START_UP_NOISE.search(line)] == [], quiet.stderr
    assert quiet.stderr.strip().count("\n") == 0, quiet.stderr  # the one-line reason alone
    assert any(START_UP_NOISE.search(line) for line in loud.stderr.splitlines()), loud.stderr


# ----------------------------------------------------------------------------- train options = TrainConfig fields


def _train_config(*options):
    from breakhis_core.cli import build_parser, config_from_args

    return config_from_args(build_parser().parse_args(["train", "data", *[str(o) for o in options]]))


def _non_default_option(field, hint):
    """``train`` argv giving ``field`` a value other than its default, and that value."""
    from breakhis_core.cli import train_option

    flag = train_option(field.name)
    if field.metadata["choices"]:
        value = next(c for c in field.metadata["choices"] if c != field.default)
        return [flag, value], value
    if hint is bool:
        return [flag if not field.default else "--no-" + flag[2:]], not field.default
    if hint is int:
        return [flag, str(field.default + 1)], field.default + 1
    if hint is str:
        return [flag, "elsewhere"], "elsewhere"
    value = field.default / 2 if field.default else 0.25  # float, or float | None
    return [flag, repr(value)], value


def test_every_config_field_is_a_train_option():
    """A TrainConfig field without a ``train --field-name`` option fails here (the positional DATA aside)."""
    import dataclasses
    import typing

    from breakhis_core.cli import TRAIN_POSITIONAL, build_parser
    from breakhis_core.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    fields = [f for f in dataclasses.fields(TrainConfig) if f.name != TRAIN_POSITIONAL]
    assert len(fields) == len(dataclasses.fields(TrainConfig)) - 1
    for field in fields:
        hint = next(t for t in (*typing.get_args(hints[field.name]), hints[field.name]) if t is not type(None))
        argv, value = _non_default_option(field, hint)
        args = build_parser().parse_args(["train", "data", *argv])
        assert getattr(args, field.name) == value != field.default, (field.name, argv)
    assert build_parser().parse_args(["train", "here"]).data == "here"
    config = _train_config("--pooling", "flatten", "--head-units", 64, "--dropout", 0.25, "--no-class-weights",
                           "--train-fraction", 0.6, "--val-fraction", 0.3, "--test-fraction", 0.1,
                           "--split", "cv", "--cv-folds", 4, "--fold", 3)
    assert (config.pooling, config.head_units, config.dropout, config.class_weights) == ("flatten", 64, 0.25, False)
    assert (config.train_fraction, config.val_fraction, config.test_fraction) == (0.6, 0.3, 0.1)
    assert (config.split, config.cv_folds, config.fold) == ("cv", 4, 3)
    assert _train_config() == TrainConfig(data="data")  # options left out keep the dataclass's defaults


@pytest.mark.parametrize("old, new", [
    (["--mag", "40"], ["--magnification", "40"]),
    (["--lr", "0.01"], ["--lr-frozen", "0.01"]),
    (["--early-stopping", "3"], ["--early-stopping-patience", "3"]),
    (["--peer-timeout", "30"], ["--peer-timeout-s", "30"]),
    (["--no-augment"], ["--augment", "--no-augment"]),
    (["--no-cache"], ["--cache", "off"]),
    (["--split", "folds:3"], ["--split", "folds", "--fold", "3"]),
    (["--cv", "3"], ["--split", "cv", "--cv-folds", "3"]),
])
def test_old_train_spellings_give_the_same_config(old, new):
    from breakhis_core.config import TrainConfig

    assert _train_config(*old) == _train_config(*new) != TrainConfig(data="data")


def test_train_help_shows_the_field_names_first(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for new, old in (("--magnification {all,40,100,200,400}", "--mag"), ("--lr-frozen LR_FROZEN", "--lr"),
                     ("--peer-timeout-s PEER_TIMEOUT_S", "--peer-timeout"),
                     ("--early-stopping-patience EARLY_STOPPING_PATIENCE", "--early-stopping")):
        assert f"{new}, {old}" in text, new


@pytest.mark.parametrize("argv", [["train", "data"], ["resume", "r"], ["evaluate", "r"], ["runs"], ["cache"],
                                  ["card", "r"], ["predict", "a.png"], ["predict-slide", "a.svs"], ["models", "list"],
                                  ["models", "import", "a.keras"], ["models", "export", "r"], ["models", "activate", "r"],
                                  ["models", "delete", "r"], ["cases", "list"], ["cases", "show", "A-1"],
                                  ["cases", "export-dataset"], ["db", "upgrade"], ["db", "backup", "b.db"],
                                  ["db", "restore", "b.db"]])
def test_one_runs_option_on_every_subcommand(argv):
    from breakhis_core.cli import build_parser

    assert build_parser().parse_args([*argv, "--runs", "somewhere"]).runs == "somewhere"
    assert build_parser().parse_args(argv).runs is None  # resolved to $BREAKHIS_RUNS or the app home's runs/


def test_out_is_never_the_runs_folder(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "data", "--out", tmp_path / "runs")
    assert code == 2 and "--runs FOLDER" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, message", [
    (["--split", "folds:2", "--fold", "3"], "name different folds"),
    (["--cv", "3", "--cv-folds", "4"], "leave --cv-folds out"),
    (["--cv", "3", "--split", "image"], "leave --split out"),
    (["--split", "random"], "split must be one of patient, image, folds, cv"),
    (["--pooling", "max"], "invalid choice"),
])
def test_contradicting_train_options_exit_2(capsys, argv, message):
    code, _, err = run_cli(capsys, "train", "data", *argv)
    assert code == 2 and message in err and err.count("\n") == 1, err


# ----------------------------------------------------------------------------- models, slide-info, help


@pytest.fixture
def runs_copy(tiny_run, tmp_path) -> Path:
    """A runs folder of this test's own holding a copy of the tiny run."""
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(tiny_run, root / tiny_run.name, ignore=shutil.ignore_patterns("tensorboard", "checkpoints"))
    return root


def test_models_list_activate_export_import_delete(capsys, runs_copy, tiny_run, tmp_path):
    import zipfile

    run_id = tiny_run.name
    code, out, _ = run_cli(capsys, "models", "list", "--runs", runs_copy, "--json")
    listed = json.loads(out)
    assert code == 0 and [row["model"] for row in listed] == [f"{run_id}:finetuned", f"{run_id}:frozen"]
    assert all(row["learning_check"]["state"] in ("ok", "did_not_learn", "undetermined") for row in listed)
    from breakhis_core.runs.registry import load_run

    learning = load_run(runs_copy / run_id).learning("frozen")
    if learning.needs_confirmation:  # a model not seen to learn is activated only when confirmed
        code, _, err = run_cli(capsys, "models", "activate", f"{run_id}:frozen", "--runs", runs_copy)
        assert code == 2 and "--yes" in err and learning.text in err
    code, out, err = run_cli(capsys, "models", "activate", f"{run_id}:frozen", "--yes", "--runs", runs_copy)
    assert code == 0 and f"{run_id}:frozen is now the active model" in out, err
    code, out, _ = run_cli(capsys, "models", "list", "--runs", runs_copy)
    assert out.splitlines()[1].startswith(f"* {run_id}:frozen") and out.splitlines()[0].startswith(f"  {run_id}:finetuned")

    code, out, err = run_cli(capsys, "models", "export", run_id, "--runs", runs_copy, "--out", tmp_path / "exports", "--json")
    exported = json.loads(out)
    assert code == 0 and exported["file"] == str(tmp_path / "exports" / f"{run_id}.zip"), err
    assert any(name.endswith("finetuned.keras") for name in zipfile.ZipFile(exported["file"]).namelist())

    code, out, err = run_cli(capsys, "models", "import", tiny_run / "finetuned.keras", "--name", "outside",
                             "--activate", "--runs", runs_copy, "--json")
    imported = json.loads(out)
    assert code == 0 and imported["active"] and "outside" in imported["model"], err
    code, out, _ = run_cli(capsys, "models", "list", "--runs", runs_copy, "--json")
    assert [row["model"] for row in json.loads(out) if row["active"]] == [imported["model"]]

    code, _, err = run_cli(capsys, "models", "delete", run_id, "--runs", runs_copy)
    assert code == 2 and "--yes" in err and (runs_copy / run_id).is_dir()
    code, out, err = run_cli(capsys, "models", "delete", run_id, "--yes", "--runs", runs_copy)
    assert code == 0 and f"deleted {run_id}" in out and not (runs_copy / run_id).exists(), err


@pytest.mark.parametrize("argv, message", [
    (["models", "activate", "no-such-run"], "no-such-run"),
    (["models", "export", "no-such-run"], "no-such-run"),
    (["models", "delete", "no-such-run", "--yes"], "no-such-run"),
    (["models", "import", "/nonexistent/model.keras"], "model.keras"),
])
def test_models_bad_input_exits_2_with_one_line(capsys, tmp_path, argv, message):
    code, _, err = run_cli(capsys, *argv, "--runs", tmp_path)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_slide_info_names_levels_size_pixel_size_and_format(capsys, breakhis_dir, tmp_path):
    from slides import build_slide

    with_mpp = build_slide(tmp_path / "with.tiff", breakhis_dir, rows=1, cols_per_class=1)
    without = build_slide(tmp_path / "without.tiff", breakhis_dir, rows=1, cols_per_class=1, write_mpp=False)
    (tmp_path / "note.svs").write_text("not a slide")
    code, out, err = run_cli(capsys, "slide-info", with_mpp.path, without.path, tmp_path / "note.svs", "--json")
    result = json.loads(out)
    assert code == 0 and [e["slide"] for e in result["errors"]] == [str(tmp_path / "note.svs")]
    first, second = result["slides"]
    assert (first["width"], first["height"], first["level_count"]) == (with_mpp.width, with_mpp.height, 3)
    assert first["mpp_x"] == pytest.approx(with_mpp.mpp) and first["vendor"] == "generic-tiff"
    assert second["mpp_x"] is None and second["mpp_source"] == "missing"
    code, out, _ = run_cli(capsys, "slide-info", without.path)
    assert code == 0 and "not recorded" in out and "level 2:" in out
    code, _, err = run_cli(capsys, "slide-info", tmp_path / "note.svs")
    assert code == 2 and "note.svs" in err


def test_predict_takes_folders_and_shows_progress(capsys, tiny_run, breakhis_dir, tmp_path):
    from breakhis_core.data.images import IMAGE_SUFFIXES

    expected = sorted(p.name for p in breakhis_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    code, out, err = run_cli(capsys, "predict", breakhis_dir, "--model", tiny_run.name, "--runs", tiny_run.parent,
                             "--cam", "none", "--out", tmp_path / "results")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO((tmp_path / "results" / "predictions.csv").read_text())))
    assert sorted(row["name"] for row in rows) == expected
    assert f"progress 100% {len(expected)} of {len(expected)} images" in err


def test_help_lists_the_exit_codes(capsys):
    from breakhis_core.cli import EXIT_CODES

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "exit codes:" in text
    for code, meaning in EXIT_CODES.items():
        assert f"{code:<4} {meaning}" in text
