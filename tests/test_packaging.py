"""The wheel ships every source file, template and named spec; the package's imports flow one way; no file names
a folder of one machine; tests share code only through helpers.py and conftest.py."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# where each top-level source folder lands in the installed package
INSTALLED_AS = {"llmspec": "llmspec", "backends": "llmspec/backends", "specs": "llmspec/specs"}
# the package's layers, lowest first: a module may import its own layer and the ones below, never above
LAYERS = ["errors", "files", "spec", "planner", "compile", "interop", "data", "train", "backends", "runner", "cli"]


def tracked_sources() -> list[str]:
    listed = subprocess.run(["git", "ls-files", *INSTALLED_AS], cwd=ROOT, capture_output=True, text=True, check=True)
    return [path for path in listed.stdout.split() if not path.endswith((".pyc",))]


@pytest.mark.integration
def test_wheel_holds_every_source_file(tmp_path):
    # build from a copy of the tracked files, so the checkout gets no build/ or egg-info, and an untracked file
    # that the package needs would be missed here as it would in a release
    tree = tmp_path / "tree"
    for path in [*tracked_sources(), "pyproject.toml", "setup.py", "README.md"]:
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, tree / path)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(tree), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("llmspec-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    expected = {INSTALLED_AS[path.split("/")[0]] + path[path.index("/"):] for path in tracked_sources()}
    assert expected - shipped == set()
    assert any(name.endswith("templates/model.py.in") for name in shipped)
    assert "llmspec/specs/" + "tiny.yaml" in shipped  # (split: the path exists only inside the wheel)


def _imports(path: Path, package: str) -> set[str]:
    """Every llmspec module a file imports, at the top or inside a function (a lazy import is still a dependency)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
                   for stmt in node.body for inner in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:  # annotations only: not imported at run time
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else package.rsplit(".", node.level - 1)[0] + "." + node.module
            if base.startswith("llmspec"):
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("llmspec"))
    return found


def _modules() -> dict[str, Path]:
    out = {}
    for folder, installed in INSTALLED_AS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [installed.replace("/", "."), *path.relative_to(ROOT / folder).with_suffix("").parts]
            out[".".join(p for p in parts if p != "__init__")] = path
    return out


def _layer(module: str) -> int:
    part = module.split(".")[1] if module.count(".") else ""
    return LAYERS.index(part) if part in LAYERS else -1


def test_imports_flow_one_way():
    modules = _modules()
    upward = []
    for name, path in modules.items():
        if _layer(name) < 0:
            continue
        for target in _imports(path, name):
            if target in modules and _layer(target) > _layer(name):
                upward.append(f"{name} imports {target}")
    assert upward == []


def test_no_import_cycles():
    modules = _modules()
    graph = {name: {t for t in _imports(path, name) if t in modules and t != name} for name, path in modules.items()}
    # a package's __init__ re-exporting its own modules is not a cycle through them
    for name in graph:
        graph[name] = {t for t in graph[name] if not (t.startswith(name + ".") and modules[name].name == "__init__.py")}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(" → ".join([*trail[trail.index(nxt):], nxt]) if nxt in trail else f"{node} → {nxt}")
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_few_modules_at_the_top():
    top = sorted(p.name for p in (ROOT / "llmspec").glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "errors.py", "files.py", "runner.py"]


def test_public_api_imports():
    import llmspec

    for name in llmspec.__all__:
        assert callable(getattr(llmspec, name)) or name == "__version__"


def test_paths_named_in_code_and_docs_exist():
    """A comment or doc that names a file of this repository names one that exists (no stale pointers)."""
    pattern = re.compile(r"\b((?:llmspec|backends|tests|docs|specs|benchmarks)/[\w./-]*\.(?:py|md|in|yaml|png|json))")
    sources = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "llmspec").rglob("*.py"),
               *(ROOT / "llmspec").rglob("*.in"), *(ROOT / "backends").glob("*.py"), *(ROOT / "tests").glob("*.py"),
               *(ROOT / "benchmarks").glob("*.py")]
    missing = sorted({f"{source.relative_to(ROOT)}: {name}" for source in sources
                      for name in pattern.findall(source.read_text(encoding="utf-8"))
                      if not (ROOT / name).exists() and "*" not in name})
    assert missing == []


# Places that exist on one machine only: home and work folders, temporary directories, mounts. The paths every
# machine has (/dev/null, /usr/bin/env, /proc as a place no one may write) are not among them.
ONE_MACHINE = re.compile(r"(?<![\w.~/$-])(?:/(?:home|Users|root|work|workspace|scratch|tmp|var/tmp|var/folders|"
                         r"private/var|mnt|media)/|[A-Za-z]:\\(?:Users|Documents)\\)")


def test_no_file_names_a_place_outside_the_repository():
    """Code, docs and specs name paths relative to the repository or the user's working directory, or make them with
    tempfile: never one machine's folders (a session's checkout, someone's home, a /tmp file)."""
    # (\x2f is "/": written so, the samples do not trip the scan below over this file)
    assert [bool(ONE_MACHINE.search(text)) for text in ("cd \x2fwork/main", "see \x2ftmp/run.log", "C:\\Users\\me\\x",
                                                         "RUN_DIR/data/", "/dev/null", "$TMPDIR/tmp/x")] == \
        [True, True, True, False, False, False]
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    found = []
    for name in listed:
        try:
            text = (ROOT / name).read_text(encoding="utf-8")
        except (FileNotFoundError, UnicodeDecodeError):  # deleted in the working tree; weights and images
            continue
        found += [f"{name}:{text.count(chr(10), 0, hit.start()) + 1}: {text[hit.start():hit.end() + 30].split()[0]}"
                  for hit in ONE_MACHINE.finditer(text)]
    assert found == []


def test_tests_share_code_through_helpers_and_conftest_only():
    """A test module imports shared code as `from helpers import ...` and gets shared fixtures from conftest.py; it
    never imports another test module (whose fixtures would then run under two module names) or `tests.`."""
    tests = ROOT / "tests"
    own = {path.stem for path in tests.glob("*.py")}
    found = []
    for path in sorted(tests.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.name}:{node.lineno}: {name}" for name in names
                      if name.split(".")[0] == "tests" or (name in own and name != "helpers")]
    assert found == []
