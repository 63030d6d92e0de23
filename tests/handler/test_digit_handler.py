"""The handler's pure functions and the handler itself under TorchServe's own Context, no server."""
import base64
import json
import os
import shutil
import time

import numpy as np
import pytest
import torch
import yaml

import train
from benchmarks.coldstart import STARTED
from handler import digit_handler
from handler.digit_handler import DigitHandler
from model import preprocessing
from model.preprocessing import InputError, Reason
from tests.support import ROOT, bad_inputs
from tests.support.handler_context import GRPC_REQUEST, REST_REQUEST, make_context, run_batch
from tests.support.images import npy_bytes, png_bytes, sklearn_scans_u8


def test_training_and_serving_produce_the_same_tensor():
    """A training scan, through train.py's path and through the handler's (as PNG bytes), is one tensor."""
    images, labels = sklearn_scans_u8()
    frames, _ = train.to_frames(images[:20].astype(np.float32) / 255.0, labels[:20], train.DIGITS_RESOLUTION)
    training = preprocessing.normalize(torch.from_numpy(frames))
    decoded = [digit_handler.parse_request({"body": bytearray(png_bytes(image))}, 3, 10) for image in images[:20]]
    assert all(request.topk == 3 and not request.many for request in decoded)
    inputs, refusals = digit_handler.preprocess(decoded, train.DIGITS_RESOLUTION)  # one batch, as a worker does
    assert refusals == [None] * 20
    assert torch.equal(inputs, training)
    for index in (0, 7):  # and alone: a batch's company changes nothing
        alone, _ = digit_handler.preprocess(decoded[index : index + 1], train.DIGITS_RESOLUTION)
        assert torch.equal(alone[0], training[index])


def test_initialize_reads_weights_labels_and_settings(handler):
    assert handler.initialized and handler.device == torch.device("cpu")
    assert handler.labels == preprocessing.DEFAULT_LABELS
    assert handler.resolution == preprocessing.DIGIT_BOX  # trained on MNIST: served at full resolution
    assert isinstance(handler.model, torch.jit.ScriptModule)  # optimize_for_cpu: frozen, eval-only


NO_CUDA = "no CUDA GPU on this machine: GPU placement is not tested here (scripts/gpu_check.sh on a GPU machine)"


def test_a_worker_without_a_gpu_runs_on_the_cpu():
    assert digit_handler.select_device(None) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present: the fallback cannot be seen")
def test_a_gpu_id_without_cuda_falls_back_to_the_cpu():
    assert digit_handler.select_device(0) == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_a_worker_given_a_gpu_runs_on_it(model_dir):
    assert digit_handler.select_device(0) == torch.device("cuda:0")
    handler = DigitHandler()
    context = make_context(model_dir, 1)
    context.system_properties["gpu_id"] = 0
    handler.initialize(context)
    assert handler.device == torch.device("cuda:0")
    assert next(handler.model.parameters()).device == torch.device("cuda:0")


def test_weights_load_with_weights_only(artifacts):
    checkpoint = torch.load(artifacts / train.WEIGHTS_FILE, weights_only=True)
    assert set(checkpoint) >= {"arch", "state_dict", "labels", "preprocessing"}


def test_batch_of_every_input_kind_predicts_the_true_digits(handler, model_dir, test_split):
    images, labels = test_split
    scans = [png_bytes(image) for image in images[:4]]
    rows = [
        {"body": bytearray(scans[0])},  # raw bytes
        {"body": {"data": base64.b64encode(scans[1]).decode()}},  # JSON parsed by TorchServe
        {"data": bytearray(scans[2])},  # multipart field "data"
        {"body": json.dumps({"data": "data:image/png;base64," + base64.b64encode(scans[3]).decode(), "topk": 5}).encode()},
    ]
    answers, statuses, context = run_batch(handler, model_dir, rows)
    assert statuses == [200] * 4
    assert [answer["label"] for answer in answers] == [str(label) for label in labels[:4]]
    assert [len(answer["topk"]) for answer in answers] == [3, 3, 3, 5]
    for answer in answers:
        probabilities = [entry["probability"] for entry in answer["topk"]]
        assert probabilities == sorted(probabilities, reverse=True)
        assert answer["probability"] == probabilities[0] and 0 < answer["probability"] <= 1
    assert context.get_response_headers(0)["X-Batch-Size"] == "4"
    batch_ids = {context.get_response_headers(idx)["X-Batch-Id"] for idx in range(4)}
    assert len(batch_ids) == 1 and batch_ids.pop().startswith(f"{os.getpid()}-")
    assert context.get_response_content_type(0) == "application/json"


def test_each_answer_echoes_its_requests_x_request_id(handler, model_dir, test_split):
    """A REST client's X-Request-Id (any spelling) comes back in X-Client-Request-Id, on each answer its own, refused
    ones too; a request without one, or over gRPC (no headers), gets none."""
    images, _ = test_split
    png = bytearray(png_bytes(images[0]))
    properties = [{**REST_REQUEST, "X-Request-Id": "first"}, {**REST_REQUEST, "x-request-id": "second"},
                  {**REST_REQUEST, "X-REQUEST-ID": "refused"}, REST_REQUEST, GRPC_REQUEST]
    rows = [{"body": png}, {"body": png}, {"body": bytearray(b"not an image")}, {"body": png}, {"data": png}]
    context = make_context(model_dir, len(rows), requests=properties)
    handler.handle(rows, context)
    assert [context.get_response_status(idx)[0] for idx in range(len(rows))] == [200, 200, 400, 200, 200]
    echoed = [context.get_response_headers(idx).get(digit_handler.REQUEST_ID_ECHO_HEADER) for idx in range(len(rows))]
    assert echoed == ["first", "second", "refused", None, None]


def test_pixel_array_request(handler, model_dir, test_split):
    images, labels = test_split
    frame = preprocessing.to_mnist_geometry(images[0] / 255.0)
    pixels = np.rint(frame * 255).astype(int).tolist()
    answers, statuses, _ = run_batch(handler, model_dir, [{"body": {"pixels": pixels}}])
    assert statuses == [200] and answers[0]["label"] == str(labels[0])


def test_many_images_in_one_request_get_one_answer_each_in_order(handler, model_dir, test_split):
    """A .npy of frames and a JSON list of base64 PNGs, batched with a single-image request."""
    images, labels = test_split
    frames = np.stack([np.rint(preprocessing.to_mnist_geometry(image / 255.0) * 255) for image in images[:30]])
    rows = [
        {"body": bytearray(npy_bytes(frames.astype(np.uint8)))},
        {"body": {"images": [base64.b64encode(png_bytes(image)).decode() for image in images[30:40]], "topk": 2}},
        {"body": bytearray(png_bytes(images[40]))},
    ]
    answers, statuses, context = run_batch(handler, model_dir, rows)
    assert statuses == [200, 200, 200]
    npy_labels = [answer["label"] for answer in answers[0]["predictions"]]
    assert len(npy_labels) == 30 and sum(a == str(b) for a, b in zip(npy_labels, labels[:30])) >= 28
    listed = answers[1]["predictions"]
    assert [answer["label"] for answer in listed] == [str(label) for label in labels[30:40]]
    assert all(len(answer["topk"]) == 2 for answer in listed)
    assert answers[2]["label"] == str(labels[40]) and "predictions" not in answers[2]
    # the same images one by one give the same answers
    single, _, _ = run_batch(handler, model_dir, [{"body": bytearray(png_bytes(image))} for image in images[30:40]])
    assert [answer["label"] for answer in single] == [answer["label"] for answer in listed]


def test_too_many_images_is_413_and_a_bad_image_names_its_index(handler, model_dir, test_split):
    image = test_split[0][0]
    frames = np.zeros((handler.max_images + 1, 28, 28), np.uint8)
    listed = [base64.b64encode(png_bytes(image)).decode()] * 3 + ["###"]
    answers, statuses, _ = run_batch(handler, model_dir, [
        {"body": bytearray(npy_bytes(frames))},
        {"body": {"images": listed}},
        {"body": bytearray(png_bytes(image))},
    ])
    assert statuses == [413, 400, 200]
    assert answers[0] == {"code": 413, "type": "InputTooLarge",
                          "message": f"{handler.max_images + 1} images in one request; the limit is {handler.max_images}"}
    assert answers[1]["message"] == 'image 3: "data" is not valid base64'


BAD_ROWS = {
    "empty body": ({"body": bytearray()}, "empty"),
    "no fields (curl -d)": ({}, "empty request"),
    "not an image": ({"body": bytearray(b"\x00\x01garbage" * 10)}, "not an image"),
    "text body": ({"body": "hello"}, "neither an image nor JSON"),
    "invalid json": ({"body": bytearray(b'{"data": ')}, "invalid JSON"),
    "json list": ({"body": [1, 2, 3]}, "must be an object"),
    "json without data": ({"body": {"image": "x"}}, 'needs "data"'),
    "bad base64": ({"body": {"data": "###not base64###"}}, "not valid base64"),
    "base64 of text": ({"body": {"data": base64.b64encode(b"just text").decode()}}, "not an image"),
    "data not a string": ({"body": {"data": 7}}, "base64 string"),
    "wrong shape": ({"body": {"pixels": [[0] * 28] * 3}}, "28x28"),
    "out of range": ({"body": {"pixels": [[999] * 28] * 28}}, "0..255"),
    "bad topk": ({"body": {"pixels": [[0] * 28] * 28, "topk": 11}}, "topk"),
    "too small": ({"body": bytearray(png_bytes(np.full((2, 2), 255, np.uint8)))}, "too small"),
    "images not a list": ({"body": {"images": "abc"}}, "must be a list"),
    "images empty": ({"body": {"images": []}}, "no images"),
    "npy wrong shape": ({"body": bytearray(npy_bytes(np.zeros((2, 28, 27), np.uint8)))}, "N x 28 x 28"),
    "npy blank frame": ({"body": bytearray(npy_bytes(np.zeros((2, 28, 28), np.uint8)))}, "image 0: blank image"),
}


@pytest.mark.parametrize("name", list(BAD_ROWS))
def test_bad_request_gets_400_alone_and_the_rest_of_the_batch_is_answered(handler, model_dir, test_split, name):
    row, message = BAD_ROWS[name]
    images, labels = test_split
    good = {"body": bytearray(png_bytes(images[5]))}
    answers, statuses, _ = run_batch(handler, model_dir, [good, row, good])
    assert statuses == [200, 400, 200]
    assert answers[1]["code"] == 400 and answers[1]["type"] == "InputError"
    assert message in answers[1]["message"]
    assert answers[0]["label"] == answers[2]["label"] == str(labels[5])


def test_unexpected_error_costs_only_that_request(handler, model_dir, test_split, monkeypatch):
    images, labels = test_split
    real_read = digit_handler.read_body

    def flaky(row):
        if row.get("boom"):
            raise RuntimeError("a bug")
        return real_read(row)

    monkeypatch.setattr(digit_handler, "read_body", flaky)
    answers, statuses, _ = run_batch(handler, model_dir, [{"boom": b"1", "x": b"2"}, {"body": bytearray(png_bytes(images[1]))}])
    assert statuses == [500, 200]
    assert answers[0]["type"] == "InternalError" and answers[1]["label"] == str(labels[1])


@pytest.mark.usefixtures("broken_geometry")
def test_a_bug_in_the_batched_geometry_costs_only_its_request(handler, model_dir, test_split):
    """An unexpected error in the batch's geometry: the batch is preprocessed again one request at a time, and only
    the request whose image triggers it gets a 500."""
    images, labels = test_split
    odd = np.pad(images[2], ((0, 1), (0, 1)))
    answers, statuses, _ = run_batch(handler, model_dir, [{"body": bytearray(png_bytes(image))} for image in
                                                          (images[0], odd, images[1])])
    assert statuses == [200, 500, 200]
    assert answers[1]["type"] == "InternalError"
    assert [answers[0]["label"], answers[2]["label"]] == [str(labels[0]), str(labels[1])]


def test_preprocess_refuses_requests_by_their_first_blank_image(test_split):
    image = test_split[0][0]
    blank = np.zeros((28, 28), np.uint8)
    requests = [
        digit_handler.DecodedRequest([image], 3),
        digit_handler.DecodedRequest([image, blank, image, blank], 3, many=True),
        digit_handler.DecodedRequest([blank], 3),
        digit_handler.DecodedRequest([np.pad(image, 10), image], 3, many=True),
    ]
    inputs, refusals = digit_handler.preprocess(requests, 20)
    assert inputs.shape == (8, 1, 28, 28)
    assert [str(refusal) if refusal else None for refusal in refusals] == [
        None, "image 1: blank image: no digit found", "blank image: no digit found", None]
    # images of other sizes in the same batch: each as it would be alone
    torch.testing.assert_close(inputs[6], digit_handler.preprocess(requests[3:], 20)[0][0])
    torch.testing.assert_close(inputs[0], inputs[7])


def test_grpc_answers_are_marked_final_and_rest_answers_are_not(handler, model_dir, test_split):
    """gRPC's StreamPredictions needs ts_stream_next on every answer (or the worker is restarted); REST must not see it."""
    image = test_split[0][0]
    rows = [{"body": bytearray(png_bytes(image))}, {"data": bytearray(png_bytes(image))}, {"data": bytearray(b"junk")}]
    context = make_context(model_dir, 3, requests=[REST_REQUEST, GRPC_REQUEST, GRPC_REQUEST])
    results = [json.loads(result) for result in handler.handle(rows, context)]
    assert results[0] == results[1] and results[2]["code"] == 400
    headers = [context.get_response_headers(idx) for idx in range(3)]
    assert digit_handler.STREAM_NEXT_HEADER not in headers[0]
    assert headers[1][digit_handler.STREAM_NEXT_HEADER] == "false" == headers[2][digit_handler.STREAM_NEXT_HEADER]


def test_came_over_grpc():
    assert digit_handler.came_over_grpc(GRPC_REQUEST) and digit_handler.came_over_grpc({})
    assert not digit_handler.came_over_grpc(REST_REQUEST)
    assert not digit_handler.came_over_grpc({"Authorization": "Bearer token"})


def test_parse_topk_rejects_bools_and_out_of_range():
    assert digit_handler.parse_topk(10, 10) == 10
    for bad in (0, 11, True, 2.0, "3"):
        with pytest.raises(InputError):
            digit_handler.parse_topk(bad, 10)


def test_format_prediction_ranks_labels():
    probabilities = torch.tensor([0.1, 0.6, 0.3])
    answer = digit_handler.format_prediction(probabilities, ["a", "b", "c"], 2)
    assert answer["label"] == "b" and answer["index"] == 1
    assert [entry["label"] for entry in answer["topk"]] == ["b", "c"]


def test_per_batch_log_line_is_dropped_and_others_kept(handler):
    import logging

    def record(message):
        return logging.LogRecord("root", logging.INFO, __file__, 1, message, (), None)

    root = logging.getLogger()
    assert root.filter(record("Backend received inference at: %d")) is False
    assert root.filter(record("Torch worker started.")) is True


def test_the_handler_module_defines_one_class():
    """TorchServe loads a handler module only if it defines exactly one class (model_service_worker)."""
    import inspect

    classes = [obj for _, obj in inspect.getmembers(digit_handler, inspect.isclass)
               if obj.__module__ == digit_handler.__name__]
    assert classes == [DigitHandler]


def test_cpu_optimized_model_matches_eager(artifacts):
    model, _ = digit_handler.load_model(str(artifacts / train.WEIGHTS_FILE), torch.device("cpu"))
    optimized = digit_handler.optimize_for_cpu(model)
    for batch in (1, 5, 64):
        inputs = torch.randn(batch, 1, 28, 28)
        expected = digit_handler.predict(model, inputs)
        assert torch.allclose(digit_handler.predict(optimized, inputs), expected, atol=1e-5)


def test_optimize_can_be_turned_off(model_dir):
    handler = DigitHandler()
    handler.initialize(make_context(model_dir, 1, {"handler": {"optimize": False, "metrics_seconds": 0}}))
    assert isinstance(handler.model, torch.nn.Module) and not isinstance(handler.model, torch.jit.ScriptModule)


def test_tampered_weights_refuse_to_load_before_deserialising(model_dir, tmp_path):
    tampered = tmp_path / "model_dir"
    shutil.copytree(model_dir, tampered)
    weights = tampered / train.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte
    weights.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="refusing to load digit_cnn.pt: SHA-256 .* does not match"):
        DigitHandler().initialize(make_context(tampered, 1))
    (tampered / digit_handler.DIGEST_FILE).unlink()
    with pytest.raises(RuntimeError, match="no weights.sha256 in the archive"):
        DigitHandler().initialize(make_context(tampered, 1))


def test_verify_weights_checks_the_recorded_file_name(model_dir, tmp_path):
    digest_path = tmp_path / "weights.sha256"
    digest = digit_handler.file_sha256(str(model_dir / train.WEIGHTS_FILE))
    digest_path.write_text(f"{digest}  other.pt\n")
    with pytest.raises(RuntimeError, match="recorded for other.pt"):
        digit_handler.verify_weights(str(model_dir / train.WEIGHTS_FILE), str(digest_path))
    digest_path.write_text(f"{digest}  {train.WEIGHTS_FILE}\n")
    assert digit_handler.verify_weights(str(model_dir / train.WEIGHTS_FILE), str(digest_path)) == digest


# ---------------------------------------------------------------- metrics


def emitted(caplog) -> list[tuple[str, float, dict]]:
    """The metric lines TorchServe's metrics API wrote ([METRICS]name.Unit:value|#Dim:value,...|...)."""
    rows = []
    for record in caplog.records:
        message = record.getMessage()
        if message.startswith("[METRICS]"):
            head, dimensions = message[len("[METRICS]"):].split("|")[:2]
            name, value = head.rsplit(":", 1)
            labels = dict(pair.split(":", 1) for pair in dimensions.removeprefix("#").split(","))
            rows.append((name.rsplit(".", 1)[0], float(value), labels))
    return rows


def declared_model_metrics() -> dict[str, list[str]]:
    config = yaml.safe_load((ROOT / "metrics.yaml").read_text())
    return {metric["name"]: metric["dimensions"] for kind in config["model_metrics"].values() for metric in kind}


def test_a_batch_reports_its_requests_refusals_images_and_answers(handler, model_dir, test_split, caplog):
    images, labels = test_split
    frame = np.rint(preprocessing.to_mnist_geometry(images[2] / 255.0) * 255).astype(int).tolist()
    rows = [
        {"body": bytearray(png_bytes(images[0]))},
        {"body": {"data": base64.b64encode(png_bytes(images[1])).decode()}},
        {"body": {"pixels": frame}},
        {"body": bytearray(npy_bytes(images[3:6]))},
        {"body": bytearray(b"not an image at all")},
        {"body": bytearray(b"")},
    ]
    handler = DigitHandler()  # its counts sent only when flushed (the thread waits an hour)
    handler.initialize(make_context(model_dir, 1, {"handler": {"topk": 3, "metrics_seconds": 3600}}))
    caplog.set_level("INFO")
    answers, statuses, _ = run_batch(handler, model_dir, rows)
    assert statuses == [200, 200, 200, 200, 400, 400]
    assert emitted(caplog) == []  # not from the batch: a thread sends them
    handler.pending_metrics.flush()
    metrics = emitted(caplog)
    declared = declared_model_metrics()
    for name, _, dimensions in metrics:  # undeclared metrics are dropped by TorchServe's frontend, silently
        assert name in declared and list(dimensions) == declared[name], (name, dimensions)
    totals = {}
    for name, value, dimensions in metrics:
        key = (name, *(value for key, value in dimensions.items() if key not in ("ModelName", "Level")))
        totals[key] = totals.get(key, 0) + value
        assert dimensions["ModelName"] == "digits" and dimensions["Level"] == "Model"
    assert totals[("digits_requests_total", "image")] == 2
    assert totals[("digits_requests_total", "pixels")] == 1
    assert totals[("digits_requests_total", "multi_image")] == 1
    assert totals[("digits_refusals_total", "InputError", "not_an_image")] == 1
    assert totals[("digits_refusals_total", "InputError", "empty_body")] == 1
    assert totals[("digits_images_total",)] == 6 and totals[("digits_batches_total",)] == 1
    assert totals[("digits_preprocessing_milliseconds_total",)] > 0
    assert totals[("HandlerTime",)] >= totals[("digits_preprocessing_milliseconds_total",)]  # TorchServe's gauge
    assert totals[("digits_handler_milliseconds_total",)] == totals[("HandlerTime",)]  # one batch: the same time
    answered = [answers[0]["label"], answers[1]["label"], answers[2]["label"],
                *[answer["label"] for answer in answers[3]["predictions"]]]
    predicted = {key[1]: value for key, value in totals.items() if key[0] == "digits_predictions_total"}
    assert predicted == {label: answered.count(label) for label in set(answered)}
    # One metric line per label value and batch, never one per request.
    assert len(metrics) == len(set((name, tuple(dimensions.items())) for name, _, dimensions in metrics))


def test_the_counts_of_many_batches_are_sent_together_one_line_per_name_and_labels(model_dir, test_split, caplog):
    """Counters summed over the batches and TorchServe's HandlerTime gauge the last batch's, sent when flushed; the
    worker's thread flushes every metrics_seconds; at 0 each batch sends its own at once."""
    images, _ = test_split
    batches = [[{"body": bytearray(png_bytes(image))} for image in images[start:start + 3]] for start in (0, 3, 6)]

    def handler_sending_every(seconds: float) -> DigitHandler:
        handler = DigitHandler()
        handler.initialize(make_context(model_dir, 1, {"handler": {"topk": 3, "metrics_seconds": seconds}}))
        return handler

    def totals() -> dict[str, float]:
        sums: dict[str, float] = {}
        for name, value, _ in emitted(caplog):
            sums[name] = sums.get(name, 0.0) + value
        return sums

    caplog.set_level("INFO")
    held = handler_sending_every(3600)  # its thread would wait an hour: only flush() sends
    caplog.clear()
    for rows in batches:
        run_batch(held, model_dir, rows)
    assert emitted(caplog) == []
    held.pending_metrics.flush()
    keys = [(name, tuple(sorted(dimensions.items()))) for name, _, dimensions in emitted(caplog)]
    assert len(keys) == len(set(keys)), keys  # one line per name and labels for all three batches
    sent = totals()
    assert sent["digits_batches_total"] == 3 and sent["digits_images_total"] == 9
    assert sent["digits_predictions_total"] == 9 and sent["digits_requests_total"] == 9
    assert 0 < sent["HandlerTime"] < sent["digits_handler_milliseconds_total"]  # the last batch, and all three

    threaded = handler_sending_every(0.2)
    caplog.clear()
    run_batch(threaded, model_dir, batches[0])
    deadline = time.monotonic() + 10
    while totals().get("digits_batches_total") != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert totals().get("digits_batches_total") == 1  # sent by the thread, nobody flushed

    at_once = handler_sending_every(0)
    caplog.clear()
    run_batch(at_once, model_dir, batches[0])
    assert totals()["digits_batches_total"] == 1


def test_initialize_logs_where_its_code_came_from(model_dir, caplog):
    """The start line names the files the worker's code was imported from (here: this checkout's, as pytest imports
    them; in a TorchServe worker the archive's: tests/integration/test_server.py). Its head stays what
    scripts/gpu_check.sh greps."""
    caplog.set_level("INFO")
    DigitHandler().initialize(make_context(model_dir, 1))
    line = next(record.getMessage() for record in caplog.records if "digit model loaded" in record.getMessage())
    assert line.startswith(f"digit model loaded on cpu by pid {os.getpid()} (preprocessing on cpu, ")
    files = line.rpartition(") from ")[2].split(", ")
    assert files == [str(ROOT / name) for name in ("model/digit_cnn.py", "model/checkpoint.py",
                                                   "model/preprocessing.py", "handler/wire.py")]


def test_initialize_logs_how_long_each_part_of_its_start_took(model_dir, caplog):
    """The durations `python -m benchmarks.coldstart` splits a container's start by, read with its own pattern:
    here the process started long before (pytest), the rest took what this machine took."""
    caplog.set_level("INFO")
    began = time.perf_counter()
    DigitHandler().initialize(make_context(model_dir, 1))
    took_ms = (time.perf_counter() - began) * 1000
    line = next(record.getMessage() for record in caplog.records if "digit model loaded" in record.getMessage())
    worker_start, weights, torchscript, warm_up, rest = (int(value) for value in STARTED.search(line).groups())
    assert worker_start > took_ms  # this process (pytest) started before the test did
    assert 0 < weights + torchscript + warm_up + rest <= took_ms + 4  # each rounded to the ms
    assert torchscript > 0  # the shipped model-config optimizes for the CPU


def test_a_worker_reports_its_start_memory_and_cpu(model_dir, caplog):
    caplog.set_level("INFO")
    DigitHandler().initialize(make_context(model_dir, 1))
    metrics = {name: (value, dimensions) for name, value, dimensions in emitted(caplog)}
    assert metrics["digits_worker_starts_total"][0] == 1
    memory, dimensions = metrics["digits_worker_resident_memory_bytes"]
    assert memory > 50e6 and int(dimensions["Worker"]) > 0
    assert metrics["digits_worker_cpu_seconds_total"][0] > 0


@pytest.mark.parametrize("name", sorted(bad_inputs.REFUSED))
def test_every_refusal_of_the_bad_input_matrix_has_its_own_reason(name, test_split):
    body = bad_inputs.refused_bodies(test_split[0][0])[name]
    with pytest.raises(InputError) as refused:
        digit_handler.parse_request({"body": bytearray(body)}, 3, 10)
    expected = {
        "empty body": "empty_body", "random bytes": "not_an_image", "text": "not_an_image",
        "truncated png": "unreadable_image", "decompression bomb 50000x50000": "image_too_large",
        "5000x5000 png header": "image_too_large", "1x1 image": "image_too_small", "json not an object": "bad_json",
        "bad base64": "bad_base64", "pixels of the wrong shape": "bad_pixels", "pixels with NaN": "bad_pixels",
        "pixels out of range": "bad_pixels",
    }
    assert digit_handler.refusal_reason(refused.value) == expected[name]


def test_refusal_reasons_of_multi_image_requests_and_limits():
    blank = InputError("blank image: no digit found", Reason.BLANK_IMAGE)
    assert digit_handler.refusal_reason(blank.in_image(0).in_image(3)) == "blank_image"
    too_many = preprocessing.InputTooLarge("300 images in one request", Reason.TOO_MANY_IMAGES)
    assert digit_handler.refusal_reason(too_many) == "too_many_images"
    assert digit_handler.refusal_reason(RuntimeError("bug")) == "internal"
