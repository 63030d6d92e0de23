"""The predictor without any server: setup (digest, weights, TorchScript, labels, settings) and predict over decoded
requests (the batch's geometry, one forward pass, refusals per request, explanations)."""
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import data
import train
from handler import predictor, refusals, wire
from handler.predictor import Limits, Prediction, Predictor, Request, Settings
from model import checkpoint, preprocessing
from tests.support import ROOT
from tests.support.images import png_bytes, sklearn_scans_u8

STROKE = np.zeros((28, 28), np.uint8)
STROKE[6:22, 12:16] = 255  # a "1"
BLANK = np.zeros((28, 28), np.uint8)
LIMITS = Limits(num_classes=10, topk=3, max_images=256)
NO_CUDA = "no CUDA GPU on this machine: GPU placement is not tested here (scripts/gpu_check.sh on a GPU machine)"


@pytest.fixture(scope="module")
def ready(model_dir) -> Predictor:
    """A predictor set up as a worker's is, from the unpacked archive's files."""
    ready = Predictor()
    ready.setup(str(model_dir), torch.device("cpu"), Settings(topk=3))
    return ready


def test_the_predictor_imports_nothing_of_any_server():
    """The predictor and what it imports run without TorchServe: a second server's adapter needs none of it."""
    modules = ("handler.predictor", "handler.wire", "handler.answers", "handler.refusals", "handler.open_inference",
               "handler.explanations", "handler.metrics")
    script = (f"import sys; import {', '.join(modules)}; "
              "print(sorted({name.split('.')[0] for name in sys.modules} & {'ts', 'kserve', 'fastapi', 'uvicorn'}))")
    loaded = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout


# ---------------------------------------------------------------- setup


def test_setup_reads_weights_labels_and_settings(ready):
    assert ready.device == torch.device("cpu") and ready.labels == preprocessing.DEFAULT_LABELS
    assert ready.resolution == preprocessing.DIGIT_BOX  # trained on MNIST: served at full resolution
    assert isinstance(ready.model, torch.jit.ScriptModule) and ready.optimized  # frozen, eval-only
    assert ready.limits == Limits(num_classes=10, topk=3, max_images=refusals.MAX_IMAGES_PER_REQUEST)
    assert ready.preprocessing_device == torch.device("cpu")
    assert len(ready.digest) == 64 and ready.start_times.weights > 0 and ready.start_times.torchscript > 0


def test_settings_come_from_a_config_section_and_refuse_unknown_keys():
    assert Settings.from_mapping(None) == Settings()
    assert Settings.from_mapping({"topk": 5, "optimize": False, "max_images": "7", "metrics_seconds": 0},
                                 ("metrics_seconds",)) == Settings(topk=5, optimize=False, max_images=7)
    with pytest.raises(ValueError, match=r"unknown handler settings \['top_k'\]"):
        Settings.from_mapping({"top_k": 5})
    with pytest.raises(ValueError, match="metrics_seconds"):
        Settings.from_mapping({"metrics_seconds": 1})  # an adapter's key only where the adapter says so


def test_the_default_topk_is_at_most_the_number_of_classes(model_dir):
    capped = Predictor()
    capped.setup(str(model_dir), torch.device("cpu"), Settings(topk=50, optimize=False))
    assert capped.limits.topk == 10


def test_optimize_can_be_turned_off(model_dir):
    eager = Predictor()
    eager.setup(str(model_dir), torch.device("cpu"), Settings(optimize=False))
    assert not eager.optimized and not isinstance(eager.model, torch.jit.ScriptModule)
    assert eager.model is eager.eager_model


def test_a_device_without_a_gpu_is_the_cpu():
    assert predictor.select_device(None) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present: the fallback cannot be seen")
def test_a_gpu_id_without_cuda_falls_back_to_the_cpu():
    assert predictor.select_device(0) == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_a_predictor_given_a_gpu_runs_on_it(model_dir):
    assert predictor.select_device(0) == torch.device("cuda:0")
    on_gpu = Predictor()
    on_gpu.setup(str(model_dir), predictor.select_device(0))
    assert next(on_gpu.model.parameters()).device == torch.device("cuda:0")
    assert on_gpu.preprocessing_device == torch.device("cuda:0")


def test_weights_load_with_weights_only(artifacts):
    saved = torch.load(artifacts / train.WEIGHTS_FILE, weights_only=True)
    assert set(saved) >= {"arch", "state_dict", "labels", "preprocessing"}


def test_tampered_weights_refuse_to_load_before_deserialising(model_dir, tmp_path):
    tampered = tmp_path / "model_dir"
    shutil.copytree(model_dir, tampered)
    weights = tampered / train.WEIGHTS_FILE
    contents = bytearray(weights.read_bytes())
    contents[-100] ^= 0xFF  # one flipped byte
    weights.write_bytes(bytes(contents))
    with pytest.raises(RuntimeError, match="refusing to load digit_cnn.pt: SHA-256 .* does not match"):
        Predictor().setup(str(tampered), torch.device("cpu"))
    (tampered / predictor.DIGEST_FILE).unlink()
    with pytest.raises(RuntimeError, match="no weights.sha256 in the archive"):
        Predictor().setup(str(tampered), torch.device("cpu"))


def test_verify_weights_checks_the_recorded_file_name(model_dir, tmp_path):
    digest_path = tmp_path / "weights.sha256"
    digest = predictor.file_sha256(str(model_dir / train.WEIGHTS_FILE))
    digest_path.write_text(f"{digest}  other.pt\n")
    with pytest.raises(RuntimeError, match="recorded for other.pt"):
        predictor.verify_weights(str(model_dir / train.WEIGHTS_FILE), str(digest_path))
    digest_path.write_text(f"{digest}  {train.WEIGHTS_FILE}\n")
    assert predictor.verify_weights(str(model_dir / train.WEIGHTS_FILE), str(digest_path)) == digest


def test_labels_must_name_every_class(model_dir, tmp_path):
    (tmp_path / "index_to_name.json").write_text('{"0": "zero", "1": "one"}')
    assert predictor.load_labels(str(model_dir), 10) == preprocessing.DEFAULT_LABELS
    with pytest.raises(ValueError, match="names 2 classes, the network has 10"):
        predictor.load_labels(str(tmp_path), 10)


def test_cpu_optimized_model_matches_eager(artifacts):
    model = checkpoint.load_checkpoint(artifacts / train.WEIGHTS_FILE)[0]
    optimized = predictor.optimize_for_cpu(model)
    for batch in (1, 5, 64):
        inputs = torch.randn(batch, 1, 28, 28)
        expected = predictor.forward(model, inputs)
        assert torch.allclose(predictor.forward(optimized, inputs), expected, atol=1e-5)


# ---------------------------------------------------------------- preprocessing a batch


def test_training_and_serving_produce_the_same_tensor():
    """A training scan, through train.py's path and through the predictor's (read as PNG bytes), is one tensor."""
    images, labels = sklearn_scans_u8()
    frames, _ = data.to_frames(images[:20].astype(np.float32) / 255.0, labels[:20], data.DIGITS_RESOLUTION)
    training = preprocessing.normalize(torch.from_numpy(frames))
    decoded = [wire.read({"body": bytearray(png_bytes(image))}, LIMITS).request for image in images[:20]]
    assert all(request.topk == 3 and not request.many for request in decoded)
    inputs, refused = predictor.preprocess(decoded, data.DIGITS_RESOLUTION)  # one batch, as a worker does
    assert refused == [None] * 20
    assert torch.equal(inputs, training)
    for index in (0, 7):  # and alone: a batch's company changes nothing
        alone, _ = predictor.preprocess(decoded[index : index + 1], data.DIGITS_RESOLUTION)
        assert torch.equal(alone[0], training[index])


def test_preprocess_refuses_requests_by_their_first_blank_image(test_split):
    image = test_split[0][0]
    requests = [Request([image], 3), Request([image, BLANK, image, BLANK], 3, many=True), Request([BLANK], 3),
                Request([np.pad(image, 10), image], 3, many=True)]
    inputs, refused = predictor.preprocess(requests, 20)
    assert inputs.shape == (8, 1, 28, 28)
    assert [str(refusal) if refusal else None for refusal in refused] == [
        None, "image 1: blank image: no digit found", "blank image: no digit found", None]
    assert all(refusal.reason is refusals.Reason.BLANK_IMAGE for refusal in refused if refusal)
    # images of other sizes in the same batch: each as it would be alone
    torch.testing.assert_close(inputs[6], predictor.preprocess(requests[3:], 20)[0][0])
    torch.testing.assert_close(inputs[0], inputs[7])


def test_preprocess_batch_keeps_the_inputs_of_the_requests_still_answered():
    requests = [Request([STROKE], 3), Request([STROKE, BLANK], 3, many=True), Request([BLANK], 3),
                Request([STROKE, STROKE], 3, many=True)]
    inputs, places = predictor.preprocess_batch(requests, 20)
    assert [places[0], places[3]] == [range(0, 1), range(1, 3)]
    assert str(places[1]) == "image 1: blank image: no digit found"
    assert places[2].reason is refusals.Reason.BLANK_IMAGE
    alone, _ = predictor.preprocess([Request([STROKE], 3)], 20)
    assert inputs.shape == (3, 1, 28, 28) and all(torch.equal(row, alone[0]) for row in inputs)


def test_preprocess_batch_all_answered_or_all_refused():
    inputs, places = predictor.preprocess_batch([Request([STROKE], 3), Request([STROKE, STROKE], 3, many=True)], 20)
    assert inputs.shape == (3, 1, 28, 28) and places == [range(0, 1), range(1, 3)]
    assert predictor.preprocess_batch([Request([BLANK], 3)], 20)[0].shape == (0, 1, 28, 28)
    assert predictor.preprocess_batch([], 20)[0].shape == (0, 1, 28, 28)


@pytest.mark.usefixtures("broken_geometry")
def test_a_bug_in_the_batched_preprocessing_costs_only_its_request():
    requests = [Request([STROKE], 3), Request([np.pad(STROKE, ((0, 1), (0, 1)))], 3), Request([STROKE], 3)]
    inputs, places = predictor.preprocess_batch(requests, 20)
    assert isinstance(places[1], RuntimeError) and inputs.shape == (2, 1, 28, 28)
    assert [places[0], places[2]] == [range(0, 1), range(1, 2)]


# ---------------------------------------------------------------- predict


def test_predict_answers_each_request_with_its_own_images(ready, test_split):
    images, labels = test_split
    requests = [Request([images[0]], 3), Request(list(images[1:4]), 2, many=True), Request([BLANK], 3),
                Request([images[4]], 10)]
    answers = ready.predict(requests)
    assert [type(answer) for answer in answers] == [Prediction, Prediction, refusals.InputError, Prediction]
    one, three, blank, ten = answers
    assert one.best == [str(labels[0])] and three.best == [str(label) for label in labels[1:4]]
    assert str(blank) == "blank image: no digit found"
    assert len(ten.indices[0]) == 10 and ten.probabilities.shape == (1, 10)
    assert [len(ranked) for ranked in one.indices] == [10]  # ranked as far as the batch's largest topk
    for answer in (one, three, ten):
        np.testing.assert_allclose(answer.probabilities.sum(dim=1), 1.0, atol=1e-5)
        assert [row[0] for row in answer.indices] == answer.probabilities.argmax(dim=1).tolist()
        assert answer.explanations == []
    alone = ready.predict([Request([images[2]], 3)])[0]  # a batch's company changes nothing
    torch.testing.assert_close(alone.probabilities[0], three.probabilities[1])


def test_predict_explains_the_requests_that_ask(ready, test_split):
    images, labels = test_split
    asked, plain = ready.predict([Request(list(images[:2]), 3, many=True, explain=True), Request([images[2]], 3)])
    assert asked.best == [str(label) for label in labels[:2]] and plain.explanations == []
    assert [set(fields) for fields in asked.explanations] == [{"image", "attributions", "method", "steps",
                                                               "baseline"}] * 2
    assert np.asarray(asked.explanations[1]["attributions"]).shape == (28, 28)


def test_predict_of_nothing_but_refusals_runs_no_model(ready):
    assert [str(answer) for answer in ready.predict([Request([BLANK], 3)])] == ["blank image: no digit found"]
    assert ready.predict([]) == []


def test_predict_reports_its_preprocessing_time(ready, test_split):
    timings = {}
    ready.predict([Request([test_split[0][0]], 3)], timings)
    assert 0 < timings["preprocess_s"] < 5
