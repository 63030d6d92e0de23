"""The docs say only what the repository holds: README.md stays a front door, and every link, `make` target,
`python -m` module and repository path that README.md, SECURITY.md, docs/*.md and the deploy READMEs name exists.

A moved file, a renamed module or a dropped target then fails here, not in a reader's terminal.
"""
from __future__ import annotations

import glob
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

README_MAX_LINES = 300  # the front door: what it is, the commands, the picture, the layout, links to docs/
DOCS = sorted(
    [ROOT / "README.md", ROOT / "SECURITY.md", *(ROOT / "docs").glob("*.md"),
     ROOT / "deploy" / "k8s" / "README.md", ROOT / "deploy" / "monitoring" / "README.md"]
)
# Backticked words that start with one of these are taken as paths of the repository.
TOP_LEVEL = ("scripts/", "serving/", "benchmarks/", "gateway/", "model/", "handler/", "deploy/", "web/", "docs/",
             "tests/")

FENCE = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1[ \t]*$", re.S | re.M)
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")
MAKE = re.compile(r"(?:^|[\s;&|(`])make\s+(?:-[-\w]+\s+)*([a-z][a-z0-9-]*)")
PYTHON_M = re.compile(r"python[0-9.]*\s+-m\s+([A-Za-z_][\w.]*)")
# A test file named by its path anywhere in a page (prose, tables, code), backticked or not; a glob is not a name.
TEST_FILE_PATH = re.compile(r"(?<![\w/.-])(tests/(?:[\w-]+/)*test_\w+\.py)(?![\w/])")
# A test file named by its bare name: checked on the pages that list test files (somewhere under tests/).
TEST_FILE_NAME = re.compile(r"(?<![\w/.-])(test_\w+\.py)(?![\w/])")
BARE_TEST_NAMES = {ROOT / "docs" / "testing.md"}


def _ids(paths):
    return [str(path.relative_to(ROOT)) for path in paths]


def code_blocks(text: str) -> list[str]:
    return [match.group(2) for match in FENCE.finditer(text)]


def prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return FENCE.sub("", text)


def inline_code(text: str) -> list[str]:
    return [match.group(2).strip() for match in INLINE_CODE.finditer(prose(text))]


def all_code(text: str) -> list[str]:
    """What a reader would type: fenced blocks and inline code spans."""
    return code_blocks(text) + inline_code(text)


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    targets = set()
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9][\w.-]*(?:\s+[A-Za-z0-9][\w.-]*)*)\s*:(?!=)", line)
        if match:
            targets.update(match.group(1).split())
        if line.startswith(".PHONY:"):
            targets.update(line.split(":", 1)[1].split())
    return targets


def repo_module_exists(module: str) -> bool | None:
    """True/False for a module of this repository; None when its first part is not in the repository."""
    parts = module.split(".")
    if not ((ROOT / parts[0]).is_dir() or (ROOT / f"{parts[0]}.py").is_file()):
        return None
    base = ROOT.joinpath(*parts)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file() or (base / "__main__.py").is_file()


def installed_module_exists(module: str) -> bool:
    """A module of the standard library or the venv (pytest, pip, venv, http.server), found without importing it."""
    top = module.split(".")[0]
    try:
        if importlib.util.find_spec(top) is None:
            return False
        return module == top or importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move details to docs/ (at most {README_MAX_LINES})"


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_every_page_starts_with_what_it_covers(doc):
    """A title, then a sentence (not a table, list or code block) saying what the page covers."""
    lines = [line for line in doc.read_text().splitlines() if line.strip()]
    assert lines and lines[0].startswith("# "), f"{doc.name}: no title"
    assert not lines[1].lstrip().startswith(("#", "|", "-", "*", "```", "!")), f"{doc.name}: no opening sentence"


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_relative_links_resolve_to_files_without_anchors(doc):
    bad = []
    for match in LINK.finditer(prose(doc.read_text())):
        target = match.group(1) or match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("<"):
            continue  # http(s), mailto: not ours to check
        if "#" in target:
            bad.append(f"{target} (an anchor: link the page, name the section in words)")
            continue
        if not (doc.parent / target).resolve().exists():
            bad.append(f"{target} (no such file)")
    assert not bad, f"{doc.relative_to(ROOT)}: " + "; ".join(bad)


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_every_make_target_exists(doc):
    targets = makefile_targets()
    named = {name for code in all_code(doc.read_text()) for name in MAKE.findall(code)}
    missing = sorted(named - targets)
    assert not missing, f"{doc.relative_to(ROOT)} names make targets the Makefile lacks: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_every_python_module_exists(doc):
    named = {module.rstrip(".") for code in all_code(doc.read_text()) for module in PYTHON_M.findall(code)}
    missing = []
    for module in sorted(named):
        in_repo = repo_module_exists(module)
        if in_repo is False or (in_repo is None and not installed_module_exists(module)):
            missing.append(module)
    assert not missing, f"{doc.relative_to(ROOT)} runs modules that do not exist: {missing}"


def repo_paths(text: str) -> set[str]:
    """Words in inline code that start with a top-level folder of the repository."""
    paths = set()
    for code in inline_code(text):
        for word in code.split():
            word = word.strip("'\"(),;:")
            word = word.split("::")[0]
            if word.startswith(TOP_LEVEL) and not re.search(r"[<>{}$]", word):
                paths.add(word.rstrip(".,"))
    return paths


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_every_repository_path_exists(doc):
    missing = []
    for path in sorted(repo_paths(doc.read_text())):
        found = glob.glob(str(ROOT / path)) if any(c in path for c in "*?[") else (ROOT / path).exists()
        if not found:
            missing.append(path)
    assert not missing, f"{doc.relative_to(ROOT)} names paths that do not exist: {missing}"


def missing_test_files(text: str, bare_names: bool, root: Path = ROOT) -> list[str]:
    """The test files `text` names that `root` lacks: every tests/.../test_*.py path, and with `bare_names` every
    bare test_*.py name that no file under tests/ has."""
    missing = {path for path in TEST_FILE_PATH.findall(text) if not (root / path).is_file()}
    if bare_names:
        present = {path.name for path in (root / "tests").rglob("test_*.py")}
        missing |= {name for name in TEST_FILE_NAME.findall(text) if name not in present}
    return sorted(missing)


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_every_named_test_file_exists(doc):
    """A test file renamed or removed must take every page that names it along, backticks or not."""
    missing = missing_test_files(doc.read_text(), bare_names=doc in BARE_TEST_NAMES)
    assert not missing, f"{doc.relative_to(ROOT)} names test files that do not exist: {missing}"


# ---------------------------------------------------------------- the checks check

def test_the_extractors_find_what_a_reader_would_type():
    text = (
        "Run `make demo WEB_PORT=1` and `scripts/serve.sh start`, see [x](docs/testing.md) and "
        "[y](https://example.com/#a).\n\n```bash\nmake check   # or: make test\n"
        ".venv/bin/python -m pytest tests/x.py\npython -m scripts.predict a.png\n```\n"
        "Prose that says make sure is not a target; `handler/*.py` is a glob.\n"
    )
    assert {name for code in all_code(text) for name in MAKE.findall(code)} == {"demo", "check", "test"}
    assert {m for code in all_code(text) for m in PYTHON_M.findall(code)} == {"pytest", "scripts.predict"}
    assert repo_paths(text) == {"scripts/serve.sh", "handler/*.py"}
    assert [m.group(1) for m in LINK.finditer(prose(text))] == ["docs/testing.md", "https://example.com/#a"]
    assert installed_module_exists("pytest") and installed_module_exists("venv")
    assert not installed_module_exists("no_such_module_here")
    assert repo_module_exists("tests.test_docs") is True and repo_module_exists("tests.no_such") is False


def test_a_named_test_file_that_is_gone_is_reported(tmp_path):
    (tmp_path / "tests" / "unit").mkdir(parents=True)
    (tmp_path / "tests" / "unit" / "test_here.py").write_text("")
    text = (
        "| tests/unit/test_here.py | 3 |\n| tests/unit/test_gone.py | 1 |\n"
        "Run `.venv/bin/python -m pytest tests/unit/test_here.py::test_one`; every tests/unit/test_*.py runs.\n"
        "test_here.py is fast, test_gone.py was slow (see docs/test_notes.py.md).\n"
        "```bash\n.venv/bin/python -m pytest tests/old/test_moved.py\n```\n"
    )
    assert missing_test_files(text, bare_names=False, root=tmp_path) == [
        "tests/old/test_moved.py", "tests/unit/test_gone.py"]
    assert missing_test_files(text, bare_names=True, root=tmp_path) == [
        "test_gone.py", "tests/old/test_moved.py", "tests/unit/test_gone.py"]
    assert missing_test_files("tests/test_docs.py and test_layout.py", bare_names=True) == []
