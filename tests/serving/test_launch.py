"""serving/launch.py without a server: the environment every TorchServe starts with, and finding a running one."""
import os
from pathlib import Path

from serving import launch
from serving.config import Ports


def environment(monkeypatch, **options):
    monkeypatch.setenv("TS_INFERENCE_ADDRESS", "http://0.0.0.0:9")  # a stray override in the caller's shell
    monkeypatch.setenv("TS_MAX_WORKERS", "7")
    return launch.torchserve_environment("digits.mar", Path("/t/tmp"), Path("/t/logs"), options.pop("ports", None),
                                         Path("/t/store"), **options)


def test_listeners_on_the_ports_asked_for_on_loopback_and_no_stray_ts_variable(monkeypatch):
    env = environment(monkeypatch, ports=Ports.block(18080), worker_port=19080)
    assert env["TS_INFERENCE_ADDRESS"] == "http://127.0.0.1:18080"
    assert env["TS_MANAGEMENT_ADDRESS"] == "http://127.0.0.1:18081"
    assert env["TS_METRICS_ADDRESS"] == "http://127.0.0.1:18082"
    assert (env["TS_GRPC_INFERENCE_ADDRESS"], env["TS_GRPC_INFERENCE_PORT"]) == ("127.0.0.1", "18083")
    assert (env["TS_GRPC_MANAGEMENT_ADDRESS"], env["TS_GRPC_MANAGEMENT_PORT"]) == ("127.0.0.1", "18084")
    assert env["TS_INITIAL_WORKER_PORT"] == "19080" and "TS_MAX_WORKERS" not in env
    assert (env["TMPDIR"], env["TEMP"], env["LOG_LOCATION"]) == ("/t/tmp", "/t/tmp", "/t/logs")
    assert env["TS_LOAD_MODELS"] == "digits.mar" and env["TS_MODEL_STORE"] == "/t/store"
    assert env["PATH"].split(os.pathsep)[0] == str(launch.BIN)  # the venv's torchserve and Python


def test_the_configs_own_listeners_and_the_callers_overrides_when_asked(monkeypatch):
    """scripts/serve.sh: config.properties' ports, and TS_<KEY> from the shell overrides it (TorchServe's rule)."""
    env = environment(monkeypatch, keep_ts_env=True)
    assert env["TS_INFERENCE_ADDRESS"] == "http://0.0.0.0:9" and env["TS_MAX_WORKERS"] == "7"
    assert "TS_INITIAL_WORKER_PORT" not in env and "TS_GRPC_INFERENCE_PORT" not in env


def test_extra_variables_come_last(monkeypatch):
    env = environment(monkeypatch, ports=Ports.block(18080), extra_env={"TS_NUMBER_OF_GPU": "2",
                                                                        "TS_INITIAL_WORKER_PORT": "30000"})
    assert env["TS_NUMBER_OF_GPU"] == "2" and env["TS_INITIAL_WORKER_PORT"] == "30000"


def test_attach_finds_nothing_without_a_pid_file_or_with_a_pid_that_is_not_torchserve(tmp_path):
    assert launch.attach(tmp_path, tmpdir=tmp_path) is None
    (tmp_path / launch.PID_FILE_NAME).write_text(str(os.getpid()))  # alive, but this is pytest
    assert launch.attach(tmp_path, tmpdir=tmp_path) is None
    (tmp_path / launch.PID_FILE_NAME).write_text("not a pid")
    assert launch.attach(tmp_path, tmpdir=tmp_path) is None
