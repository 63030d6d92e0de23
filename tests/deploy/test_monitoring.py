"""Offline checks of deploy/monitoring: the alert rules load and their promtool unit tests pass, every alert is
tested both firing and silent, the example Prometheus configuration is valid and finds the pods the way
deploy/k8s annotates them, and every Grafana panel holds valid PromQL over the metrics the container exports.

Needs `promtool` (Debian's `prometheus` package: installed here when run as root, otherwise the tests skip with the
reason, and under CI=true they fail). No Prometheus is started: that the panels return series from a live server
is the integration tests' business; `panel_queries()` below hands them the queries.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.metric_labels import LABEL_VALUES
from tests.support.system import PROMETHEUS, ensure_packages

PACKAGES = PROMETHEUS  # promtool; installed in the background from collection on (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
ALERT_TESTS = MONITORING / "alerts_test.yaml"
DASHBOARD = MONITORING / "dashboard.json"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
DEPLOYMENT = ROOT / "deploy" / "k8s" / "base" / "deployment.yaml"

# ---------------------------------------------------------------- the metrics contract
# What the container's metrics port (8082, /metrics) exports: metric name -> its labels. TorchServe's frontend
# metrics and the handler's are the ones metrics.yaml declares (TorchServe drops any other, so that file is the
# contract); TorchServe adds Hostname to each handler metric. The gateway's own are written by gateway/gateway.lua.
# Prometheus adds the target's labels to every series: job and instance, and in Kubernetes namespace and pod.
METRICS_CONFIG = ROOT / "metrics.yaml"
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod"})
GATEWAY_METRICS: dict[str, frozenset[str]] = {
    "digits_gateway_requests_total": frozenset({"protocol", "code"}),
    "digits_gateway_inflight": frozenset(),
    "digits_gateway_ready": frozenset(),
    "digits_gateway_key_expiry_timestamp_seconds": frozenset(),
    "digits_gateway_key_rotations_total": frozenset(),
    "digits_gateway_key_rotation_failures_total": frozenset(),
    "digits_gateway_client_credentials": frozenset(),
    "digits_gateway_stray_answers_total": frozenset(),
}
PROMETHEUS_OWN = {"up": frozenset()}  # written by Prometheus for every target, not exported by the container


def declared_metrics() -> dict[str, dict[str, frozenset[str]]]:
    """metrics.yaml's metrics by section (ts_metrics: the frontend's; model_metrics: the handler's): name -> labels."""
    config = yaml.safe_load(METRICS_CONFIG.read_text())
    sections = {}
    for section, added in (("ts_metrics", frozenset()), ("model_metrics", frozenset({"Hostname"}))):
        sections[section] = {metric["name"]: frozenset(metric.get("dimensions") or ()) | added
                             for kinds in (config.get(section) or {}).values() for metric in kinds}
    return sections


def exported_metrics() -> dict[str, frozenset[str]]:
    declared = declared_metrics()
    return {**declared["ts_metrics"], **declared["model_metrics"], **GATEWAY_METRICS}


def must_be_shown() -> set[str]:
    """Metrics the dashboard must chart: every counter, the handler's gauges, the gateway's. TorchServe's host
    gauges (the node's CPU, memory, disk; per-worker load time) are optional."""
    config = yaml.safe_load(METRICS_CONFIG.read_text())
    counters = {metric["name"] for section in ("ts_metrics", "model_metrics")
                for metric in (config.get(section) or {}).get("counter") or ()}
    return counters | set(declared_metrics()["model_metrics"]) | set(GATEWAY_METRICS)


SEVERITIES = {"critical", "warning"}
ANNOTATIONS = {"summary", "description", "runbook"}

# Grafana's variables, as a live query would resolve them (the dashboard's own interval and "all pods").
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": ".*"}


# ---------------------------------------------------------------- PromQL, read just enough

_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r'\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:]|\s*\()")  # not a function's name
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or",
             "unless", "inf", "nan", "atan2"}


def read_promql(expr: str) -> tuple[set[str], list[tuple[str | None, list[tuple[str, str, str]]]], set[str]]:
    """(metric names, selectors as (metric, [(label, operator, value)]), labels in by/on/... lists) of `expr`.

    Not a parser: promtool judges validity; this finds the names, for expressions promtool accepts."""
    grouping = {label.strip() for group in _GROUPING.findall(expr) for label in group.split(",") if label.strip()}
    rest = _GROUPING.sub(" ", expr)
    selectors = []
    for metric, body in _SELECTOR.findall(rest):
        matchers, position, body = [], 0, body.strip()
        while position < len(body):
            matcher = _MATCHER.match(body, position)
            assert matcher, f"could not read the matchers {{{body}}} in {expr!r}"
            matchers.append(matcher.groups())
            position = matcher.end()
        selectors.append((metric or None, matchers))
    bare = _RANGE.sub(" ", _SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", _STRING.sub('""', rest)))
    metrics = {name for name in _IDENTIFIER.findall(bare) if name.lower() not in _KEYWORDS}
    return metrics, selectors, grouping


def contract_problems(expr: str, extra_labels: set[str] = frozenset()) -> list[str]:
    """Why `expr` steps outside the metrics contract: unknown metrics, labels a metric lacks, impossible values.
    `extra_labels`: label names the caller also uses on the result (legends, alert templates)."""
    known = {**exported_metrics(), **PROMETHEUS_OWN}
    metrics, selectors, grouping = read_promql(expr)
    problems = [f"unknown metric {name}" for name in sorted(metrics - known.keys())]
    if not metrics:
        problems.append("no metric")
    available = set(TARGET_LABELS).union(*(known.get(name, ()) for name in metrics))
    for metric, matchers in selectors:
        if metric is None:
            problems.append("a selector without a metric name")
            continue
        for label, operator, value in matchers:
            if label not in known.get(metric, frozenset()) | TARGET_LABELS:
                problems.append(f"{metric} has no label {label}")
            closed = LABEL_VALUES.get(label)
            if closed is None:
                continue
            values = [value] if operator in ("=", "!=") else value.split("|") if re.fullmatch(r"[\w|]+", value) else []
            problems += [f"{label}={v!r} is never exported" for v in values if v not in closed]
    problems += [f"label {label} is on none of {sorted(metrics)}" for label in sorted((grouping | extra_labels) - available)]
    return problems


def check_promql(promtool: str, tmp_path: Path, named: dict[str, str]) -> None:
    """promtool parses each expression: written as recording rules, `promtool check rules` rejects any it cannot."""
    rules = [{"record": f"check:{re.sub(r'[^A-Za-z0-9_]', '_', name)}", "expr": expr} for name, expr in named.items()]
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"invalid PromQL:\n{result.stdout}{result.stderr}\n{yaml.safe_dump(rules)}"


# ---------------------------------------------------------------- the files

def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panel_queries(board: dict | None = None, concrete: bool = False) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel. concrete: Grafana's variables replaced by what a
    query over all pods would use (GRAFANA_VARIABLES), ready for Prometheus's HTTP API."""
    queries = []
    for panel in (board or dashboard())["panels"]:
        for target in panel.get("targets", []):
            expr = target.get("expr", "")
            if concrete:
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
            queries.append((panel["title"], expr))
    return queries


@pytest.fixture(scope="session")
def promtool() -> str:
    ensure_packages(PROMETHEUS)
    return "promtool"


def run_promtool(promtool: str, *arguments: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *arguments], capture_output=True, text=True, cwd=cwd, timeout=120)


# ---------------------------------------------------------------- alerts

def test_alert_rules_load(promtool):
    result = run_promtool(promtool, "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass(promtool):
    result = run_promtool(promtool, "test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_silent():
    """promtool only runs the cases written: an alert without a firing case is untested, and one without a silent
    case could fire on anything (`vector(1)`) and still pass."""
    fires, silent = set(), set()
    for group in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for case in group.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), f"alerts no test expects to fire: {sorted(names - fires)}"
    assert names - silent == set(), f"alerts no test expects to stay silent: {sorted(names - silent)}"
    assert (fires | silent) - names == set(), f"tests of alerts that do not exist: {sorted((fires | silent) - names)}"


def test_alerts_are_actionable():
    """Each alert waits out blips (`for`), says how urgent it is and to whom, and what to do."""
    rules = alert_rules()
    assert 6 <= len(rules) <= 12, f"{len(rules)} alerts: an on-call person reads every one"
    assert len({rule["alert"] for rule in rules}) == len(rules), "duplicate alert names"
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))) and not str(rule["for"]).startswith("0"), \
            f"{name}: no `for`"
        assert rule["labels"].get("severity") in SEVERITIES, f"{name}: severity not one of {SEVERITIES}"
        assert rule["labels"].get("service") == "digits", f"{name}: no service label for routing"
        assert set(rule.get("annotations", {})) >= ANNOTATIONS, f"{name}: annotations lack {ANNOTATIONS}"


def test_alerts_use_the_metrics_contract():
    for rule in alert_rules():
        templated = " ".join(str(text) for text in rule["annotations"].values())
        used = set(re.findall(r"\$labels\.(\w+)", templated))
        problems = contract_problems(rule["expr"], used)
        assert not problems, f"{rule['alert']}: {problems}"


def test_promql_reader_sees_what_the_contract_check_needs():
    """The checks above are only as good as read_promql: it finds metrics, labels and values in the forms used."""
    metrics, selectors, grouping = read_promql(
        'sum by (pod) (rate(digits_refusals_total{ErrorType!="InternalError", Reason=~"bad_json|bad_npy"}[5m]))'
        ' / ignoring (code) group_left sum(up offset 10m) and on (job) time() - Requests5XX')
    assert metrics == {"digits_refusals_total", "up", "Requests5XX"}
    assert selectors == [("digits_refusals_total",
                          [("ErrorType", "!=", "InternalError"), ("Reason", "=~", "bad_json|bad_npy")])]
    assert grouping == {"pod", "code", "job"}
    assert contract_problems('rate(digits_request_total[5m])') == ["unknown metric digits_request_total"]
    assert contract_problems('digits_gateway_ready{Hostname="x"}') == ["digits_gateway_ready has no label Hostname"]
    assert contract_problems('digits_requests_total{InputKind="png"}') == ["InputKind='png' is never exported"]
    assert contract_problems('sum by (Reason) (digits_images_total)') == \
        ["label Reason is on none of ['digits_images_total']"]


# ---------------------------------------------------------------- Prometheus configuration

def relabel(labels: dict[str, str], configs: list[dict]) -> dict[str, str] | None:
    """Prometheus's relabelling (keep, drop, replace) of one discovered target; None when it is dropped."""
    labels = dict(labels)
    for config in configs:
        action = config.get("action", "replace")
        assert action in ("keep", "drop", "replace"), f"relabel action {action} not simulated here"
        value = config.get("separator", ";").join(labels.get(name, "") for name in config.get("source_labels", []))
        match = re.fullmatch(f"(?:{config.get('regex', '(.*)')})", value)
        if action == "keep" and not match or action == "drop" and match:
            return None
        if action == "replace" and match:
            # Go's Regexp.Expand: $name takes every letter, digit and underscore after the $.
            groups = {str(i): group or "" for i, group in enumerate([match.group(0), *match.groups()])}
            result = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: groups.get(m.group(1) or m.group(2), ""),
                            str(config.get("replacement", "$1")))
            if result:
                labels[config["target_label"]] = result
            else:
                labels.pop(config["target_label"], None)
    return {name: value for name, value in labels.items() if not name.startswith("__meta_")}


def discovered(pod_ip: str, annotations: dict[str, str], phase: str = "Running") -> list[dict[str, str]]:
    """What Kubernetes pod discovery hands the job for the pod of deploy/k8s: one target per container port."""
    meta = {f"__meta_kubernetes_pod_annotation_{re.sub(r'[^A-Za-z0-9_]', '_', name)}": value
            for name, value in annotations.items()}
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    return [{"__address__": f"{host}:{port}", "__metrics_path__": "/metrics", "__scheme__": "http", "job": "digits",
             "__meta_kubernetes_namespace": "digits", "__meta_kubernetes_pod_name": "digits-6f7b9c-a1",
             "__meta_kubernetes_pod_ip": pod_ip, "__meta_kubernetes_pod_phase": phase, **meta}
            for port in (8080, 7070, 8082)]


def test_prometheus_config_is_valid(promtool, tmp_path):
    """Debian builds Prometheus without Kubernetes discovery (its promtool rejects kubernetes_sd_configs), so the
    job is checked with a static target in its place: everything else is promtool's to judge, rule files included.
    Discovery itself is checked in the next test."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert [(MONITORING / path).resolve() for path in config["rule_files"]] == [ALERTS.resolve()]
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs", None), f"job {job['job_name']}: no Kubernetes discovery"
        job["static_configs"] = [{"targets": ["127.0.0.1:8082"]}]
    config["rule_files"] = [str(ALERTS)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = run_promtool(promtool, "check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_scrapes_each_annotated_pod_once():
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (job,) = config["scrape_configs"]
    assert job.get("scrape_interval", config["global"].get("scrape_interval")) == "15s"
    (discovery,) = job["kubernetes_sd_configs"]
    assert discovery["role"] == "pod"
    assert set(discovery) <= {"role", "namespaces", "selectors", "api_server", "kubeconfig_file", "attach_metadata"}
    (deployment,) = [doc for doc in yaml.safe_load_all(DEPLOYMENT.read_text()) if doc]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    port, path = annotations["prometheus.io/port"], annotations["prometheus.io/path"]

    for pod_ip, address in (("10.1.0.11", f"10.1.0.11:{port}"), ("fd00:10:1::b", f"[fd00:10:1::b]:{port}")):
        targets = [relabel(target, job["relabel_configs"]) for target in discovered(pod_ip, annotations)]
        kept = {tuple(sorted(target.items())) for target in targets if target}
        assert len(kept) == 1, f"pod {pod_ip}: {len(kept)} distinct targets, one expected: {kept}"
        target = dict(kept.pop())
        assert (target["__address__"], target["__metrics_path__"]) == (address, path)
        assert (target["namespace"], target["pod"]) == ("digits", "digits-6f7b9c-a1")

    unannotated = {name: value for name, value in annotations.items() if name != "prometheus.io/scrape"}
    assert not any(relabel(t, job["relabel_configs"]) for t in discovered("10.1.0.12", unannotated))
    assert not any(relabel(t, job["relabel_configs"]) for t in discovered("10.1.0.13", annotations, "Pending"))


# ---------------------------------------------------------------- Grafana dashboard

def test_every_panel_has_a_query():
    """Flat panels, each with its queries at panels[].targets[].expr: no rows or collapsed panels hiding some."""
    board = dashboard()
    assert board["panels"], "no panels"
    for panel in board["panels"]:
        assert panel["type"] != "row" and "panels" not in panel, f"{panel.get('title')}: rows hide panels"
        targets = panel.get("targets", [])
        assert targets and all(target.get("expr", "").strip() for target in targets), \
            f"{panel.get('title')}: a panel without a query"
    titles = [panel["title"] for panel in board["panels"]]
    assert len(set(titles)) == len(titles), "panel titles repeat"


def test_panel_queries_are_valid_promql(promtool, tmp_path):
    named = {f"{title} {i}": expr for i, (title, expr) in enumerate(panel_queries(concrete=True))}
    assert not [expr for expr in named.values() if "$" in expr], "a Grafana variable left unreplaced"
    check_promql(promtool, tmp_path, named)


def test_panel_queries_use_the_metrics_contract():
    board = dashboard()
    used = set()
    for panel in board["panels"]:
        for target in panel["targets"]:
            legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            problems = contract_problems(target["expr"], legend)
            assert not problems, f"{panel['title']}: {target['expr']}: {problems}"
            used |= read_promql(target["expr"])[0]
    assert must_be_shown() - used == set(), f"metrics no panel shows: {sorted(must_be_shown() - used)}"
    metrics = exported_metrics()
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["definition"]).groups()
            assert metric in metrics and label in metrics[metric] | TARGET_LABELS, variable["definition"]


def test_dashboard_datasource_is_a_variable():
    """Imported anywhere, the dashboard asks which Prometheus to use: no data source UID of the machine it was
    made on."""
    board = dashboard()
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"

    def datasources(node):
        if isinstance(node, dict):
            if isinstance(node.get("datasource"), (dict, str)):
                yield node["datasource"]
            for value in node.values():
                yield from datasources(value)
        elif isinstance(node, list):
            for value in node:
                yield from datasources(value)

    found = list(datasources(board["panels"])) + list(datasources(board["templating"]["list"]))
    assert found, "no datasource set anywhere"
    assert all(ds == {"type": "prometheus", "uid": "${datasource}"} for ds in found), \
        f"hard-coded data sources: {[ds for ds in found if ds != {'type': 'prometheus', 'uid': '${datasource}'}]}"
    assert all("datasource" in panel for panel in board["panels"]), "a panel on Grafana's default data source"
