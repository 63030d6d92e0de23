"""benchmarks/counters.py: where a lone request's time goes, from the deltas of TorchServe's own counters."""
import pytest

from benchmarks.counters import latency_split


def test_the_split_adds_up_to_the_clients_wait():
    before = {"ts_inference_requests_total": 100, "ts_inference_latency_microseconds": 1e5,
              "ts_queue_latency_microseconds": 1e4, "digits_batches_total": 90, "digits_handler_milliseconds_total": 90}
    after = {"ts_inference_requests_total": 300, "ts_inference_latency_microseconds": 1e5 + 200 * 2500,
             "ts_queue_latency_microseconds": 1e4 + 200 * 300, "digits_batches_total": 190,
             "digits_handler_milliseconds_total": 90 + 100 * 1.6}
    split = latency_split(before, after, {"latency_us": {"mean": 3100}})
    assert split["frontend"] == pytest.approx(2.5) and split["queue"] == pytest.approx(0.3)
    assert split["handler"] == pytest.approx(1.6) and split["requests_per_batch"] == pytest.approx(2.0)
    assert split["torchserve_hop"] == pytest.approx(2.5 - 0.3 - 1.6)
    assert split["client_to_frontend"] == pytest.approx(3.1 - 2.5)
    assert split["client"] == pytest.approx(split["client_to_frontend"] + split["frontend"])


def test_no_split_without_requests_counted():
    assert latency_split({}, {}, {"latency_us": {"mean": 1000}}) == {}
