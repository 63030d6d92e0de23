"""benchmarks/coldstart.py: a container's start split by its logs (lines as the image writes them)."""
import pytest

from benchmarks.coldstart import docker_time, log_time, split

BEGAN = docker_time("2026-12-02T17:27:35.000000000Z")  # the `docker run` call
TS_LOG = [
    "2026-12-02T17:27:36,137 [INFO ] main org.pytorch.serve.util.TokenAuthorization - ",
    "######",
    "2026-12-02T17:27:36,495 [INFO ] main org.pytorch.serve.ModelServer - Loading initial models: digits.mar",
    "2026-12-02T17:27:37,004 [INFO ] main org.pytorch.serve.ModelServer - Metrics API bind to: http://127.0.0.1:28092",
]
MODEL_LOG = [
    "2026-12-02T17:27:41,826 [INFO ] W-29090-digits_1.0-stdout MODEL_LOG - [PID]35",
    "2026-12-02T17:27:40,400 [INFO ] W-29090-digits_1.0-stdout MODEL_LOG - digit model loaded on cpu by pid 35 "
    "(preprocessing on cpu, 10 classes, torch threads 1, resolution 28, TorchScript optimized, weights sha256 "
    "0123456789abcdef; started in: worker start 2500 ms, weights 15 ms, TorchScript 850 ms, warm-up 760 ms, the rest "
    "5 ms) from /tmp/digits/tmp/models/x/digit_cnn.py",
    "2026-12-02T17:27:40,900 [INFO ] W-29091-digits_1.0-stdout MODEL_LOG - digit model loaded on cpu by pid 36 "
    "(preprocessing on cpu, 10 classes, torch threads 1, resolution 28, TorchScript optimized, weights sha256 "
    "0123456789abcdef; started in: worker start 2900 ms, weights 12 ms, TorchScript 700 ms, warm-up 800 ms, the rest "
    "8 ms) from /tmp/digits/tmp/models/x/digit_cnn.py",
]
GATEWAY_LOG = [
    "2026-12-02T17:27:35.252383799Z WARNING: sun.reflect.Reflection.getCallerClass is not supported.",
    "2026-12-02T17:27:38.181783057Z Model server started.",
    "2026-12-02T17:27:41.150000000Z 2026-12-02 17:27:41,149 gateway INFO gateway ready: REST, health and the web page",
]


def test_each_event_in_seconds_after_docker_run():
    started = docker_time("2026-12-02T17:27:35.140000000Z")
    result = split(BEGAN, started, TS_LOG, MODEL_LOG, GATEWAY_LOG, BEGAN + 6.2, BEGAN + 6.25)
    events = result["events"]
    assert events["container started"] == pytest.approx(0.14)
    assert events["frontend's first log line"] == pytest.approx(1.137)
    assert events["frontend loads the archive"] == pytest.approx(1.495)
    assert events["frontend started"] == pytest.approx(3.181)  # its stdout in the container's log, to the ms
    # each worker was created its durations before its line: 40.400 - 4.130 and 40.900 - 4.420
    assert events["first worker process"] == pytest.approx(36.270 - 35.0)
    assert events["last worker loaded"] == pytest.approx(5.9)
    assert events["gateway ready (its log)"] == pytest.approx(6.15)
    assert (events["ready (seen by a client)"], events["first answer"]) == pytest.approx((6.2, 6.25))
    assert result["workers"] == 2
    assert result["worker_ms"] == {"worker start": 2900, "weights": 15, "TorchScript": 850, "warm-up": 800,
                                   "the rest": 8}  # the slowest worker's figure for each part


def test_an_archive_whose_handler_logs_no_durations_leaves_the_workers_out():
    result = split(BEGAN, BEGAN + 0.1, TS_LOG, MODEL_LOG[:1], GATEWAY_LOG, BEGAN + 6, BEGAN + 6.1)
    assert result["workers"] == 0 and result["worker_ms"] == {}
    assert result["events"]["first worker process"] is None and result["events"]["last worker loaded"] is None
    assert result["events"]["frontend started"] == pytest.approx(3.181)


def test_time_stamps_of_log4j_python_and_docker_agree():
    assert log_time("2026-12-02T17:27:36,137 [INFO ] main x") == pytest.approx(docker_time("2026-12-02T17:27:36.137Z"))
    assert log_time("2026-12-02 17:27:36,137 gateway INFO x") == log_time("2026-12-02T17:27:36.137 y")
    assert log_time("######") is None
