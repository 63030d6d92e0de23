"""TorchServe's model archives (.mar): build one with scripts/package.sh, read one (a zip whose
MAR-INF/MANIFEST.json names the model, its version and its serialized weights)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from serving.config import ROOT

PACKAGE_SCRIPT = ROOT / "scripts" / "package.sh"


def package(artifacts: Path, store: Path, name: str, model_config: Path | None = None, version: str = "1.0",
            archive_name: str | None = None, latency: bool = False) -> Path:
    """scripts/package.sh: train.py's output `artifacts` -> store/<archive_name or name>.mar; its path. `latency`:
    the model config with batching off and one worker (package.sh --latency), for a model serving lone requests."""
    command = [str(PACKAGE_SCRIPT), "--artifacts", str(artifacts), "--export-path", str(store),
               "--model-name", name, "--version", version, "--archive-name", archive_name or name]
    if model_config:
        command += ["--model-config", str(model_config)]
    if latency:
        command.append("--latency")
    # The archiver of the Python running this (the venv's), whatever the shell's PATH says.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    subprocess.run(command, check=True, env=env, capture_output=True)
    return store / f"{archive_name or name}.mar"


def manifest(archive: Path) -> dict:
    with zipfile.ZipFile(archive) as mar:
        return json.loads(mar.read("MAR-INF/MANIFEST.json"))


def model_name_of(archive: Path) -> str:
    """The model name in a .mar's manifest (the file name may differ: digits_v2.mar holds model digits)."""
    return manifest(archive)["model"]["modelName"]


def weights_name(archive: Path) -> str:
    """The file name of the serialized weights inside the archive."""
    return manifest(archive)["model"]["serializedFile"]


def extract(archive: Path, directory: Path, names: list[str] | None = None) -> Path:
    """The archive's files (or only `names`) written into `directory`, which is returned."""
    directory.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as mar:
        mar.extractall(directory, members=names)
    return directory


def extract_weights(archive: Path, directory: Path) -> Path:
    """The archive's serialized weights, written into `directory`; their path."""
    name = weights_name(archive)
    extract(archive, directory, [name])
    return directory / name
