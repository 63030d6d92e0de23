"""serving/management.py without a server: describe for a person, worker counts, quoted paths."""
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
