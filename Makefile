# The digits TorchServe bundle. `make demo` does everything once; `make test` proves it.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3.11

.PHONY: help venv kserve-client triton-client perf-analyzer train package package-latency package-v2 serve stop status predict demo web nginx wrk bench gpu-check docker image image-cpu docker-clean check test soak rolling clean

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt requirements-serve.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

venv: $(VENV)/.installed  ## create .venv and install requirements.txt (it includes requirements-serve.txt)

# What training reads and what scripts/package.sh ships: an edit to any of them makes the weights or the archive
# stale, and the next `make package` (serve, web, image, demo) rebuilds them (tests/test_makefile.py checks it).
TRAIN_SOURCES := train.py data.py $(wildcard model/*.py)
ARCHIVE_SOURCES := scripts/package.sh $(wildcard handler/*.py) handler/model-config.yaml $(wildcard model/*.py)

artifacts/digit_cnn.pt: $(VENV)/.installed $(TRAIN_SOURCES)
	$(PY) train.py

train: $(VENV)/.installed  ## train on 5,000 real MNIST digits (bundled, offline) -> artifacts/
	$(PY) train.py

model_store/digits.mar: artifacts/digit_cnn.pt $(ARCHIVE_SOURCES)
	PATH=$(VENV)/bin:$$PATH scripts/package.sh

package: model_store/digits.mar  ## package artifacts/ -> model_store/digits.mar

model_store/digits-latency.mar: artifacts/digit_cnn.pt $(ARCHIVE_SOURCES)
	PATH=$(VENV)/bin:$$PATH scripts/package.sh --latency

package-latency: model_store/digits-latency.mar  ## the model for lone requests: model_store/digits-latency.mar (batch 1, 1 worker)

artifacts/v2/digit_cnn.pt: $(VENV)/.installed $(TRAIN_SOURCES)
	$(PY) train.py --seed 2 --output-dir artifacts/v2

model_store/digits_v2.mar: artifacts/v2/digit_cnn.pt $(ARCHIVE_SOURCES)
	PATH=$(VENV)/bin:$$PATH scripts/package.sh --version 2.0 --artifacts artifacts/v2 --archive-name digits_v2

package-v2: model_store/digits_v2.mar  ## train with seed 2 -> model_store/digits_v2.mar (model digits, version 2.0)

serve: package  ## start TorchServe (token auth on) and wait until the model answers
	scripts/serve.sh start

stop:  ## stop TorchServe and its workers
	scripts/serve.sh stop

status:  ## is TorchServe running, and where
	scripts/serve.sh status

predict:  ## classify the sample digits over REST (TorchServe must be running)
	$(PY) -m scripts.predict artifacts/samples/*.png

demo: package  ## venv, train, package, serve, predict sample digits, stop
	scripts/serve.sh start
	$(PY) -m scripts.predict artifacts/samples/*.png; status=$$?; scripts/serve.sh stop; exit $$status

# Debian's packages (nginx, wrk, docker.io) are installed when missing, as root or with sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# The web page (web/) on this machine: TorchServe behind the gateway, on loopback only, asking for no credential
# (the gateway refuses that mode on any other address). Ports apart from `make serve`'s and the image's.
WEB_PORT ?= 8090
WEB_GRPC_PORT ?= 7090
WEB_METRICS_PORT ?= 8092
WEB_INTERNAL_PORT ?= 18090
WEB_STATE ?= /tmp/digits-web
web: package nginx  ## the web page: TorchServe + gateway on 127.0.0.1, prints the URL; Ctrl-C stops both
	@echo "make web: starting TorchServe and the gateway on 127.0.0.1 (no credential: this machine only); Ctrl-C stops them"
	@$(PY) -m gateway --no-client-credential --address 127.0.0.1 --metrics-address 127.0.0.1 \
	  --port $(WEB_PORT) --grpc-port $(WEB_GRPC_PORT) --metrics-port $(WEB_METRICS_PORT) \
	  --internal-port-base $(WEB_INTERNAL_PORT) --state-dir $(WEB_STATE) --drain-seconds 0; \
	  status=$$?; [ $$status = 0 ] || [ $$status = 130 ]

# nginx with its Lua module (Debian's packages): the gateway of `make web`; installed when missing.
NGINX_PACKAGES := nginx libnginx-mod-http-lua
nginx:  ## install nginx and its Lua module (apt-get) if they are missing
	@test -x /usr/sbin/nginx -a -f /usr/lib/nginx/modules/ngx_http_lua_module.so || { echo "installing $(NGINX_PACKAGES) (apt-get)"; \
	  $(SUDO) apt-get install -y -q $(NGINX_PACKAGES) >/dev/null 2>&1 || { $(SUDO) apt-get update -q >/dev/null && \
	  $(SUDO) apt-get install -y -q $(NGINX_PACKAGES) >/dev/null; }; }
	@test -x /usr/sbin/nginx -a -f /usr/lib/nginx/modules/ngx_http_lua_module.so

# wrk drives the benchmark's load (Debian's package).
wrk:  ## install the load generator wrk (apt-get) if it is missing
	@command -v wrk >/dev/null || { echo "installing wrk (apt-get install wrk)"; \
	  $(SUDO) apt-get install -y -q wrk >/dev/null 2>&1 || { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q wrk >/dev/null; }; }
	@command -v wrk >/dev/null

bench: package package-latency wrk perf-analyzer  ## benchmark TorchServe (wrk, the raw ceiling; perf_analyzer over v2) -> artifacts/bench/
	$(PY) -m benchmarks --profile
	$(PY) -m benchmarks.triton

gpu-check: $(VENV)/.installed  ## prove the workers run on CUDA (exits 0 with a note where there is no GPU)
	scripts/gpu_check.sh

# The container image. Its version tag is the one deploy/k8s pins (a test keeps the two equal).
IMAGE := digits-serve
IMAGE_VERSION := 1.0.0
docker:  ## make sure Docker answers: install docker.io and start a daemon (no bridge network) if none runs
	@command -v dockerd >/dev/null && command -v debootstrap >/dev/null || { echo "installing docker.io debootstrap (apt-get)"; \
	  $(SUDO) apt-get install -y -q docker.io debootstrap >/dev/null 2>&1 || { $(SUDO) apt-get update -q >/dev/null && \
	  $(SUDO) apt-get install -y -q docker.io debootstrap >/dev/null; }; }
	@docker info >/dev/null 2>&1 || { mkdir -p logs; echo "starting dockerd (log: logs/dockerd.log; stop it with: $(SUDO) kill \$$(cat /var/run/docker.pid))"; \
	  $(SUDO) sh -c 'nohup dockerd --bridge=none --iptables=false --ip-masq=false >logs/dockerd.log 2>&1 &'; \
	  for i in $$(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done; docker info >/dev/null; }

image: package docker  ## build the image digits-serve:1.0.0 (and :latest) around model_store/digits.mar
	deploy/docker/build.sh --archive model_store/digits.mar --tag $(IMAGE):$(IMAGE_VERSION) --tag $(IMAGE):latest

# PyTorch's CPU wheels instead of the CUDA build: no CUDA libraries in the image. The index is not reachable from
# the machines this was written on, so this variant has not been built there (docs/container.md).
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
image-cpu: package docker  ## build digits-serve:1.0.0-cpu with PyTorch's CPU wheels (needs download.pytorch.org)
	deploy/docker/build.sh --archive model_store/digits.mar --torch-index $(TORCH_CPU_INDEX) --tag $(IMAGE):$(IMAGE_VERSION)-cpu

# Every layer the Dockerfile builds carries this label, and so does the base image build.sh makes offline: the
# tests keep them as the build cache for the next run (each is gigabytes).
IMAGE_LABEL := io.digits-serve.project=digits-serve
docker-clean:  ## remove this project's images and build cache from Docker (make test keeps the cache)
	@for pass in 1 2 3 4 5 6; do ids="$$(docker image ls -a -q --filter label=$(IMAGE_LABEL) | sort -u)"; \
	  [ -n "$$ids" ] || break; docker rmi -f $$ids >/dev/null 2>&1 || true; done; \
	  left="$$(docker image ls -a -q --filter label=$(IMAGE_LABEL))"; \
	  [ -z "$$left" ] || { echo "docker-clean: still there (in use by a container?): $$left" >&2; exit 1; }

# KServe's Python SDK, the third-party client of the Open Inference Protocol tests: its own venv (it pins protobuf
# and grpcio below the bundle's).
# A client's own venv from its requirements file: $(call client_venv,VENV,REQUIREMENTS).
define client_venv
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet -r $(2)
	touch $(1)/.installed
endef

KSERVE_VENV := .venv-kserve
$(KSERVE_VENV)/.installed: tests/support/kserve-requirements.txt
	$(call client_venv,$(KSERVE_VENV),$<)

kserve-client: $(KSERVE_VENV)/.installed  ## KServe's Python SDK in .venv-kserve (for the Open Inference Protocol tests)

# NVIDIA's tritonclient (HTTP) and perf_analyzer, the Open Inference Protocol's most used client and load generator:
# their own venv (tritonclient's gevent stack has no place in .venv).
TRITON_VENV := .venv-triton
$(TRITON_VENV)/.installed: tests/support/triton-requirements.txt
	$(call client_venv,$(TRITON_VENV),$<)

triton-client: $(TRITON_VENV)/.installed  ## tritonclient's HTTP client in .venv-triton (for the Open Inference Protocol tests)

$(TRITON_VENV)/bin/perf_analyzer: $(TRITON_VENV)/.installed benchmarks/install-perf-analyzer.sh
	benchmarks/install-perf-analyzer.sh $(TRITON_VENV)

perf-analyzer: $(TRITON_VENV)/bin/perf_analyzer  ## perf_analyzer in .venv-triton (benchmarks/install-perf-analyzer.sh)

# Two tiers (docs/testing.md). `make check`, the inner loop (about 2 minutes once .venv exists): the unit tests and
# one real TorchServe (REST, gRPC, every bad input). `make test`, what CI runs: everything (Docker, nginx,
# Chromium, Prometheus, the benchmark's smoke run; about 10 minutes of tests with Docker's build cache warm).
CHECK_TESTS := tests/model tests/handler tests/test_train.py tests/test_data.py tests/test_layout.py \
	tests/test_makefile.py tests/test_docs.py tests/serving tests/scripts tests/benchmarks tests/gateway tests/deploy \
	tests/web/test_files.py tests/integration/test_server.py tests/integration/test_grpc.py
check: $(VENV)/.installed  ## the inner loop: unit tests and one real TorchServe (REST, gRPC, bad input)
	$(PY) -m pytest $(CHECK_TESTS)

test:  ## everything (what CI runs): unit tests, then integration tests against real servers
	@$(MAKE) --no-print-directory -j3 $(VENV)/.installed $(KSERVE_VENV)/.installed $(TRITON_VENV)/bin/perf_analyzer wrk  # the venvs side by side
	$(PY) -m pytest

SOAK_MINUTES ?= 10
soak: $(VENV)/.installed  ## faults under mixed load for SOAK_MINUTES (10): worker kills, credential moves, key rotations (root: iptables)
	SOAK_MINUTES=$(SOAK_MINUTES) $(PY) -m pytest -s tests/integration/test_faults.py

rolling: $(VENV)/.installed  ## two replicas behind nginx restarted one by one under load (3 balancer settings, v1 -> v2); prints the counts
	ROLLING_FULL=1 $(PY) -m pytest -s tests/integration/test_rolling_restart.py

clean:  ## remove trained artifacts, archives and logs (keeps .venv)
	rm -rf artifacts model_store logs key_file.json
