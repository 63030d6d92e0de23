"""The layout holds: what goes inside the .mar imports nothing of the repository's tooling, the library sits below
its callers, nothing edits sys.path outside the tests, every test folder is a package, the image ships no
benchmark or test, and no comment or message names a repository file that is not there."""
from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT

TOOLING = {"serving", "scripts", "benchmarks", "gateway", "train", "data", "tests"}
# What each top-level package may import of the repository's own packages (a folder answers one question).
ALLOWED = {
    "model": {"model"},
    "handler": {"handler", "model"},
    "serving": {"serving"},
    "scripts": {"scripts", "serving", "train", "data"},
    "gateway": {"gateway", "serving"},
    "benchmarks": {"benchmarks", "serving", "handler", "model", "train", "data"},
}
# The top-level modules: the training command (train.py) above the training data (data.py), both above model/.
MODULES_ALLOWED = {"data": {"model"}, "train": {"data", "model"}}
REPOSITORY_PACKAGES = {"model", "handler", "serving", "scripts", "gateway", "benchmarks", "train", "data", "tests"}
PATH_REFERENCE = re.compile(
    r"(?<![\w/.-])((?:model|handler|serving|scripts|benchmarks|gateway|deploy|web|docs|tests)/[\w./-]*?"
    r"(?:\.(?:py|sh|md|yaml|yml|json|lua|txt|template|png|html|js|css|toml|ini)\b|/(?=[\s`'\")]|$)))")


def tracked(*patterns: str) -> list[Path]:
    names = subprocess.run(["git", "ls-files", "--", *patterns], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    return [ROOT / name for name in names if (ROOT / name).is_file()]


def imported_packages(path: Path) -> set[str]:
    """The repository packages a module imports (absolute imports; the first dotted name)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & REPOSITORY_PACKAGES


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_what_sits_below_it(package):
    wrong = {str(path.relative_to(ROOT)): sorted(imported_packages(path) - ALLOWED[package])
             for path in tracked(f"{package}/*.py")}
    assert not {name: imports for name, imports in wrong.items() if imports}


@pytest.mark.parametrize("module", sorted(MODULES_ALLOWED))
def test_the_training_modules_import_only_what_sits_below_them(module):
    """data.py is the training data, imported by train.py, the tests, the benchmarks and gpu_check: it needs model/
    alone; train.py, the command, needs data.py and model/."""
    assert imported_packages(ROOT / f"{module}.py") <= MODULES_ALLOWED[module]


def test_what_goes_inside_the_archive_imports_no_tooling():
    """model/ and handler/ travel in the .mar: a worker must run the archive's code, never reach for the repo's."""
    for path in tracked("model/*.py", "handler/*.py"):
        assert not imported_packages(path) & TOOLING, path


def test_nothing_outside_the_tests_edits_sys_path():
    edits = []
    for path in tracked("*.py"):
        if path.relative_to(ROOT).parts[0] == "tests":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
                    and node.value.id == "sys"):
                edits.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not edits


def test_every_test_folder_is_a_package():
    folders = {path.parent for path in tracked("tests/*.py")}
    assert not [str(folder.relative_to(ROOT)) for folder in folders if not (folder / "__init__.py").is_file()]


def test_the_image_ships_neither_benchmarks_nor_tests():
    copied = re.findall(r"(?m)^COPY\s+(?!--from)(.+?)\s+\S+$", (ROOT / "Dockerfile").read_text())
    sources = {part.rstrip("/") for line in copied for part in line.split()}
    assert {"serving", "scripts", "gateway", "model", "handler"} <= sources
    assert not sources & {"benchmarks", "tests"}
    allowed = set(re.findall(r"(?m)^!(\S+?)/?$", (ROOT / ".dockerignore").read_text()))
    assert not allowed & {"benchmarks", "tests"}


def test_no_file_names_a_repository_path_that_is_gone():
    """Comments, messages and configs name files by path: a move must take them along (the docs have their own
    check in tests/test_docs.py)."""
    generated = ROOT / "serving" / "rpc" / "stubs"
    examples = {Path(__file__), ROOT / "tests" / "test_docs.py"}  # they hold made-up paths on purpose
    stale = []
    for path in tracked("*"):
        if path.suffix in (".md", ".png") or generated in path.parents or path in examples:
            continue
        for match in PATH_REFERENCE.finditer(path.read_text(errors="replace")):
            named = match.group(1)
            if not (ROOT / named).exists():
                stale.append(f"{path.relative_to(ROOT)}: {named}")
    assert not stale
