"""The handler's metrics (handler/metrics.py) without a server: a batch's rows, the handler's time, the worker's
resources and age, and PendingMetrics summing them and sending one row per name and labels."""
import os
import threading
import time

import psutil
import pytest
import yaml
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.metrics.metric_type_enum import MetricTypes

from handler import metrics
from tests.support import ROOT
from tests.support.handler_context import emitted
from tests.support.metric_labels import LABEL_VALUES


class RecordingSink:
    """TorchServe's metrics API as handler/metrics.py calls it: each call recorded as (method, name, value, unit,
    idx, {dimension: value}, metric type)."""

    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()

    def record(self, method, name, value, unit, idx, dimensions, metric_type=None):
        with self.lock:
            self.calls.append((method, name, value, unit, idx, {d.name: d.value for d in dimensions}, metric_type))

    def add_counter(self, name, value, idx=None, dimensions=()):
        self.record("counter", name, value, "count", idx, dimensions)

    def add_time(self, name, value, idx=None, unit="ms", dimensions=()):
        self.record("time", name, value, unit, idx, dimensions)

    def add_metric(self, name, value, unit, idx=None, dimensions=(), metric_type=MetricTypes.COUNTER):
        self.record("metric", name, value, unit, idx, dimensions, metric_type)

    def sent(self) -> dict:
        """(name, labels without ModelName and Level) -> the value sent, for rows sent once each."""
        rows = {}
        for _, name, value, _, _, dimensions, _ in self.calls:
            labels = tuple((key, label) for key, label in dimensions.items() if key not in ("ModelName", "Level"))
            assert (name, labels) not in rows, (name, labels)
            rows[(name, labels)] = value
        return rows


def declared_model_metrics() -> dict[str, list[str]]:
    config = yaml.safe_load((ROOT / "metrics.yaml").read_text())
    return {metric["name"]: metric["dimensions"] for kind in config["model_metrics"].values() for metric in kind}


# ---------------------------------------------------------------- a batch's rows


def test_batch_rows_count_each_label_value_once():
    rows = metrics.batch_rows(
        ["image", "pixels", "image", "oip", "multi_image"],
        [("InputError", "not_an_image"), ("InputTooLarge", "too_many_images"), ("InputError", "not_an_image")],
        ["7", "1", "7", "7", "3", "1"], 1.23456789, None)
    assert rows == [
        ("digits_requests_total", 2, {"InputKind": "image"}),
        ("digits_requests_total", 1, {"InputKind": "multi_image"}),
        ("digits_requests_total", 1, {"InputKind": "oip"}),
        ("digits_requests_total", 1, {"InputKind": "pixels"}),
        ("digits_refusals_total", 2, {"ErrorType": "InputError", "Reason": "not_an_image"}),
        ("digits_refusals_total", 1, {"ErrorType": "InputTooLarge", "Reason": "too_many_images"}),
        ("digits_images_total", 6, {}),
        ("digits_batches_total", 1, {}),
        ("digits_preprocessing_milliseconds_total", 1.235, {}),
        ("digits_predictions_total", 2, {"Label": "1"}),
        ("digits_predictions_total", 1, {"Label": "3"}),
        ("digits_predictions_total", 3, {"Label": "7"}),
    ]


def test_a_batch_of_refusals_alone_counts_no_batch_and_no_images():
    rows = metrics.batch_rows([], [("InternalError", "internal")], [], 5.0, None)
    assert rows == [("digits_refusals_total", 1, {"ErrorType": "InternalError", "Reason": "internal"})]
    assert metrics.batch_rows([], [], [], 0.0, None) == []


def test_explained_images_are_counted_when_a_request_asked():
    rows = metrics.batch_rows(["image", "image"], [], ["1", "2"], 1.0, 1)
    assert rows[-1] == ("digits_explained_images_total", 1, {})
    asked_but_refused = metrics.batch_rows([], [("InputTooLarge", "too_many_images")], [], 0.0, 0)
    assert asked_but_refused[-1] == ("digits_explained_images_total", 0, {})
    assert all(name != "digits_explained_images_total" for name, _, _ in metrics.batch_rows(["image"], [], ["1"],
                                                                                            1.0, None))


def test_every_row_is_declared_with_its_labels_and_every_label_value_is_of_the_closed_set():
    """TorchServe's frontend drops a metric metrics.yaml does not declare (with its dimensions), silently."""
    declared = declared_model_metrics()
    rows = metrics.batch_rows(sorted(LABEL_VALUES["InputKind"]),
                              [("InputError", reason) for reason in sorted(LABEL_VALUES["Reason"])],
                              sorted(LABEL_VALUES["Label"]), 1.0, 3)
    rows += metrics.handler_time_rows(time.perf_counter()) + metrics.WorkerResources().rows()
    rows.append(("digits_worker_starts_total", 1, {}))
    for name, _, labels in rows:
        assert name in declared and list(labels) + ["ModelName", "Level"] == declared[name], (name, labels)
        for key, value in labels.items():
            assert key == "Worker" or value in LABEL_VALUES[key], (name, key, value)
    assert {name for name, _, _ in rows} == set(declared) - {"PredictionTime"}  # TorchServe's own, not the handler's


def test_handler_time_rows_are_the_gauge_and_the_sum():
    started = time.perf_counter() - 0.05
    (gauge, gauge_ms, gauge_labels), (total, total_ms, total_labels) = metrics.handler_time_rows(started)
    assert (gauge, total) == (metrics.HANDLER_TIME, "digits_handler_milliseconds_total") == ("HandlerTime", total)
    assert gauge_ms == total_ms and gauge_labels == total_labels == {}
    assert 50 <= gauge_ms < 50 + 5000 and round(gauge_ms, 3) == gauge_ms


# ---------------------------------------------------------------- emitting through TorchServe's API


def test_emit_metrics_sends_each_row_as_its_kind_with_the_models_dimensions():
    sink = RecordingSink()
    metrics.emit_metrics(sink, [("digits_batches_total", 1, {}), (metrics.HANDLER_TIME, 2.5, {}),
                                (metrics.RESIDENT_MEMORY, 1000, {"Worker": "12"}),
                                ("digits_requests_total", 3, {"InputKind": "oip"})], "digits", idx=0)
    assert sink.calls == [
        ("counter", "digits_batches_total", 1, "count", 0, {"ModelName": "digits", "Level": "Model"}, None),
        ("time", "HandlerTime", 2.5, "ms", 0, {"ModelName": "digits", "Level": "Model"}, None),
        ("metric", metrics.RESIDENT_MEMORY, 1000, "B", 0, {"Worker": "12", "ModelName": "digits", "Level": "Model"},
         MetricTypes.GAUGE),
        ("counter", "digits_requests_total", 3, "count", 0,
         {"InputKind": "oip", "ModelName": "digits", "Level": "Model"}, None),
    ]
    metrics.emit_metrics(None, [("digits_batches_total", 1, {})], "digits")  # a Context without a metrics cache


def test_torchserves_own_metrics_cache_takes_the_rows(caplog):
    cache = MetricsCacheYamlImpl(config_file_path=str(ROOT / "metrics.yaml"))
    cache.initialize_cache()
    cache.set_request_ids({0: "request-0"})
    caplog.set_level("INFO")
    pending = metrics.PendingMetrics("digits", 3600)
    pending.add(cache, metrics.batch_rows(["oip"], [], ["4"], 2.0, None)
                + metrics.handler_time_rows(time.perf_counter()))
    pending.add(cache, metrics.WorkerResources().rows())
    assert emitted(caplog) == []
    pending.flush()
    lines = {(name, labels.get("InputKind", labels.get("Label", labels.get("Worker", "")))): value
             for name, value, labels in emitted(caplog)}
    assert lines[("digits_requests_total", "oip")] == 1 and lines[("digits_predictions_total", "4")] == 1
    assert lines[("digits_batches_total", "")] == 1 and lines[("digits_preprocessing_milliseconds_total", "")] == 2.0
    assert lines[(metrics.RESIDENT_MEMORY, str(os.getpid()))] > 10e6
    assert {labels["ModelName"] for _, _, labels in emitted(caplog)} == {"digits"}


# ---------------------------------------------------------------- PendingMetrics


def test_pending_metrics_sum_counters_keep_the_last_gauge_and_send_one_row_per_name_and_labels():
    sink = RecordingSink()
    pending = metrics.PendingMetrics("digits", 3600)
    pending.add(sink, [("digits_batches_total", 1, {}), ("digits_requests_total", 2, {"InputKind": "image"}),
                       (metrics.HANDLER_TIME, 4.0, {}), (metrics.RESIDENT_MEMORY, 100, {"Worker": "1"}),
                       ("digits_handler_milliseconds_total", 0.1, {})])
    pending.add(sink, [("digits_batches_total", 1, {}), ("digits_requests_total", 1, {"InputKind": "image"}),
                       ("digits_requests_total", 5, {"InputKind": "oip"}), (metrics.HANDLER_TIME, 3.0, {}),
                       (metrics.RESIDENT_MEMORY, 200, {"Worker": "1"}), ("digits_handler_milliseconds_total", 0.2, {})])
    assert sink.calls == []  # recorded, not sent
    pending.flush()
    assert sink.sent() == {
        ("digits_batches_total", ()): 2,
        ("digits_requests_total", (("InputKind", "image"),)): 3,
        ("digits_requests_total", (("InputKind", "oip"),)): 5,
        ("HandlerTime", ()): 3.0,  # the last batch's
        (metrics.RESIDENT_MEMORY, (("Worker", "1"),)): 200,
        ("digits_handler_milliseconds_total", ()): 0.3,  # summed, and rounded to 3 decimals (0.30000000000000004)
    }
    assert {call[4] for call in sink.calls} == {0}  # tied to one request: not every request id of the batch
    sink.calls.clear()
    pending.flush()
    assert sink.calls == []  # nothing gathered since: nothing sent


def test_pending_metrics_at_zero_seconds_send_at_once():
    sink = RecordingSink()
    pending = metrics.PendingMetrics("digits", 0)
    pending.add(sink, [("digits_batches_total", 1, {})])
    assert sink.sent() == {("digits_batches_total", ()): 1}
    pending.flush()
    assert len(sink.calls) == 1
    threads = threading.active_count()
    pending.start()  # no thread at 0 s
    assert threading.active_count() == threads


def test_pending_metrics_are_sent_by_their_thread():
    sink = RecordingSink()
    pending = metrics.PendingMetrics("digits", 0.05)
    pending.start()
    pending.add(sink, [("digits_batches_total", 1, {})])
    deadline = time.monotonic() + 10
    while not sink.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sink.sent() == {("digits_batches_total", ()): 1}  # nobody flushed
    pending.seconds = 3600  # the daemon thread sleeps from its next round on


def test_pending_metrics_lose_no_count_to_concurrent_adds():
    sink = RecordingSink()
    pending = metrics.PendingMetrics("digits", 3600)
    adders = [threading.Thread(target=lambda: [pending.add(sink, [("digits_batches_total", 1, {})])
                                               for _ in range(2000)]) for _ in range(4)]
    for thread in adders:
        thread.start()
    while any(thread.is_alive() for thread in adders):
        pending.flush()
    for thread in adders:
        thread.join()
    pending.flush()
    assert sum(call[2] for call in sink.calls) == 8000


# ---------------------------------------------------------------- the worker


def test_worker_resources_report_memory_and_the_cpu_used_since_the_last_report():
    resources = metrics.WorkerResources()
    assert resources.due  # never reported
    (memory, rss, worker), (cpu, first, same_worker) = resources.rows()
    assert (memory, cpu) == (metrics.RESIDENT_MEMORY, "digits_worker_cpu_seconds_total")
    assert worker == same_worker == {"Worker": str(os.getpid())}
    assert rss > 10e6 and abs(rss - psutil.Process().memory_info().rss) < 200e6
    times = psutil.Process().cpu_times()
    assert 0 < first <= times.user + times.system + 0.01  # all of this process's CPU time so far
    assert not resources.due  # reported just now
    spin = time.process_time() + 0.2
    while time.process_time() < spin:
        pass
    (_, _, _), (_, since, _) = resources.rows()
    times = psutil.Process().cpu_times()
    assert since >= 0.15 and since == pytest.approx(times.user + times.system - first, abs=0.05)  # not the total


def test_worker_resources_are_due_every_interval(monkeypatch):
    resources = metrics.WorkerResources()
    resources.rows()
    monkeypatch.setattr(metrics, "RESOURCE_METRICS_SECONDS", 0.0)
    assert resources.due
    monkeypatch.setattr(metrics, "RESOURCE_METRICS_SECONDS", 3600.0)
    assert not resources.due


def test_process_age_is_this_process_age_on_the_kernels_clock():
    age = metrics.process_age_seconds()
    psutil_age = time.time() - psutil.Process().create_time()
    assert 0 < age < psutil_age + 1  # psutil's is off by up to 1 s (the boot time in whole seconds)
    assert age > psutil_age - 1
    later = metrics.process_age_seconds()
    assert later >= age


@pytest.mark.parametrize("key", metrics.SETTINGS)
def test_the_metrics_settings_are_not_the_predictors(key):
    from handler import predictor

    assert key not in {field for field in predictor.Settings.__dataclass_fields__}
