"""Offline checks of deploy/k8s: every kustomization renders with `kubectl kustomize`, every object validates
against Kubernetes' own OpenAPI schema (strict: an unknown or misspelled field fails), and the properties the
deployment depends on hold. No cluster is contacted; what runs inside the pod is the container tests' business.

Needs `kubectl` (client only: its built-in kustomize) and the kubernetes-validate package. Where one is missing the
tests skip with the reason, except under CI=true, where they fail: nothing skips in CI.
"""
from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.system import unavailable

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
ADAPTER_CONFIG = K8S / "prometheus-adapter" / "config.yaml"
OVERLAYS = ("overlays/cpu", "overlays/gpu")
KUSTOMIZATIONS = ("base", *OVERLAYS, "prometheus-adapter")
# The oldest Kubernetes the manifests are for, and the newest schema kubernetes-validate ships: a field too new
# for the first fails, and so does an API version removed by the second (autoscaling/v2beta2, say).
SCHEMA_VERSIONS = ("1.31", "1.37")
NAMESPACE = "digits"

# The container's contract (the image's gateway): ports, health paths, the settings it reads, its shutdown.
CONTAINER_PORTS = {"http": 8080, "grpc": 7070, "metrics": 8082}
READY_PATH, LIVE_PATH = "/healthz/ready", "/healthz/live"
CONTAINER_SETTINGS = {"DRAIN_SECONDS", "RATE_LIMIT", "RATE_BURST", "DIGITS_WORKERS", "DIGITS_CLIENT_TOKEN_FILE"}
DRAIN_DEFAULT_S = 5.0
INFLIGHT_BOUND_S = 15  # after the drain, nginx has this long to answer the requests in flight before it is killed
SLOWEST_START_S = 9.8  # docker run -> ready, the slowest start measured on 2 CPUs (docs/container.md, "Cold start")
HUNG_START_S = 60  # a start that takes longer is hung: the kubelet should restart it by then
WORKER_MIB, FRONTEND_MIB = 700, 300  # resident memory of one TorchServe worker; the Java frontend plus nginx
TOKEN_SECRET, TOKEN_KEY = "digits-client-token", "token"
METRIC = "digits_queue_latency_ms"
PROMETHEUS_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
}
GPU = "nvidia.com/gpu"


# ---------------------------------------------------------------- rendering and schemas


@functools.cache
def kustomize(kustomization: str) -> tuple[dict, ...]:
    result = subprocess.run(["kubectl", "kustomize", str(K8S / kustomization)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {kustomization} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@pytest.fixture(scope="session")
def render():
    if shutil.which("kubectl") is None:
        unavailable("kubectl is not installed: the manifests cannot be rendered")
    return kustomize


@pytest.fixture(scope="session")
def kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        unavailable("kubernetes-validate is not installed (pip install -r requirements.txt)")
    return kubernetes_validate


@pytest.fixture(params=OVERLAYS, ids=lambda path: path.split("/")[-1])
def overlay(request, render) -> tuple[dict, ...]:
    return render(request.param)


def of_kind(docs, kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs, kind: str) -> dict:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
    return found[0]


def pod_spec(docs) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def containers(docs) -> list[dict]:
    spec = pod_spec(docs)
    return spec.get("initContainers", []) + spec["containers"]


def serve(docs) -> dict:
    (container,) = pod_spec(docs)["containers"]
    return container


def port_names(container: dict) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container.get("ports", [])}


def environment(docs, container: dict) -> dict[str, str]:
    """What the container's environment will hold: its ConfigMaps (which must be rendered too), then env."""
    values = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"envFrom other than a ConfigMap: {source}"
        name = source["configMapRef"]["name"]
        maps = [doc for doc in of_kind(docs, "ConfigMap") if doc["metadata"]["name"] == name]
        assert maps, f"envFrom names ConfigMap {name}, which is not rendered"
        values.update(maps[0].get("data", {}))
    for variable in container.get("env", []):
        assert "value" in variable, f"{variable['name']}: only literal values belong in env"
        values[variable["name"]] = variable["value"]
    return values


@functools.cache
def archive_config() -> dict:
    """The model's own settings, packed into the .mar: the workers a pod runs unless DIGITS_WORKERS says."""
    return yaml.safe_load((ROOT / "handler" / "model-config.yaml").read_text())


def quantity(value) -> float:
    number, suffix = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value)).groups()
    scale = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return float(number) * scale[suffix]


def test_renders(render):
    for kustomization in KUSTOMIZATIONS:
        docs = render(kustomization)
        assert docs, f"{kustomization} renders nothing"
        keys = [(doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"]) for doc in docs]
        assert len(keys) == len(set(keys)), f"{kustomization} renders an object twice: {keys}"


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_objects_validate_against_the_kubernetes_schema(render, kubernetes_validate, kustomization, version):
    errors = []
    for doc in render(kustomization):
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            used = kubernetes_validate.validate(doc, version, strict=True)
            assert used == version, f"kubernetes-validate has no {version} schema (it used {used})"
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{where}: {error.message} at {'/'.join(map(str, error.absolute_path))}")
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(f"{where}: {error.message}")
    assert not errors, "\n".join(errors)


# ---------------------------------------------------------------- what the pods run


def test_everything_lands_in_the_digits_namespace(overlay):
    namespace = one(overlay, "Namespace")
    assert namespace["metadata"]["name"] == NAMESPACE
    # Pod Security Admission then refuses any pod here that breaks the restricted profile.
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in overlay:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{doc['kind']}/{doc['metadata']['name']}"


def test_images_are_pinned(overlay):
    for container in containers(overlay):
        image = container["image"]
        by_digest = re.search(r"@sha256:[0-9a-f]{64}$", image)
        name, _, tag = image.rpartition(":")
        by_tag = name and "/" not in tag and tag != "latest"
        assert by_digest or by_tag, f"{container['name']}: image {image!r} is not pinned to a tag or digest"


def test_the_image_is_the_one_make_image_builds(overlay):
    """deploy/k8s pins the tag `make image` gives the image (Makefile IMAGE / IMAGE_VERSION): one version."""
    makefile = (ROOT / "Makefile").read_text()
    name = re.search(r"(?m)^IMAGE := (\S+)$", makefile).group(1)
    version = re.search(r"(?m)^IMAGE_VERSION := (\S+)$", makefile).group(1)
    assert {container["image"] for container in containers(overlay)} == {f"{name}:{version}"}


def test_containers_have_requests_and_limits(overlay):
    for container in containers(overlay):
        resources = container.get("resources", {})
        for resource in ("cpu", "memory"):
            request = resources.get("requests", {}).get(resource)
            limit = resources.get("limits", {}).get(resource)
            assert request and limit, f"{container['name']}: {resource} needs a request and a limit"
            assert quantity(request) <= quantity(limit), f"{container['name']}: {resource} request over its limit"


def test_the_workers_fit_the_pod(overlay):
    """Each worker gets a core and its memory: raising DIGITS_WORKERS without the resources fails here."""
    container = serve(overlay)
    workers = int(environment(overlay, container).get("DIGITS_WORKERS", archive_config()["minWorkers"]))
    threads = archive_config()["handler"]["torch_threads"]
    requests = container["resources"]["requests"]
    assert quantity(requests["cpu"]) >= workers * threads, f"{workers} workers x {threads} threads"
    assert quantity(requests["memory"]) >= (workers * WORKER_MIB + FRONTEND_MIB) * 2**20, f"{workers} workers"


def test_container_declares_the_images_ports(overlay):
    assert port_names(serve(overlay)) == CONTAINER_PORTS


def test_probes_use_the_health_endpoints_on_named_ports(overlay):
    for container in containers(overlay):
        declared = port_names(container)
        expected = {"startupProbe": READY_PATH, "readinessProbe": READY_PATH, "livenessProbe": LIVE_PATH}
        for probe_name, path in expected.items():
            probe = container.get(probe_name)
            assert probe, f"{container['name']} has no {probe_name}"
            http = probe.get("httpGet", {})
            assert http.get("path") == path, f"{container['name']} {probe_name}: {http}"
            assert http.get("port") in declared, f"{container['name']} {probe_name}: port {http.get('port')!r} " \
                                                 f"is not one of the container's named ports {sorted(declared)}"
        startup = container["startupProbe"]
        budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
        assert 3 * SLOWEST_START_S <= budget <= HUNG_START_S, f"the startup probe gives a start {budget} s"
        assert startup.get("periodSeconds", 10) <= 2, "the pod would turn ready seconds after its server"


def test_pods_run_unprivileged(overlay):
    spec = pod_spec(overlay)
    assert spec.get("automountServiceAccountToken") is False
    assert not any(spec.get(host) for host in ("hostNetwork", "hostPID", "hostIPC"))
    assert not any("hostPath" in volume for volume in spec.get("volumes", []))
    pod_context = spec.get("securityContext", {})
    assert pod_context.get("fsGroup"), "no fsGroup: the token file would not be readable by the container's group"
    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    for container in containers(overlay):
        own = container.get("securityContext", {})
        effective = {**pod_context, **own}  # the container's own settings win
        name = container["name"]
        assert effective.get("runAsNonRoot") is True, name
        assert effective.get("runAsUser", 0) > 0 and effective.get("runAsGroup", 0) > 0, f"{name}: uid/gid 0"
        assert effective.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert own.get("readOnlyRootFilesystem") is True, name
        assert own.get("allowPrivilegeEscalation") is False, name
        assert own.get("privileged") is not True, name
        assert own.get("capabilities", {}).get("drop") == ["ALL"], name
        assert not own.get("capabilities", {}).get("add"), name
        # With the root filesystem read-only, /tmp is where the container keeps everything it writes.
        tmp = [mount for mount in container.get("volumeMounts", []) if mount["mountPath"] == "/tmp"]
        assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{name}: /tmp is not a writable emptyDir"


def test_the_credential_is_a_mounted_secret(overlay):
    container = serve(overlay)
    spec = pod_spec(overlay)
    (volume,) = [volume for volume in spec["volumes"] if volume.get("secret", {}).get("secretName") == TOKEN_SECRET]
    (item,) = [item for item in volume["secret"]["items"] if item["key"] == TOKEN_KEY]
    (mount,) = [mount for mount in container["volumeMounts"] if mount["name"] == volume["name"]]
    assert mount.get("readOnly") is True
    expected = f"{mount['mountPath'].rstrip('/')}/{item['path']}"
    assert environment(overlay, container).get("DIGITS_CLIENT_TOKEN_FILE") == expected
    # Never the credential itself in the environment (it shows in `kubectl describe`, crash dumps, children).
    assert "DIGITS_CLIENT_TOKEN" not in environment(overlay, container)


def test_no_secret_is_committed(render):
    for kustomization in KUSTOMIZATIONS:
        for secret in of_kind(render(kustomization), "Secret"):
            assert not secret.get("data") and not secret.get("stringData"), \
                f"{kustomization} renders Secret {secret['metadata']['name']} with a value: create it out of band"


def test_settings_are_ones_the_container_reads(overlay):
    """A misspelled setting would be ignored by the container without a word: it fails here."""
    settings = environment(overlay, serve(overlay))
    assert set(settings) <= CONTAINER_SETTINGS, f"unknown settings: {set(settings) - CONTAINER_SETTINGS}"
    for name in set(settings) - {"DIGITS_CLIENT_TOKEN_FILE"}:
        assert re.fullmatch(r"[0-9]+(\.[0-9]+)?", settings[name]), f"{name}={settings[name]!r} is not a number"


def test_shutdown_fits_in_the_grace_period(overlay):
    """preStop + DRAIN_SECONDS + the in-flight bound must end before the kubelet's SIGKILL."""
    spec = pod_spec(overlay)
    container = serve(overlay)
    pre_stop = container["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        pre_stop_s = float(pre_stop["sleep"]["seconds"])
    else:
        command = pre_stop["exec"]["command"]
        assert command[0] in ("/bin/sleep", "sleep") and len(command) == 2, f"preStop: {command}"
        pre_stop_s = float(command[1])
    assert pre_stop_s > 0, "no preStop pause: the pod would stop before load balancers forget it"
    drain_s = float(environment(overlay, container).get("DRAIN_SECONDS", DRAIN_DEFAULT_S))
    grace_s = spec.get("terminationGracePeriodSeconds", 30)
    needed = pre_stop_s + drain_s + INFLIGHT_BOUND_S
    assert needed <= grace_s, f"preStop {pre_stop_s} + drain {drain_s} + in flight {INFLIGHT_BOUND_S} = " \
                              f"{needed} s > terminationGracePeriodSeconds {grace_s}"


def test_rollouts_keep_capacity(overlay):
    deployment = one(overlay, "Deployment")
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0 and strategy["rollingUpdate"]["maxSurge"] >= 1
    # The HPA owns the replica count; one written here would be re-applied over it by every `kubectl apply`.
    assert "replicas" not in deployment["spec"]


# ---------------------------------------------------------------- how traffic and Prometheus reach them


def test_every_selector_matches_the_pods(overlay):
    pod_labels = one(overlay, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selectors = {
        "Deployment": one(overlay, "Deployment")["spec"]["selector"],
        "Service": {"matchLabels": one(overlay, "Service")["spec"]["selector"]},
        "PodDisruptionBudget": one(overlay, "PodDisruptionBudget")["spec"]["selector"],
        "NetworkPolicy": one(overlay, "NetworkPolicy")["spec"]["podSelector"],
    }
    for number, spread in enumerate(pod_spec(overlay).get("topologySpreadConstraints", [])):
        selectors[f"topologySpreadConstraints[{number}]"] = spread["labelSelector"]
    for owner, selector in selectors.items():
        assert set(selector) == {"matchLabels"} and selector["matchLabels"], f"{owner}: {selector}"
        assert selector["matchLabels"].items() <= pod_labels.items(), f"{owner} selects other pods: {selector}"


def test_service_ports_name_their_protocol(overlay):
    declared = port_names(serve(overlay))
    service_ports = one(overlay, "Service")["spec"]["ports"]
    app_protocol = {"http": "http", "grpc": "kubernetes.io/h2c"}  # gRPC is cleartext HTTP/2 to the pod
    for port in service_ports:
        protocol = port["name"].split("-")[0]
        assert protocol in app_protocol, f"Service port {port['name']!r} does not lead with http or grpc"
        assert port.get("appProtocol") == app_protocol[protocol], port
        assert port["targetPort"] in declared, f"{port['name']}: targetPort must be one of {sorted(declared)}"
    assert {"http", "grpc"} <= {port["targetPort"] for port in service_ports}


def covers(rule: dict, name: str, number: int) -> bool:
    """Whether a NetworkPolicy rule admits traffic to this container port (no `ports`: all of them)."""
    if "ports" not in rule:
        return True
    for port in rule["ports"]:
        if "port" not in port or port["port"] == name:
            return True
        if isinstance(port["port"], int) and port["port"] <= number <= port.get("endPort", port["port"]):
            return True
    return False


def test_network_policy_shows_metrics_only_to_prometheus(overlay):
    policy = one(overlay, "NetworkPolicy")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    rules = policy.get("ingress", [])
    for name, number in CONTAINER_PORTS.items():
        assert any(covers(rule, name, number) for rule in rules), f"no rule admits port {name}"
    for rule in rules:
        if covers(rule, "metrics", CONTAINER_PORTS["metrics"]):
            assert rule.get("from"), f"metrics open to every source: {rule}"
            assert all(peer == PROMETHEUS_PEER for peer in rule["from"]), f"metrics open beyond Prometheus: {rule}"
    # Nothing in the pod calls out (nginx reaches TorchServe over loopback): no egress, DNS included.
    assert policy.get("egress", []) == []


def test_prometheus_scrapes_the_metrics_port(overlay):
    annotations = one(overlay, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port_names(serve(overlay))["metrics"])
    assert annotations["prometheus.io/path"] == "/metrics"


# ---------------------------------------------------------------- scaling and disruptions


def go_expand(template: str, match: re.Match) -> str:
    """Go's regexp.ExpandString, which prometheus-adapter applies to `name.as`: $1, ${1}, $name, ${name}; as in Go,
    $1x means ${1x}, and a group that does not exist expands to nothing."""
    def group(reference: re.Match) -> str:
        name = reference[1] or reference[2]
        try:
            return match.group(int(name) if name.isdigit() else name) or ""
        except IndexError:
            return ""

    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", group, template)


def adapter_rules() -> list[dict]:
    config = yaml.safe_load(ADAPTER_CONFIG.read_text())
    assert set(config) <= {"rules", "resourceRules", "externalRules"}, f"unknown keys: {set(config)}"
    known = {"seriesQuery", "seriesFilters", "resources", "name", "metricsQuery", "labelValueReplacements"}
    for rule in config["rules"]:
        assert set(rule) <= known, f"unknown keys in a rule: {set(rule) - known}"
    return config["rules"]


def metric_names(rule: dict) -> set[str]:
    """The custom-metrics API names a rule exposes for the series its seriesQuery selects."""
    series = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", rule["seriesQuery"])
    assert series, f"seriesQuery does not start with a metric name: {rule['seriesQuery']}"
    pattern = rule.get("name", {}).get("matches") or ".*"
    match = re.search(pattern, series[1])
    assert match, f"name.matches {pattern!r} does not match {series[1]}: the rule exposes nothing"
    groups = len(match.groups())
    default = "$0" if groups == 0 else "$1"
    return {go_expand(rule.get("name", {}).get("as") or default, match)}


def test_hpa_scales_on_the_adapters_metric(overlay):
    hpa = one(overlay, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    target = spec["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "digits")
    assert 2 <= spec["minReplicas"] <= spec["maxReplicas"]
    exposed = set().union(*(metric_names(rule) for rule in adapter_rules()))
    for metric in spec["metrics"]:
        assert metric["type"] == "Pods", metric
        assert metric["pods"]["metric"]["name"] in exposed, f"the adapter config exposes {exposed}, not {metric}"
    # Scale-down waits for demand to stay low: a pod removed in a lull costs a model load when load returns.
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60


def test_adapter_rule_computes_the_queue_latency_per_pod(render):
    (rule,) = [rule for rule in adapter_rules() if METRIC in metric_names(rule)]  # rules must not overlap
    assert rule["seriesQuery"].startswith("ts_queue_latency_microseconds{")
    assert 'namespace!=""' in rule["seriesQuery"] and 'pod!=""' in rule["seriesQuery"]
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    query = rule["metricsQuery"]
    assert set(re.findall(r"<<\s*\.(\w+)\s*>>", query)) <= {"Series", "LabelMatchers", "GroupBy"}
    # Both counters are read for the pods asked about only, and both sums are per pod, so the division pairs
    # each pod's latency with its own request count.
    assert "<<.Series>>{<<.LabelMatchers>>}" in query
    assert "ts_inference_requests_total{<<.LabelMatchers>>}" in query
    assert query.count("sum by (<<.GroupBy>>)") == query.count("sum") == 2
    assert "clamp_min(" in query and query.rstrip().endswith("/ 1000"), "microseconds per request -> ms"
    depth = 0
    for char in query:
        depth += {"(": 1, ")": -1}.get(char, 0)
        assert depth >= 0, f"unbalanced parentheses: {query}"
    assert depth == 0, f"unbalanced parentheses: {query}"
    # The kustomization ships this very file as the adapter's ConfigMap.
    config_map = one(render("prometheus-adapter"), "ConfigMap")
    assert config_map["data"]["config.yaml"] == ADAPTER_CONFIG.read_text()


def test_disruptions_take_one_pod_at_a_time(overlay):
    pdb = one(overlay, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    budget = pdb["spec"]
    minimum = one(overlay, "HorizontalPodAutoscaler")["spec"]["minReplicas"]
    if "maxUnavailable" in budget:
        assert budget["maxUnavailable"] == 1
    else:
        assert 1 <= budget["minAvailable"] < minimum, "a node drain could never evict a pod"


# ---------------------------------------------------------------- the GPU overlay


def test_gpu_overlay_asks_for_a_gpu_and_tolerates_the_taint(render):
    docs = render("overlays/gpu")
    spec = pod_spec(docs)
    assert quantity(serve(docs)["resources"]["limits"][GPU]) >= 1
    assert any(toleration["key"] == GPU and toleration.get("effect") == "NoSchedule"
               and toleration.get("operator") in ("Exists", "Equal") for toleration in spec.get("tolerations", []))
    assert spec.get("nodeSelector") or spec.get("affinity", {}).get("nodeAffinity"), "no GPU node selection"
    assert "DIGITS_WORKERS" in environment(docs, serve(docs)), "workers per GPU left to the CPU-sized archive"


def test_cpu_overlay_asks_for_no_gpu(render):
    docs = render("overlays/cpu")
    for container in containers(docs):
        assert GPU not in str(container.get("resources", {})), container["name"]
    assert not pod_spec(docs).get("tolerations")


def test_the_readmes_deploy_what_these_tests_render():
    """Every `kubectl apply -k DIR` / `-f FILE` in the READMEs and docs/ names a kustomization (or file) checked here."""
    pages = [ROOT / "README.md", K8S / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    texts = "".join(page.read_text() for page in pages)
    applied = set(re.findall(r"kubectl apply -k (deploy/k8s/\S+)", texts))
    assert applied and {path.removeprefix("deploy/k8s/").rstrip("/") for path in applied} <= set(KUSTOMIZATIONS)
    for path in re.findall(r"kubectl apply -f (deploy/k8s/\S+)", texts):
        assert (ROOT / path).is_file(), path
