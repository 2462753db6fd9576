"""The installable package: pyproject.toml declares what the code imports; the wheel holds the library,
the app and its settings; installed into a fresh virtual environment, ``breakhis`` and ``breakhis-app`` work.

The fresh environment gets the wheel alone (``--no-deps``) and sees the dependencies of the running
interpreter through a ``.pth`` file, so nothing is downloaded and TensorFlow is not installed again.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
import urllib.request
import zipfile
from pathlib import Path

import pytest

from breakhis_core import __version__
from servers import free_port, stop

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 90
NOT_COPIED = {".git", ".venv", "runs", "data", "test-artifacts", ".pytest_cache", ".bench", ".cache", "build", "dist",
              "secrets.toml"}
"""Names left out at the top of the tree (``data`` and ``runs`` are also subpackages of breakhis_core)."""


def requirement_names(file: str) -> set[str]:
    """Normalised distribution names of a requirements file (comments skipped)."""
    names = set()
    for line in (REPO / file).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.add(re.split(r"[\[<>=!~; ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def shipped_sources() -> list[Path]:
    return [*sorted((REPO / "breakhis_core").rglob("*.py")), REPO / "app.py", *sorted((REPO / "ui").glob("*.py")),
            *sorted((REPO / "pages").glob("*.py"))]


def imported_top_level(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_imported_distribution_is_declared_and_bounded():
    own = {"breakhis_core", "ui", "app"}
    distributions = importlib.metadata.packages_distributions()
    declared = requirement_names("requirements.txt") | requirement_names("requirements-pdf.txt")
    missing = {}
    for path in shipped_sources():
        for name in imported_top_level(path) - own - set(sys.stdlib_module_names):
            dists = {d.lower().replace("_", "-") for d in distributions.get(name, [name])}
            if not dists & declared:
                missing[name] = path.name
    assert not missing, f"imported but not declared in requirements.txt: {missing}"
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.search(r"==|<", line), f"unbounded runtime requirement: {line}"


def test_pyproject_reads_the_requirements_files():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    dynamic = project["tool"]["setuptools"]["dynamic"]
    assert dynamic["dependencies"] == {"file": ["requirements.txt"]}
    extras = dynamic["optional-dependencies"]
    assert {"gpu", "pdf", "dev"} <= set(extras)
    assert all(Path(REPO / f).is_file() for extra in extras.values() for f in extra["file"])
    assert project["project"]["scripts"] == {"breakhis": "breakhis_core.cli:main",
                                             "breakhis-app": "breakhis_app.ui.server:main"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the tree (the tree itself gets no build/ or egg-info folders)."""
    source = tmp_path_factory.mktemp("source") / "breakhis"
    shutil.copytree(REPO, source, ignore=lambda folder, names: [n for n in names if (n in NOT_COPIED and Path(folder) == REPO) or n in ("__pycache__", "secrets.toml")])
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(source)], check=True, timeout=120)
    (found,) = out.glob("breakhis-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed; it sees this interpreter's site-packages."""
    folder = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=60)
    python = folder / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "shared-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, timeout=120)
    return folder


def test_wheel_holds_library_app_and_settings(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("breakhis_core/cli.py", "breakhis_core/templates/report.html.j2", "breakhis_core/templates/report.css", "breakhis_app/app.py",
                     "breakhis_app/ui/models.py", "breakhis_app/ui/server.py", "breakhis_app/pages/diagnose.py",
                     "breakhis_app/assets/logo.svg", "breakhis_app/.streamlit/config.toml",
                     "breakhis_app/assets/samples/idc/manifest.csv", "breakhis_app/ui/slide_viewer_frontend/index.html",
                     "breakhis_app/ui/slide_viewer_frontend/openseadragon.min.js",
                     "breakhis_app/ui/slide_viewer_frontend/LICENSE-openseadragon.txt",
                     "breakhis_core/cases/service.py", "breakhis_core/cases/migrations/env.py",
                     "breakhis_core/cases/migrations/versions/0002_addenda.py"):
        assert expected in names, expected
    assert not any("secrets" in name or name.startswith("tests/") for name in names)
    from breakhis_core.data.samples import BREAKHIS_IMAGES

    assert {f"breakhis_app/assets/samples/breakhis/{image}" for image in BREAKHIS_IMAGES} <= names


def user_env(home: Path) -> dict[str, str]:
    """A user's environment for the installed commands: no BREAKHIS_* settings, ``home`` as the home folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BREAKHIS_") and not k.startswith("XDG_")}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": "", "HOME": str(home)}


def test_installed_app_keeps_its_files_in_the_users_folder(venv, tmp_path):
    script = "\n".join([
        "import json",
        "from breakhis_core.lab import paths",
        "from breakhis_core.data import samples",
        "uploads, skipped = samples.sample_uploads()",
        "print(json.dumps({'home': str(paths.ensure_app_home()), 'runs': str(paths.runs_dir()),",
        "                  'roots': [str(r) for r in paths.configured_data_roots()],",
        "                  'sample': str(samples.sample_root()), 'uploads': len(uploads), 'skipped': len(skipped)}))",
    ])
    result = subprocess.run([str(venv / "bin" / "python"), "-c", script], cwd=tmp_path, env=user_env(tmp_path),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    home = tmp_path / ".local" / "share" / "breakhis"  # platformdirs' user data folder on Linux
    assert found["home"] == str(home) and found["runs"] == str(home / "runs")
    assert sorted(p.name for p in home.iterdir()) == ["data", "logs", "runs"]
    # data roots: the home's data folder and the installed sample; nothing inside the package but the sample
    assert found["roots"] == [str(home / "data"), found["sample"]]
    assert found["sample"].startswith(str(venv)) and found["sample"].endswith("breakhis_app/assets/samples")
    assert (found["uploads"], found["skipped"]) == (8, 0)
    assert not (tmp_path / "runs").exists()


def test_installed_commands_refuse_an_app_home_they_cannot_write(venv, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    env = {**user_env(tmp_path), "BREAKHIS_HOME": str(tmp_path / "a_file" / "home")}
    for command in (["breakhis", "runs"], ["breakhis-app", "--server.headless", "true"]):
        result = subprocess.run([str(venv / "bin" / command[0]), *command[1:]], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, (command, result.stdout[-2000:], result.stderr[-2000:])
        assert "BREAKHIS_HOME" in result.stderr and str(tmp_path / "a_file" / "home") in result.stderr, result.stderr


def test_installed_cli_runs_outside_the_tree(venv, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ""}
    help_text = subprocess.run([str(venv / "bin" / "breakhis"), "--help"], cwd=tmp_path, env=env, check=True,
                               capture_output=True, text=True, timeout=60).stdout
    assert "usage: breakhis" in help_text and "predict" in help_text
    version = subprocess.run([str(venv / "bin" / "breakhis"), "--version"], cwd=tmp_path, env=env, check=True,
                             capture_output=True, text=True, timeout=60).stdout
    assert version.strip() == f"breakhis {__version__}"
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import breakhis_core; print(breakhis_core.__file__)"],
                           cwd=tmp_path, env=env, check=True, capture_output=True, text=True).stdout
    assert str(venv) in where, where  # the installed copy, not the tree's


def test_installed_app_serves_on_loopback_only(venv, tmp_path):
    port = free_port()
    log_path = tmp_path / "app.log"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": "", "BREAKHIS_RUNS": str(tmp_path / "runs")}
    with open(log_path, "w") as log:
        server = subprocess.Popen([str(venv / "bin" / "breakhis-app"), "--server.port", str(port),
                                   "--server.headless", "true"], cwd=tmp_path, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert server.poll() is None, f"breakhis-app exited with {server.returncode}:\n{log_path.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
                    if response.status == 200 and response.read().strip() == b"ok":
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no healthy app within {START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.5)
        log_text = log_path.read_text()
        assert f"http://127.0.0.1:{port}" in log_text and "Network URL" not in log_text, log_text  # config.toml's address
    finally:
        stop(server)


def test_installed_app_runs_with_its_own_ui_package(venv, tmp_path):
    """Streamlit runs the installed ``app.py`` with its folder on ``sys.path``: ``import ui`` finds the installed
    ``breakhis_app/ui`` (no tree on the path), and the app's first page runs."""
    script = "\n".join([
        "import sys",
        "from pathlib import Path",
        "from breakhis_app.ui import server",
        "sys.path.insert(0, str(server.APP.parent))  # what `streamlit run` does for its script",
        "from streamlit.testing.v1 import AppTest",
        "at = AppTest.from_file(str(server.APP), default_timeout=240)",
        "at.run()",
        "assert not at.exception, [e.value for e in at.exception]",
        "import ui.frame",
        "print(ui.frame.APP_DIR == server.APP.parent, any('research use' in str(c.value) for c in at.caption))",
    ])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": "", "BREAKHIS_RUNS": str(tmp_path / "runs")}
    result = subprocess.run([str(venv / "bin" / "python"), "-c", script], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["True", "True"], result.stdout


def test_licence_and_citation_agree_with_the_package():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == {"text": "MIT"}
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    citation = (REPO / "CITATION.cff").read_text()
    assert re.search(r"^cff-version: 1\.2\.0$", citation, re.M)
    assert re.search(rf"^version: {re.escape(__version__)}$", citation, re.M)
    assert re.search(r"^license: MIT$", citation, re.M)
    assert "doi: 10.1109/TBME.2015.2496264" in citation  # BreakHis (Spanhol et al. 2016)
