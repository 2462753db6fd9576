"""Structure of the library: no import circle inside ``breakhis_core``, no streamlit import, and facts defined once.

Every module is parsed with ``ast`` (nothing is imported), so imports inside functions count too.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = "breakhis_core"
ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / PACKAGE


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative levels resolved against ``module``)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, modules: set[str]) -> tuple[set[str], set[str]]:
    """(modules of the package that ``path`` imports anywhere in it, every top-level package it imports)."""
    module, is_package = _module_name(path), path.name == "__init__.py"
    inside, top_level = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node)
            names = [target] + [f"{target}.{alias.name}" for alias in node.names]
        for name in names:
            top_level.add(name.split(".")[0])
            while name and name not in modules:  # "breakhis_core.runs.registry.load_run" → "breakhis_core.runs.registry"
                name = name.rpartition(".")[0]
            if name and name != module:
                inside.add(name)
    return inside, top_level


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    paths = sorted(PACKAGE_DIR.rglob("*.py"))
    modules = {_module_name(path) for path in paths}
    graph, external = {}, {}
    for path in paths:
        graph[_module_name(path)], external[_module_name(path)] = imports_of(path, modules)
    return graph, external


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as ``[a, b, ..., a]``, or None. The package's ``__init__`` is left out:
    importing ``breakhis_core.x`` runs it first anyway, and it imports nothing of the package's modules."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if target == PACKAGE:
                continue
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_imports_inside_functions():
    graph, _ = import_graph()
    assert f"{PACKAGE}.models.classifier" in graph[f"{PACKAGE}.inference.explain"]  # at module level
    assert f"{PACKAGE}.lab.paths" in graph[f"{PACKAGE}.training.jobs"]  # inside check_config_paths


def test_find_cycle_names_the_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle_in_the_package():
    graph, _ = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " → ".join(cycle)


def test_the_init_imports_no_module_of_the_package():
    graph, _ = import_graph()
    assert graph[PACKAGE] == set()


def test_the_library_never_imports_streamlit():
    _, external = import_graph()
    importing = sorted(module for module, names in external.items() if "streamlit" in names)
    assert importing == [], f"breakhis_core is a library; these modules import streamlit: {importing}"


def documented_run_entries() -> tuple[set[str], str]:
    """(the file and folder names at the top of the run directory in docs/ARCHITECTURE.md, the whole block)."""
    text = (PACKAGE_DIR.parent / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text.split("\n## Run directory\n", 1)[1]
    block = section.split("```\n", 2)[1]
    names = set()
    for line in block.splitlines():
        match = re.match(r"  (\S.*?)(?:\s{2,}|$)", line)  # an entry: two spaces in, its description after a gap
        if match:
            for name in match.group(1).split(", "):
                names.add(name.split("/")[0])  # "checkpoints/" → "checkpoints", "tensorboard/<stage>/" → "tensorboard"
    return names, block


def test_the_documented_run_directory_is_the_one_in_rundir():
    from breakhis_core.runs import rundir
    from breakhis_core.config import STAGES

    defined = {value for name, value in vars(rundir).items()
               if name.endswith(("_FILE", "_DIR")) and isinstance(value, str)}
    inside_checkpoints = {rundir.CHECKPOINT_STATE_FILE}
    defined = (defined - inside_checkpoints) | {rundir.history_file(s) for s in STAGES} | {rundir.model_file(s) for s in STAGES}
    documented, block = documented_run_entries()
    assert documented == defined, (f"documented only: {sorted(documented - defined)}; "
                                   f"defined in rundir.py only: {sorted(defined - documented)}")
    checkpoints_line = next(line for line in block.splitlines() if line.startswith(f"  {rundir.CHECKPOINTS_DIR}/"))
    following = block.split(checkpoints_line, 1)[1].split("\n  frozen.keras", 1)[0]
    assert rundir.CHECKPOINT_STATE_FILE in following
    assert rundir.best_weights_file("<stage>", 0).replace("e0", "e<N>") in following


def stage_literals(source: str, filename: str = "<source>") -> list[int]:
    """Lines of ``source`` that re-type the stages: a tuple, list or set literal of exactly the stage names
    (any order), or a dict keyed by exactly them whose values are strings (a table of stage labels)."""
    from breakhis_core.config import STAGES

    def names(nodes) -> set[str] | None:
        values = [n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        return set(values) if len(values) == len(nodes) == len(STAGES) else None

    lines = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and names(node.elts) == set(STAGES):
            lines.append(node.lineno)
        elif (isinstance(node, ast.Dict) and None not in node.keys and names(node.keys) == set(STAGES)
              and all(isinstance(v, (ast.Constant, ast.JoinedStr)) for v in node.values)):
            lines.append(node.lineno)
    return lines


def test_stage_literals_finds_a_retyped_stage_tuple_or_label_table():
    source = ('STAGES = ("frozen", "finetuned")\n'
              'for s in ["finetuned", "frozen"]: pass\n'
              'LABELS = {"frozen": "stage 1", "finetuned": "stage 2"}\n'
              'palette = {"frozen": ("#000", "#111"), "finetuned": ("#222", "#333")}\n'
              'one = ("frozen",)\n')
    assert stage_literals(source) == [1, 2, 3]


def test_the_stages_and_their_labels_are_defined_only_in_config():
    from breakhis_core import config
    from breakhis_core.training import cache

    files = [p for folder in (PACKAGE_DIR, ROOT / "pages", ROOT / "ui", ROOT / "bench") for p in sorted(folder.rglob("*.py"))]
    files.append(ROOT / "app.py")
    found = {str(p.relative_to(ROOT)): lines for p in files if p != PACKAGE_DIR / "config.py"
             if (lines := stage_literals(p.read_text(encoding="utf-8"), str(p)))}
    assert found == {}, f"the stages are config.STAGES (labels config.STAGE_LABELS); re-typed at {found}"
    assert stage_literals((PACKAGE_DIR / "config.py").read_text(encoding="utf-8"))  # the check sees the definition
    assert set(config.STAGE_LABELS) == set(config.STAGES)
    # The cached path's epoch draws are seeded with these numbers: cached runs reproduce only while they stay.
    assert [cache.STAGE_IDS[s] for s in config.STAGES] == [1, 2]


LAYERS = (
    ("base", ("breakhis_core", "breakhis_core.errors", "breakhis_core.files", "breakhis_core.config",
              "breakhis_core.runtime", "breakhis_core.task", "breakhis_core.notice", "breakhis_core.runs.rundir",
              "breakhis_core.runs.status", "breakhis_core.runs.progress", "breakhis_core.models.backbones",
              "breakhis_core.models.preprocessing")),
    ("data", ("breakhis_core.data", "breakhis_core.cases.records", "breakhis_core.cases.dataset")),
    ("lab", ("breakhis_core.lab",)),
    ("models", ("breakhis_core.models",)),
    ("evaluation", ("breakhis_core.evaluation",)),
    ("runs", ("breakhis_core.runs",)),
    ("training", ("breakhis_core.training",)),
    ("inference", ("breakhis_core.inference",)),
    ("slides", ("breakhis_core.slides",)),
    ("cases", ("breakhis_core.cases",)),
    ("interfaces", ("breakhis_core.cli", "breakhis_core.__main__")),
)
"""The layers of the library, lowest first (docs/ARCHITECTURE.md, "Layers"). A module belongs to the layer of the longest
prefix that names it; it may import modules of its own layer and of the layers below, never of a layer above.
The run directory's layout (``runs.rundir``, ``runs.status``, ``runs.progress``) is a base fact every layer reads and
writes, as is the backbone registry (``models.backbones``, with the preprocessing layers it names), which TrainConfig
validates against; a data set
exported from reviewed cases (``cases.dataset``, made of ``cases.records``) is data, while the case store (database,
service) sits above inference."""


def layer_of(module: str) -> int:
    """The index in ``LAYERS`` of ``module``'s layer (longest matching prefix)."""
    best, best_length = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer of LAYERS: add it where it belongs")
    return best


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a module of a higher layer, as "importer (layer) → imported (layer)"."""
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(module):
                found.append(f"{module} ({LAYERS[layer_of(module)][0]}) → {target} ({LAYERS[layer_of(target)][0]})")
    return found


def test_layer_of_takes_the_longest_prefix_and_upward_imports_are_found():
    assert LAYERS[layer_of("breakhis_core.runs.rundir")][0] == "base"
    assert LAYERS[layer_of("breakhis_core.runs.registry")][0] == "runs"
    assert upward_imports({"breakhis_core.data.records": {"breakhis_core.training.train"}}) == [
        "breakhis_core.data.records (data) → breakhis_core.training.train (training)"]
    assert upward_imports({"breakhis_core.training.train": {"breakhis_core.data.records"}}) == []


def test_modules_import_only_their_own_layer_and_the_layers_below():
    graph, _ = import_graph()
    found = upward_imports(graph)
    assert found == [], "imports against the layers (docs/ARCHITECTURE.md, Layers):\n" + "\n".join(found)


def test_every_subpackage_init_imports_nothing():
    graph, _ = import_graph()
    packages = sorted(str(p.parent.relative_to(ROOT)).replace("/", ".") for p in PACKAGE_DIR.rglob("__init__.py"))
    importing = {package: sorted(graph[package]) for package in packages if package in graph and graph[package]}
    assert importing == {}, f"a package's __init__ states what it holds and imports nothing: {importing}"


def status_literals(source: str, filename: str = "<source>") -> list[tuple[int, str]]:
    """(line, word) of each string literal in ``source`` that re-types a run status word (``RunStatus``'s values).

    Not counted: docstrings (and other bare string statements), and a record's keys as they are read
    (``progress.get("done")``, ``record["done"]``: a slide analysis' count of tiles done). "unknown" is left out:
    it is also the word for an unknown magnification, protocol or role.
    """
    from breakhis_core.runs.status import RunStatus

    words = {status.value for status in RunStatus} - {RunStatus.UNKNOWN.value}
    tree = ast.parse(source, filename)
    excused = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            excused.add(id(node.value))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" and node.args:
            excused.add(id(node.args[0]))
        elif isinstance(node, ast.Subscript):
            excused.add(id(node.slice))
    return sorted((node.lineno, node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and node.value in words and id(node) not in excused)


def test_status_literals_finds_a_retyped_status_word():
    source = ('"""A module; its run is "done"."""\n'
              'if status == "done": pass\n'
              'LIVE = ("queued", "running")\n'
              'tiles = progress.get("done", 0) + record["failed"]\n'
              'def f():\n'
              '    """Returns "cancelled"."""\n'
              '    return "cancelled"\n')
    assert status_literals(source) == [(2, "done"), (3, "queued"), (3, "running"), (7, "cancelled")]


def test_the_status_words_are_defined_only_in_runstatus():
    files = [p for folder in (PACKAGE_DIR, ROOT / "pages", ROOT / "ui", ROOT / "bench") for p in sorted(folder.rglob("*.py"))]
    files.append(ROOT / "app.py")
    definition = PACKAGE_DIR / "runs" / "status.py"
    found = {str(p.relative_to(ROOT)): lines for p in files if p != definition
             if (lines := status_literals(p.read_text(encoding="utf-8"), str(p)))}
    assert found == {}, f"run statuses are breakhis_core.runs.status.RunStatus; re-typed at {found}"
    assert status_literals(definition.read_text(encoding="utf-8"))  # the check sees the definition


def test_run_status_files_keep_their_words(tmp_path):
    import json

    from breakhis_core.runs.rundir import RunDir
    from breakhis_core.runs.status import RunStatus

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.set_status(RunStatus.CANCELLED)
    assert json.loads(run.status_file.read_text())["status"] == "cancelled"
    assert run.live_status() == (RunStatus.CANCELLED, None) and f"{RunStatus.CANCELLED}" == "cancelled"
    run.status_file.write_text('{"status": "a word of a later version"}')
    assert run.live_status()[0] is RunStatus.UNKNOWN


def threshold_literals(source: str, filename: str = "<source>") -> list[int]:
    """Lines of ``source`` that re-type the default decision threshold: a number given as the default of a
    parameter or field named ``threshold``, a number assigned to a name ending in ``THRESHOLD``, or a text naming
    "threshold 0.5" / "0.5 threshold" (texts format ``config.DEFAULT_THRESHOLD``; docstrings may name it)."""
    from breakhis_core.config import DEFAULT_THRESHOLD

    def number(node) -> bool:
        return isinstance(node, ast.Constant) and type(node.value) in (int, float)

    value = f"{DEFAULT_THRESHOLD:g}"
    tree = ast.parse(source, filename)
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            arguments = node.args.posonlyargs + node.args.args
            defaults = list(zip(arguments[len(arguments) - len(node.args.defaults):], node.args.defaults))
            defaults += [(a, d) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if d is not None]
            lines += [d.lineno for a, d in defaults if a.arg == "threshold" and number(d)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            if (node.target.id == "threshold" or node.target.id.endswith("THRESHOLD")) and number(node.value):
                lines.append(node.lineno)
        elif isinstance(node, ast.Assign) and number(node.value):
            if any(isinstance(t, ast.Name) and t.id.endswith("THRESHOLD") for t in node.targets):
                lines.append(node.lineno)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if f"threshold {value}" in node.value or f"{value} threshold" in node.value:
                lines.append(node.lineno)
    return sorted(set(lines))


def test_threshold_literals_finds_a_retyped_default_threshold():
    source = ('DECISION_THRESHOLD = 0.5\n'
              'def f(p, threshold=0.5, *, margin=0.5): pass\n'
              'class A:\n'
              '    threshold: float = 0.5\n'
              'text = f"pooled (threshold 0.5, raw)"\n'
              'def g(p, threshold=DEFAULT_THRESHOLD): pass\n'
              'dropout = 0.5\n'
              '"""At the fixed 0.5 threshold."""\n')
    assert threshold_literals(source) == [1, 2, 4, 5]


def test_the_default_threshold_is_defined_only_in_config():
    files = [p for folder in (PACKAGE_DIR, ROOT / "pages", ROOT / "ui") for p in sorted(folder.rglob("*.py"))]
    files.append(ROOT / "app.py")
    definition = PACKAGE_DIR / "config.py"
    found = {str(p.relative_to(ROOT)): lines for p in files if p != definition
             if (lines := threshold_literals(p.read_text(encoding="utf-8"), str(p)))}
    assert found == {}, f"the default decision threshold is config.DEFAULT_THRESHOLD; re-typed at {found}"
    assert threshold_literals(definition.read_text(encoding="utf-8"))  # the check sees the definition


def notice_literals(source: str, filename: str = "<source>") -> list[int]:
    """Lines of ``source`` whose strings (not docstrings) word the research-use notice themselves."""
    tree = ast.parse(source, filename)
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    return sorted({node.lineno for node in ast.walk(tree)
                   if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                   and re.search(r"research use|research decision support|not a diagnosis", node.value, re.I)})


def test_the_research_use_notice_is_worded_only_in_notice():
    from breakhis_core import notice

    assert notice_literals('"""Not a diagnosis."""\nTEXT = "For research use only"\n') == [2]
    files = [p for folder in (PACKAGE_DIR, ROOT / "pages", ROOT / "ui") for p in sorted(folder.rglob("*.py"))]
    files.append(ROOT / "app.py")
    definition = PACKAGE_DIR / "notice.py"
    found = {str(p.relative_to(ROOT)): lines for p in files if p != definition
             if (lines := notice_literals(p.read_text(encoding="utf-8"), str(p)))}
    assert found == {}, f"the research-use notice is breakhis_core.notice's; worded again at {found}"
    templates = {p.name for p in (PACKAGE_DIR / "templates").iterdir()
                 if re.search(r"research use|not a diagnosis", p.read_text(encoding="utf-8"), re.I)}
    assert templates == set(), f"the report templates take the notice as a value; worded in {templates}"
    assert len(notice_literals(definition.read_text(encoding="utf-8"))) == 2  # the check sees both wordings
    assert "not a diagnosis" in notice.NOTICE and notice.INTENDED_USE.endswith("not a diagnosis")


def documented_block_entries(index: int) -> set[str]:
    """The file names listed in the ``index``-th code block (0: the run, 1: the experiment, 2: the slide analysis)
    of docs/ARCHITECTURE.md's run directory section."""
    text = (PACKAGE_DIR.parent / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    block = text.split("\n## Run directory\n", 1)[1].split("```\n")[2 * index + 1]
    names = set()
    for line in block.splitlines():
        match = re.match(r"  (\S.*?)(?:\s{2,}|$)", line)
        if match:
            names.update(name.split("/")[0] for name in match.group(1).split(", "))
    return names


def test_the_documented_experiment_and_slide_analysis_folders_are_the_ones_defined():
    from breakhis_core.runs import experimentdir
    from breakhis_core.slides import analysisdir

    for index, module in ((1, experimentdir), (2, analysisdir)):
        defined = {value for name, value in vars(module).items() if name.endswith("_FILE") and isinstance(value, str)}
        defined |= set(module.SHARED_WITH_RUNS)
        documented = documented_block_entries(index)
        assert documented == defined, (f"{module.__name__}: documented only: {sorted(documented - defined)}; "
                                       f"defined only: {sorted(defined - documented)}")
    assert set(analysisdir.OUTPUT_FILES) <= documented_block_entries(2)
