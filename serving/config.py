"""Where a TorchServe listens, read from config.properties, so ports, model name and token path are never retyped.

TorchServe's own rule is followed: with enable_envvars_config=true, a TS_<KEY> environment variable overrides
<key> in config.properties.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "config.properties"
DEFAULT_MODEL = "digits"
KEY_FILE_NAME = "key_file.json"  # TorchServe writes it into the directory it was started from


def load_properties(path: Path) -> dict[str, str]:
    """Java-style key=value file (comments with #), as TorchServe reads it."""
    properties = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, _, value = line.partition("=")
            properties[key.strip()] = value.strip()
    return properties


def effective_properties(path: Path = DEFAULT_CONFIG, environ: dict | None = None) -> dict[str, str]:
    """config.properties with TS_* environment overrides applied, as TorchServe applies them."""
    environ = os.environ if environ is None else environ
    properties = load_properties(path)
    if properties.get("enable_envvars_config", "false").lower() == "true":
        for name, value in environ.items():
            if name.startswith("TS_") and name not in ("TS_CONFIG_FILE",):
                properties[name[3:].lower()] = value
    return properties


@dataclass(frozen=True)
class Ports:
    """TorchServe's five listeners."""
    inference: int
    management: int
    metrics: int
    grpc_inference: int
    grpc_management: int

    @classmethod
    def block(cls, base: int) -> "Ports":
        """base..base+4 in the order above (the gateway's TorchServe: REST base, management +1, metrics +2,
        gRPC +3 and +4)."""
        return cls(*range(base, base + 5))

    def all(self) -> list[int]:
        return [self.inference, self.management, self.metrics, self.grpc_inference, self.grpc_management]


@dataclass(frozen=True)
class Endpoints:
    inference: str
    management: str
    metrics: str
    grpc_inference: str
    grpc_management: str
    key_file: Path

    @classmethod
    def from_config(cls, path: Path = DEFAULT_CONFIG, key_file: Path | None = None, environ=None) -> "Endpoints":
        props = effective_properties(path, environ)
        grpc_host = props.get("grpc_inference_address", "127.0.0.1")
        return cls(
            inference=props.get("inference_address", "http://127.0.0.1:8080").rstrip("/"),
            management=props.get("management_address", "http://127.0.0.1:8081").rstrip("/"),
            metrics=props.get("metrics_address", "http://127.0.0.1:8082").rstrip("/"),
            grpc_inference=f"{grpc_host}:{props.get('grpc_inference_port', '7070')}",
            grpc_management=f"{props.get('grpc_management_address', grpc_host)}:{props.get('grpc_management_port', '7071')}",
            key_file=Path(key_file) if key_file else ROOT / KEY_FILE_NAME,
        )

    @classmethod
    def on_loopback(cls, ports: Ports, key_file: Path) -> "Endpoints":
        return cls(
            inference=f"http://127.0.0.1:{ports.inference}",
            management=f"http://127.0.0.1:{ports.management}",
            metrics=f"http://127.0.0.1:{ports.metrics}",
            grpc_inference=f"127.0.0.1:{ports.grpc_inference}",
            grpc_management=f"127.0.0.1:{ports.grpc_management}",
            key_file=Path(key_file),
        )

    def ports(self) -> Ports:
        return Ports(*(int(address.rsplit(":", 1)[1]) for address in (
            self.inference, self.management, self.metrics, self.grpc_inference, self.grpc_management)))


def archives_to_load(properties: dict[str, str], store: Path) -> tuple[list[str], list[str]]:
    """(present, missing): config's load_models split by whether the archive is in the model store.

    TorchServe logs a stack trace for each missing archive and goes on; serve.sh passes only the present ones.
    """
    names = [name.strip() for name in properties.get("load_models", "").split(",") if name.strip()]
    if names in (["all"], ["ALL"]):
        return names, []
    present = [name for name in names if (store / name).is_file()]
    return present, [name for name in names if name not in present]


def model_store(properties: dict[str, str], root: Path = ROOT) -> Path:
    """config's model_store (relative paths from `root`, where scripts/serve.sh starts TorchServe)."""
    store = Path(properties.get("model_store", "model_store"))
    return store if store.is_absolute() else root / store
