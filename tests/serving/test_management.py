"""serving/management.py without a server: describe for a person, worker counts, quoted paths, the scale retry."""
import pytest

from serving import management as manage


DESCRIBE = {
    "modelName": "digits", "modelVersion": "2.0", "modelUrl": "digits_v2.mar", "minWorkers": 3, "maxWorkers": 3,
    "batchSize": 16, "maxBatchDelay": 5, "responseTimeout": 30, "deviceType": "gpu",
    "jobQueueStatus": {"remainingCapacity": 99, "pendingRequests": 1},
    "workers": [
        {"id": "9000", "status": "READY", "pid": 0, "memoryUsage": 3 * 2**20, "gpu": True, "gpuUsage": "gpuId::0 memory 5MiB"},
        {"id": "9001", "status": "UNLOADING", "pid": 0, "memoryUsage": 0, "gpu": False, "gpuUsage": "N/A"},
    ],
}


def test_describe_is_formatted_with_workers_batching_and_queue():
    text = manage.describe_text(DESCRIBE, "2.0")
    assert text.splitlines()[0] == "digits 2.0 (default)  digits_v2.mar"
    assert "min 3  max 3  device gpu" in text and "batchSize 16  maxBatchDelay 5 ms" in text
    assert "pending 1  free 99" in text and "gpuId::0 memory 5MiB" in text
    assert "(default)" not in manage.describe_text(DESCRIBE, "1.0")
    assert manage.worker_counts([DESCRIBE]) == {"2.0": (1, 2)}


def test_version_paths_are_quoted():
    assert manage.version_path("digits", None) == "/models/digits"
    assert manage.version_path("digits", "2.0") == "/models/digits/2.0"
    assert manage.version_path("a/b", "1 0") == "/models/a%2Fb/1%200"


class HalfwayScaleDown:
    """The management API as scale_workers sees it, after TorchServe 0.12.0's scale-down race (see scale_workers):
    the first scale call removes one worker of three and fails with a 500; later ones finish the change. The real
    race is what tests/integration/test_management.py's scaling under load meets now and then."""

    def __init__(self, failures: int, status: int = 500):
        self.workers, self.failures, self.status, self.calls = 3, failures, status, []

    def scale(self, model, version, min_workers, max_workers, timeout):
        self.calls.append((min_workers, max_workers))
        if self.failures:
            self.failures -= 1
            self.workers -= self.workers > max_workers  # a scale-down stops after its first worker
            raise manage.ManagementError(self.status, "UNKNOWN: ", "UNKNOWN")
        self.workers = max(min_workers, min(self.workers, max_workers))
        return "Processing worker updates..."

    def describe(self, model, version=None):
        return [{"modelVersion": "1.0", "workers": [{"status": "READY"}] * self.workers}]


def test_a_scale_call_failed_by_the_server_is_sent_again_until_describe_shows_it_done():
    api = HalfwayScaleDown(failures=1)
    settled, counts, errors = manage.scale_workers(api, "digits", None, 1, 1, timeout=5)
    assert (settled, counts, errors) == (True, {"1.0": (1, 1)}, ["UNKNOWN: "])
    assert api.calls == [(1, 1), (1, 1)]


def test_scale_gives_up_after_its_tries_and_says_the_workers_did_not_settle():
    api = HalfwayScaleDown(failures=manage.SCALE_TRIES + 1)
    settled, counts, errors = manage.scale_workers(api, "digits", None, 5, 5, timeout=0.5)
    assert not settled and counts == {"1.0": (3, 3)} and len(errors) == len(api.calls) == manage.SCALE_TRIES


def test_a_refusal_is_not_sent_again():
    api = HalfwayScaleDown(failures=1, status=400)
    with pytest.raises(manage.ManagementError) as refused:
        manage.scale_workers(api, "digits", None, 1, 1, timeout=5)
    assert refused.value.status == 400
    assert api.calls == [(1, 1)]
