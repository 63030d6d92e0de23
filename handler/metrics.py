"""Every metric the handler emits: a batch's counts, the worker's resources, as rows (name, value, labels) sent
through TorchServe's metrics API, and the counts of many batches sent together, off the requests' path.

Each metric TorchServe's worker sends is a log line that the frontend parses. Sent from handle(), the ~8 lines of
a batch cost a lone request ~0.45 ms of its ~4.6 ms and the server 6% of its throughput at concurrency 64
(docs/performance.md, "Metric lines"). PendingMetrics sums them instead, and a thread of the worker sends the sums
every handler.metrics_seconds (1 s in the shipped model-config): per name and labels, one line for all the batches
in between.
"""
from __future__ import annotations

import os
import threading
import time
from collections import Counter

import psutil

HANDLER_TIME = "HandlerTime"  # TorchServe's standard gauge: ms the handler spent on the last batch
RESIDENT_MEMORY = "digits_worker_resident_memory_bytes"  # a gauge: the worker's RSS
GAUGES = frozenset({HANDLER_TIME, RESIDENT_MEMORY})  # a later value replaces an earlier one; the rest are counters
RESOURCE_METRICS_SECONDS = 10.0  # how often a worker reports its memory and CPU time
METRICS_SECONDS = 1.0  # how often a worker sends the batches' metrics (model-config handler.metrics_seconds)
SETTINGS = ("metrics_seconds",)  # model-config handler: keys of the metrics', beside the predictor's (predictor.Settings)


def batch_rows(kinds: list[str], refused: list[tuple[str, str]], predicted: list[str], preprocessing_ms: float,
               explained_images: int | None) -> list[tuple]:
    """(name, value, labels) for one batch: the answered requests' input kinds, the refused ones' (error type,
    reason), the answered images' labels, the batch's reading and preprocessing time, and the images explained
    (None: no request asked). Counts are summed per label value, so a batch of 16 costs a few metric lines, not a
    few per request (each is a log line the frontend parses)."""
    rows = [("digits_requests_total", count, {"InputKind": kind}) for kind, count in sorted(Counter(kinds).items())]
    rows += [("digits_refusals_total", count, {"ErrorType": error_type, "Reason": reason})
             for (error_type, reason), count in sorted(Counter(refused).items())]
    if kinds:
        rows += [("digits_images_total", len(predicted), {}), ("digits_batches_total", 1, {}),
                 ("digits_preprocessing_milliseconds_total", round(preprocessing_ms, 3), {})]
    rows += [("digits_predictions_total", count, {"Label": label}) for label, count in sorted(Counter(predicted).items())]
    if explained_images is not None:
        rows.append(("digits_explained_images_total", explained_images, {}))
    return rows


def handler_time_rows(started: float) -> list[tuple]:
    """The handler's time on a batch since `started` (perf_counter): TorchServe's HandlerTime gauge, which its
    BaseHandler.handle would report (the handler replaces that), and the same time summed as a counter (gauges lose
    all but the last batch)."""
    handler_ms = round((time.perf_counter() - started) * 1000.0, 3)
    return [(HANDLER_TIME, handler_ms, {}), ("digits_handler_milliseconds_total", handler_ms, {})]


class WorkerResources:
    """This worker's memory and the CPU time it used since the last report, every RESOURCE_METRICS_SECONDS."""

    def __init__(self):
        self.process = psutil.Process()
        self.cpu_seconds = 0.0
        self.reported = 0.0

    @property
    def due(self) -> bool:
        return time.monotonic() - self.reported >= RESOURCE_METRICS_SECONDS

    def rows(self) -> list[tuple]:
        self.reported = time.monotonic()
        times = self.process.cpu_times()
        used, self.cpu_seconds = times.user + times.system - self.cpu_seconds, times.user + times.system
        worker = {"Worker": str(self.process.pid)}
        return [(RESIDENT_MEMORY, self.process.memory_info().rss, worker),
                ("digits_worker_cpu_seconds_total", round(used, 3), worker)]


def process_age_seconds() -> float:
    """How long this process has existed, on the kernel's own clock: its start (/proc/self/stat, clock ticks since
    boot) against CLOCK_BOOTTIME. Not psutil's create_time(): that adds the boot time, which /proc/stat gives in whole
    seconds, so an age from it is off by a constant of up to 1 s (ordering a worker's start before the frontend that
    spawned it). Resolution: one clock tick (10 ms)."""
    with open("/proc/self/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()  # after the command name: fields 3, 4, ...
    start_ticks = int(fields[19])  # field 22, starttime
    return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")


def emit_metrics(metrics, rows: list[tuple], model_name: str, idx: int | None = None) -> None:
    """Send metric rows through TorchServe's metrics API (declared in metrics.yaml, or dropped by the frontend).

    Each row becomes a log line that the frontend parses. `idx` ties the line to one request of the batch: without
    it TorchServe writes every request id of the batch into every line.
    """
    if metrics is None:  # a Context without TorchServe's metrics cache
        return
    from ts.metrics.dimension import Dimension  # TorchServe's alone: the rest of this module serves any server
    from ts.metrics.metric_type_enum import MetricTypes

    for name, value, labels in rows:
        dimensions = [Dimension(key, str(label)) for key, label in labels.items()]
        dimensions += [Dimension("ModelName", model_name), Dimension("Level", "Model")]
        if name == RESIDENT_MEMORY:
            metrics.add_metric(name, value, unit="B", idx=idx, dimensions=dimensions, metric_type=MetricTypes.GAUGE)
        elif name == HANDLER_TIME:
            metrics.add_time(name, value, idx=idx, unit="ms", dimensions=dimensions)
        else:
            metrics.add_counter(name, value, idx=idx, dimensions=dimensions)


class PendingMetrics:
    """Metric rows waiting to be sent: counters summed and gauges' last value, per name and labels.

    `seconds` > 0: add() only records, and a daemon thread sends what has gathered every `seconds` (start()), so a
    count reaches the frontend at most that late; a worker that dies loses at most that much. `seconds` 0: add()
    sends at once, as TorchServe's own handlers do.
    """

    def __init__(self, model_name: str, seconds: float):
        self.model_name, self.seconds = model_name, seconds
        self.lock = threading.Lock()
        self.pending: dict[tuple[str, tuple], float] = {}
        self.sink = None  # TorchServe's metrics cache (the worker's Context has one for its whole life)

    def add(self, metrics, rows: list[tuple]) -> None:
        self.sink = metrics
        if self.seconds <= 0:
            emit_metrics(metrics, rows, self.model_name, idx=0)
            return
        with self.lock:
            for name, value, labels in rows:
                key = (name, tuple(labels.items()))
                self.pending[key] = value if name in GAUGES else self.pending.get(key, 0) + value

    def flush(self) -> None:
        """Send what has gathered: one row per name and labels."""
        with self.lock:
            pending, self.pending = self.pending, {}
        rows = [(name, round(value, 3) if isinstance(value, float) else value, dict(labels))
                for (name, labels), value in pending.items()]
        if rows:
            emit_metrics(self.sink, rows, self.model_name, idx=0)

    def start(self) -> None:
        if self.seconds > 0:
            threading.Thread(target=self._send_periodically, name="digits-metrics", daemon=True).start()

    def _send_periodically(self) -> None:
        while True:
            time.sleep(self.seconds)
            self.flush()
