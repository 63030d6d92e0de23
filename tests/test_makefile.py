"""The Makefile rebuilds what an edit makes stale: the archive when anything scripts/package.sh ships changes, the
weights when anything training reads changes. Run in a scratch copy of the repository with real `make`, the real
scripts/package.sh and torch-model-archiver, on the session's trained model."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.support import ROOT

COPIED = ["Makefile", "requirements.txt", "requirements-serve.txt", "train.py", "data.py", "model", "handler",
          "scripts/package.sh"]


@pytest.fixture
def scratch(artifacts, tmp_path) -> Path:
    """The repository's build inputs, a .venv that is this one, and the trained artifacts, each newer than what it
    is made from (as after `make package`)."""
    root = tmp_path / "repo"
    for name in COPIED:
        source, target = ROOT / name, root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    (root / ".venv").mkdir()
    (root / ".venv" / "bin").symlink_to(Path(sys.executable).parent)
    shutil.copytree(artifacts, root / "artifacts")
    now = 1_700_000_000
    for path in root.rglob("*"):
        os.utime(path, (now, now), follow_symlinks=False)
    (root / ".venv" / ".installed").touch()
    os.utime(root / ".venv" / ".installed", (now + 10, now + 10))
    for path in (root / "artifacts").rglob("*"):
        os.utime(path, (now + 20, now + 20))
    return root


def make(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=root, capture_output=True, text=True,
                          timeout=300)


def stale(root: Path, target: str) -> bool:
    """`make -q`: 0 when the target is up to date, 1 when it would be rebuilt."""
    result = make(root, "-q", target)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode == 1


def shipped_sources(archive: Path) -> set[str]:
    """The repository files an archive carries (scripts/package.sh copies them flat or as --handler/--model-file)."""
    renamed = {"digit_handler.py": "handler/digit_handler.py", "digit_cnn.py": "model/digit_cnn.py"}
    sources = set()
    with zipfile.ZipFile(archive) as mar:
        for name in mar.namelist():
            if name.endswith(".py"):
                sources.add(renamed.get(name, name))
    return sources | {"handler/model-config.yaml", "scripts/package.sh"}


def touch_later(path: Path) -> None:
    """As if edited after everything built so far."""
    later = time.time() + 100
    os.utime(path, (later, later))


def test_every_file_the_archive_ships_makes_it_stale(scratch):
    built = make(scratch, "package")
    assert built.returncode == 0, built.stdout + built.stderr
    assert "train.py" not in built.stdout, "the trained weights were up to date: nothing to train"
    archive = scratch / "model_store" / "digits.mar"
    assert not stale(scratch, "model_store/digits.mar")
    sources = shipped_sources(archive)
    assert {"handler/digit_handler.py", "handler/wire.py", "model/preprocessing.py"} <= sources, sources
    for source in sorted(sources):
        assert (scratch / source).is_file(), f"{source} is in the archive but not in the repository"
        before = (scratch / source).stat().st_mtime
        touch_later(scratch / source)
        assert stale(scratch, "model_store/digits.mar"), f"editing {source} leaves the archive as it was"
        os.utime(scratch / source, (before, before))
    assert not stale(scratch, "model_store/digits.mar")


def test_an_edited_handler_module_is_in_the_next_archive(scratch):
    assert make(scratch, "package").returncode == 0
    wire = scratch / "handler" / "wire.py"
    wire.write_text(wire.read_text() + "# edited after the last package\n")
    touch_later(wire)
    rebuilt = make(scratch, "package")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    with zipfile.ZipFile(scratch / "model_store" / "digits.mar") as mar:
        assert mar.read("handler/wire.py").decode().endswith("# edited after the last package\n")


@pytest.mark.parametrize("source", ["train.py", "data.py", "model/digit_cnn.py", "model/preprocessing.py"])
def test_what_training_reads_makes_the_weights_stale(scratch, source):
    assert not stale(scratch, "artifacts/digit_cnn.pt")
    touch_later(scratch / source)
    assert stale(scratch, "artifacts/digit_cnn.pt"), f"editing {source} leaves the trained weights as they were"


def test_the_makefile_defines_each_target_once():
    """make warns, and keeps the last, when a target's recipe is written twice: one of them is silently dead."""
    result = subprocess.run(["make", "-n", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr
