"""The handler's metrics: rows (name, value, labels) sent through TorchServe's metrics API, and the counts of many
batches sent together, off the requests' path.

Each metric TorchServe's worker sends is a log line that the frontend parses. Sent from handle(), the ~8 lines of
a batch cost a lone request ~0.45 ms of its ~4.6 ms and the server 6% of its throughput at concurrency 64
(docs/performance.md, "Metric lines"). PendingMetrics sums them instead, and a thread of the worker sends the sums
every handler.metrics_seconds (1 s in the shipped model-config): per name and labels, one line for all the batches
in between.
"""
from __future__ import annotations

import threading
import time

from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes

HANDLER_TIME = "HandlerTime"  # TorchServe's standard gauge: ms the handler spent on the last batch
RESIDENT_MEMORY = "digits_worker_resident_memory_bytes"  # a gauge: the worker's RSS
GAUGES = frozenset({HANDLER_TIME, RESIDENT_MEMORY})  # a later value replaces an earlier one; the rest are counters


def emit_metrics(metrics, rows: list[tuple], model_name: str, idx: int | None = None) -> None:
    """Send metric rows through TorchServe's metrics API (declared in metrics.yaml, or dropped by the frontend).

    Each row becomes a log line that the frontend parses. `idx` ties the line to one request of the batch: without
    it TorchServe writes every request id of the batch into every line.
    """
    if metrics is None:  # a Context without TorchServe's metrics cache
        return
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
