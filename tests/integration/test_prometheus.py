"""A real Prometheus (Debian's package) scrapes a running bundle -- the gateway's metrics port, which carries
TorchServe's frontend metrics, the handler's and the gateway's own -- while known traffic is sent; the counts it
stores must be exactly what was sent. The dashboard's queries and the alert rules run against the same Prometheus.
"""
from __future__ import annotations

import base64
import json
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from serving.ports import PortClash, free_ports, port_taken, retry_port_clash
from tests.support import ROOT
from tests.support.images import npy_bytes, png_bytes
from tests.support.gateways import HostGateway
from tests.support.system import NGINX, PROMETHEUS, ensure_packages

pytestmark = pytest.mark.integration

MONITORING = ROOT / "deploy" / "monitoring"
SCRAPE_SECONDS = 1
# Counters TorchServe creates at their first increment, which this traffic never causes (no 5xx happens):
# a dashboard query over them alone may return nothing.
NEVER_INCREMENTED = {"Requests5XX"}


class Prometheus:
    def __init__(self, workdir: Path, target: str):
        port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{port}"
        config = {
            "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
            "rule_files": [str(MONITORING / "alerts.yaml")],
            "scrape_configs": [{"job_name": "digits", "static_configs": [{"targets": [target]}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = open(workdir / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        self.log_path = workdir / "prometheus.log"
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log_text = self.log_path.read_text(errors="replace")
                error = PortClash if port_taken(log_text) else RuntimeError
                raise error(f"Prometheus did not start:\n{log_text[-3000:]}")
            time.sleep(0.3)

    def query(self, expression: str) -> list[dict]:
        answer = requests.get(f"{self.url}/api/v1/query", params={"query": expression}, timeout=10).json()
        assert answer["status"] == "success", (expression, answer)
        return answer["data"]["result"]

    def value(self, expression: str) -> float | None:
        result = self.query(expression)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def bundle(model_store, workdir_factory):
    """A gateway + TorchServe of its own: its counters start at zero, so every count is this module's traffic."""
    ensure_packages(NGINX)
    gateway = HostGateway.start(model_store, workdir_factory(), "--load-models", "digits.mar")
    yield gateway
    status, alive = gateway.stop()
    assert status == 0 and not alive


@pytest.fixture(scope="module")
def prometheus(bundle, workdir_factory):
    ensure_packages(PROMETHEUS)
    workdir = workdir_factory()
    target = bundle.metrics.removeprefix("http://").removesuffix("/metrics")
    server = retry_port_clash(lambda: Prometheus(workdir, target))
    yield server
    server.stop()
    assert server.process.returncode is not None


@pytest.fixture(scope="module")
def traffic(bundle, prometheus, test_split) -> dict[str, float]:
    """Known traffic through the gateway; returns what Prometheus must count."""
    images, _ = test_split
    posted = []

    def post(body, headers=None, credential=True, endpoint="predictions"):
        response = requests.post(f"{bundle.rest}/{endpoint}/digits", data=body, timeout=30,
                                 headers={**(bundle.auth() if credential else {}),
                                          "Content-Type": "application/octet-stream", **(headers or {})})
        posted.append(response.status_code)
        return response

    for image in images[:7]:
        assert post(png_bytes(image)).status_code == 200
    for image in images[7:10]:
        assert post(json.dumps({"data": base64.b64encode(png_bytes(image)).decode()}).encode(),
                    {"Content-Type": "application/json"}).status_code == 200
    for image in images[10:14]:
        assert post(json.dumps({"pixels": image.astype(int).tolist()}).encode(),
                    {"Content-Type": "application/json"}).status_code == 200
    assert len(post(npy_bytes(images[14:19])).json()["predictions"]) == 5
    listed = {"images": [base64.b64encode(png_bytes(image)).decode() for image in images[19:22]]}
    assert len(post(json.dumps(listed).encode(), {"Content-Type": "application/json"}).json()["predictions"]) == 3
    for image in images[22:24]:
        assert "attributions" in post(png_bytes(image), endpoint="explanations").json()
    for _ in range(5):
        assert post(b"this is not an image").status_code == 400
    for _ in range(2):
        assert post(b"").status_code == 400
    assert post(npy_bytes(np.zeros((257, 28, 28), np.uint8))).status_code == 413
    for _ in range(6):
        assert post(png_bytes(images[0]), credential=False).status_code == 401
    return {
        'sum(digits_requests_total{InputKind="image"})': 10 + 2,
        'sum(digits_requests_total{InputKind="pixels"})': 4,
        'sum(digits_requests_total{InputKind="multi_image"})': 2,
        'sum(digits_refusals_total{ErrorType="InputError",Reason="not_an_image"})': 5,
        'sum(digits_refusals_total{ErrorType="InputError",Reason="empty_body"})': 2,
        'sum(digits_refusals_total{ErrorType="InputTooLarge",Reason="too_many_images"})': 1,
        "sum(digits_images_total)": 10 + 4 + 8 + 2,
        "sum(digits_predictions_total)": 10 + 4 + 8 + 2,
        "sum(digits_explained_images_total)": 2,
        "sum(ts_inference_requests_total)": 16 + 2 + 8,
        'sum(digits_gateway_requests_total{protocol="rest",code="200"})': 16 + 2,
        'sum(digits_gateway_requests_total{protocol="rest",code="400"})': 7,
        'sum(digits_gateway_requests_total{protocol="rest",code="413"})': 1,
        'sum(digits_gateway_requests_total{protocol="rest",code="401"})': 6,
        "sum(digits_worker_starts_total)": 2,
    }


def test_prometheus_counts_exactly_the_traffic_sent(prometheus, traffic):
    deadline = time.monotonic() + 30
    while True:
        seen = {expression: prometheus.value(expression) for expression in traffic}
        if seen == traffic or time.monotonic() > deadline:
            break
        time.sleep(SCRAPE_SECONDS)
    assert seen == traffic


def test_predicted_classes_add_up_to_the_answers(prometheus, traffic):
    by_label = prometheus.query("sum by (Label) (digits_predictions_total)")
    assert {entry["metric"]["Label"] for entry in by_label} <= {str(digit) for digit in range(10)}
    assert sum(float(entry["value"][1]) for entry in by_label) == traffic["sum(digits_predictions_total)"]


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    return [(panel.get("title", "?"), target["expr"]) for panel in dashboard["panels"]
            for target in panel.get("targets", []) if target.get("expr")]


def grafana_to_promql(expression: str) -> str:
    """Grafana's built-in and template variables, replaced as Grafana would for a 1-minute view."""
    expression = expression.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "5m")
    return re.sub(r"\$\{?[A-Za-z_]\w*\}?", ".*", expression)


def test_every_dashboard_query_runs_and_returns_series(prometheus, traffic):
    def empty_panels() -> list[tuple[str, str]]:
        empty = []
        for title, expression in panel_queries():
            result = prometheus.query(grafana_to_promql(expression))
            if not result and not NEVER_INCREMENTED & set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expression)):
                empty.append((title, expression))
        return empty

    deadline = time.monotonic() + 60  # a rate needs two scrapes of a counter: a second or two here
    while (empty := empty_panels()) and time.monotonic() < deadline:
        time.sleep(SCRAPE_SECONDS)
    assert not empty, empty


def test_alert_rules_load_and_evaluate_without_error(prometheus, traffic):
    groups = requests.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    defined = [rule["alert"] for group in yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"]
               for rule in group["rules"] if "alert" in rule]
    assert sorted(rule["name"] for rule in rules if rule["type"] == "alerting") == sorted(defined)
    deadline = time.monotonic() + 60  # every rule evaluated at least once ("unknown" until then)
    while [rule for rule in rules if rule["health"] == "unknown"] and time.monotonic() < deadline:
        time.sleep(SCRAPE_SECONDS)
        rules = [rule for group in requests.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
                 for rule in group["rules"]]
    assert all(rule["health"] == "ok" for rule in rules), [(rule["name"], rule.get("lastError")) for rule in rules]
