# The digits bundle as one image: TorchServe (token auth on, 127.0.0.1 only) behind an nginx gateway, under tini.
#
#   make image                                     # packages the model first, then builds digits-serve:<version>
#   docker build -t digits-serve .                 # the same, by hand, once model_store/digits.mar exists
#   make image-cpu                                 # PyTorch's CPU wheels, no CUDA libraries (docs/container.md)
#
# The model is the archive `make package` built and the tests passed (model_store/digits.mar, with its weights'
# SHA-256 inside), copied in, not trained again here: the image serves exactly what was tested, and a build
# takes no minute of training. The image carries serving only: requirements-serve.txt, not requirements.txt's
# training and test tools. torch there is the CUDA build: the same image runs CPU workers, and GPU workers under
# `docker run --gpus all`. Its size, layer by layer, and what its cold start costs: docs/container.md.

# ---- build: the serving virtual environment, and a Java runtime of only what TorchServe's frontend uses.
# pip, its caches, the JDK and binutils (jlink strips the runtime's native libraries with objcopy) stay in this stage.
FROM debian:bookworm-slim AS build
# Every layer of this project's builds carries the label (its build cache too): `make docker-clean` finds them by it.
LABEL io.digits-serve.project="digits-serve"
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates openjdk-17-jdk-headless \
        binutils \
    && rm -rf /var/lib/apt/lists/*
# Where a machine needs another package index (a mirror, a local wheel folder), pass it at build time;
# nothing of it stays in the image.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_CERT
# Where torch and torchvision come from, and nothing else: empty (the default) takes requirements-serve.txt's pins
# from the usual index (the CUDA build); https://download.pytorch.org/whl/cpu takes PyTorch's CPU wheels of the same
# versions (2.14.1+cpu satisfies ==2.14.1), and the CUDA libraries never come (make image-cpu).
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements-serve.txt /tmp/requirements-serve.txt
# What serving never uses goes:
# - triton (897 MB): torch declares it for torch.compile, which serving never runs;
# - torch/include and static libraries (*.a): for compiling and linking against torch, and the image has no compiler;
# - NVRTC's "alt" build (109 MB) and cuSOLVER's multi-GPU library (100 MB): no library or Python file in the
#   environment names them (the grep below fails the build the day one does), so nothing loads them. Only their
#   headers, pip's file lists and cuda-python's catalogue of every CUDA library (descriptor_catalog.py, for code that
#   asks for one by name) do;
# - pip: nothing installs at run time.
# The CUDA libraries (nvidia/) and torch are then moved aside, each to a layer of its own below.
RUN python3.11 -m venv /opt/venv \
    && if [ -n "$TORCH_INDEX_URL" ]; then \
         env -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL /opt/venv/bin/pip install --no-deps --index-url "$TORCH_INDEX_URL" \
           $(grep -E '^(torch|torchvision)==' /tmp/requirements-serve.txt); \
       fi \
    && /opt/venv/bin/pip install -r /tmp/requirements-serve.txt \
    && /opt/venv/bin/pip uninstall --yes triton \
    && /opt/venv/bin/pip uninstall --yes pip \
    && site=/opt/venv/lib/python3.11/site-packages \
    && rm -rf "$site/torch/include" \
    && find /opt/venv \( -name '*.a' -o -name 'libnvrtc.alt.so*' -o -name 'libnvrtc-builtins.alt.so*' \
        -o -name 'libcusolverMg.so*' \) -delete \
    && named="$(grep -rlaF -e nvrtc.alt -e nvrtc-builtins.alt -e cusolverMg --exclude='descriptor_catalog*' \
        --exclude=RECORD --exclude='*.h' /opt/venv || true)" \
    && { [ -z "$named" ] || { echo "removed CUDA libraries are named by: $named" >&2; exit 1; }; } \
    && for part in nvidia torch; do \
         mkdir -p "/opt/layers/$part$site" && if [ -d "$site/$part" ]; then mv "$site/$part" "/opt/layers/$part$site/"; fi; \
       done
# TorchServe's frontend is one jar with its libraries inside. jdeps lists the JDK modules its classes use (the
# libraries' module-info files removed first: they name test-only modules jdeps would look for), and jlink makes a
# runtime of those alone, with a class-data-sharing archive for the JVM's start: 72 MB instead of the JRE's 184.
RUN mkdir /tmp/frontend && cd /tmp/frontend \
    && python3.11 -m zipfile -e /opt/venv/lib/python3.11/site-packages/ts/frontend/model-server.jar . \
    && find . -name module-info.class -delete && rm -rf META-INF/versions \
    && modules="$(jdeps --ignore-missing-deps --print-module-deps .)" \
    && echo "TorchServe's frontend uses $modules" \
    && jlink --add-modules "$modules" --strip-debug --no-man-pages --no-header-files --compress=2 \
        --generate-cds-archive --output /opt/java \
    && cd / && rm -rf /tmp/frontend

# ---- runtime: Python, the Java runtime, nginx with its Lua module, tini; no compilers, no pip.
# Everything slow to build is here, nothing of the bundle's own: `build.sh --target runtime` prepares it early.
FROM debian:bookworm-slim AS runtime
LABEL io.digits-serve.project="digits-serve"
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 nginx libnginx-mod-http-lua tini ca-certificates \
    && rm -rf /var/lib/apt/lists/* /var/log/nginx /var/lib/nginx \
    && groupadd --gid 10001 digits \
    && useradd --uid 10001 --gid digits --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin digits
COPY --from=build /opt/java /opt/java
# The virtual environment in three layers, largest and least often changed first: a registry pulls layers in
# parallel, and a node that has the CUDA libraries of an earlier version pulls only what changed.
COPY --from=build /opt/layers/nvidia/ /
COPY --from=build /opt/layers/torch/ /
COPY --from=build /opt/venv /opt/venv

# ---- the bundle: its code and the archive the tests passed, on top of the runtime
FROM runtime
WORKDIR /opt/digits
COPY config.properties metrics.yaml log4j2.xml ./
COPY model/ model/
COPY handler/ handler/
COPY serving/ serving/
COPY scripts/ scripts/
COPY gateway/ gateway/
COPY web/ web/
COPY model_store/digits.mar model_store/digits.mar
# Held-out digits of the training run that made the archive: scripts/gpu_check.sh sends them (docs/container.md).
COPY artifacts/samples/ samples/

# Everything the processes write goes under /tmp (STATE_DIR): the root filesystem can be mounted read-only.
ENV PATH=/opt/venv/bin:/opt/java/bin:$PATH \
    JAVA_HOME=/opt/java \
    PYTHONDONTWRITEBYTECODE=1 \
    STATE_DIR=/tmp/digits \
    MODEL_STORE=/opt/digits/model_store \
    HOME=/tmp
USER 10001:10001
# 8080: REST inference, health and the web page (web/, at /); 7070: gRPC inference; 8082: metrics. TorchServe
# itself is not exposed. Clients need the gateway's credential (the page has a field for it).
EXPOSE 8080 7070 8082
STOPSIGNAL SIGTERM
# tini is PID 1: it reaps every process and passes docker stop's SIGTERM to the gateway, which drains. The gateway
# is a package run from WORKDIR (python -m puts the working directory on the path; no PYTHONPATH, which TorchServe's
# workers would inherit: they must import the archive's code only).
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/venv/bin/python", "-m", "gateway"]
