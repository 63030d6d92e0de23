"""benchmarks/peer, the benchmark's FastAPI peer: a fair comparison needs the same model, the same input
handling and the same answers as TorchServe's handler. Checked against the real TorchServe of the `server` fixture,
both serving the same freshly built .mar."""
from __future__ import annotations

import psutil
import pytest
import requests

from benchmarks import peer as peer_process
from serving.processes import pid_alive
from tests.support.images import npy_bytes, png_bytes
from tests.support import bad_inputs

pytestmark = pytest.mark.integration
TIMEOUT = 30


@pytest.fixture(scope="module")
def peer(model_store, tmp_path_factory):
    process, base = peer_process.start_peer(model_store / "digits.mar", tmp_path_factory.mktemp("peer"),
                                         "peer-token-0123456789")
    try:
        tree = [process.pid, *(child.pid for child in psutil.Process(process.pid).children(recursive=True))]
        assert len(tree) >= 3, "uvicorn's supervisor and 2 workers"
        yield base, {"Authorization": "Bearer peer-token-0123456789"}
    finally:
        peer_process.stop_process_tree(process)
    assert not [pid for pid in tree if pid_alive(pid)], "the peer left processes behind"


def test_the_peer_answers_exactly_as_torchserve(peer, server, test_split):
    base, auth = peer
    images, labels = test_split
    right = 0
    for image, label in zip(images[:20], labels[:20]):
        body = png_bytes(image)
        theirs = requests.post(f"{base}/predictions/digits", data=body, headers=auth, timeout=TIMEOUT)
        ours = requests.post(f"{server.endpoints.inference}/predictions/digits", data=body, headers=server.auth(),
                             timeout=TIMEOUT)
        assert theirs.status_code == 200 and theirs.headers["Content-Type"] == "application/json"
        assert [entry["label"] for entry in theirs.json()["topk"]] == [entry["label"] for entry in ours.json()["topk"]]
        for mine, other in zip(theirs.json()["topk"], ours.json()["topk"]):
            assert mine["probability"] == pytest.approx(other["probability"], abs=1e-5)
        right += theirs.json()["label"] == str(label)
    assert right >= 18
    many = requests.post(f"{base}/predictions/digits", data=npy_bytes(images[:8]), headers=auth, timeout=TIMEOUT)
    assert [answer["label"] for answer in many.json()["predictions"]] == [
        answer["label"] for answer in requests.post(f"{server.endpoints.inference}/predictions/digits",
                                                    data=npy_bytes(images[:8]), headers=server.auth(),
                                                    timeout=TIMEOUT).json()["predictions"]]


@pytest.mark.parametrize("name", sorted(bad_inputs.REFUSED))
def test_the_peer_refuses_bad_input_with_the_handlers_400(peer, test_split, name):
    base, auth = peer
    response = requests.post(f"{base}/predictions/digits", data=bad_inputs.refused_bodies(test_split[0][0])[name],
                             headers=auth, timeout=TIMEOUT)
    assert response.status_code == 400 and response.json()["type"] == "InputError"
    assert bad_inputs.REFUSED[name] in response.json()["message"]


@pytest.mark.parametrize("token", [None, "wrong-token"], ids=["missing", "wrong"])
def test_the_peer_checks_its_token(peer, test_split, token):
    base, _ = peer
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = requests.post(f"{base}/predictions/digits", data=png_bytes(test_split[0][0]), headers=headers,
                             timeout=TIMEOUT)
    assert response.status_code == 401 and response.json()["type"] == "Unauthorized"
