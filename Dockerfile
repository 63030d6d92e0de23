# The digits bundle as one image: TorchServe (token auth on, 127.0.0.1 only) behind an nginx gateway, under tini.
#
#   make image                                     # packages the model first, then builds digits-serve:<version>
#   docker build -t digits-serve .                 # the same, by hand, once model_store/digits.mar exists
#
# The model is the archive `make package` built and the tests passed (model_store/digits.mar, with its weights'
# SHA-256 inside), copied in, not trained again here: the image serves exactly what was tested, and a build
# takes no minute of training. torch in requirements.txt is the CUDA build: the same image runs CPU workers, and
# GPU workers under `docker run --gpus all`.

# ---- build: a virtual environment with requirements.txt (pip and its caches stay in this stage)
FROM debian:bookworm-slim AS build
# Every layer of this project's builds carries the label (its build cache too): `make docker-clean` finds them by it.
LABEL io.digits-serve.project="digits-serve"
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# Where a machine needs another package index (a mirror, a local wheel folder), pass it at build time;
# nothing of it stays in the image.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_CERT
COPY requirements.txt /tmp/requirements.txt
RUN python3.11 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements.txt

# ---- runtime: Python, Java 17 for TorchServe's frontend, nginx with its Lua module, tini; no compilers, no pip.
# Everything slow to build is here, nothing of the bundle's own: `build.sh --target runtime` prepares it early.
FROM debian:bookworm-slim AS runtime
LABEL io.digits-serve.project="digits-serve"
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3.11 openjdk-17-jre-headless nginx libnginx-mod-http-lua tini ca-certificates \
    && rm -rf /var/lib/apt/lists/* /var/log/nginx /var/lib/nginx \
    && groupadd --gid 10001 digits \
    && useradd --uid 10001 --gid digits --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin digits
COPY --from=build /opt/venv /opt/venv

# ---- the bundle: its code and the archive the tests passed, on top of the runtime
FROM runtime
WORKDIR /opt/digits
COPY config.properties metrics.yaml log4j2.xml train.py ./
COPY model/ model/
COPY handler/ handler/
COPY serving/ serving/
COPY scripts/ scripts/
COPY gateway/ gateway/
COPY web/ web/
COPY model_store/digits.mar model_store/digits.mar

# Everything the processes write goes under /tmp (STATE_DIR): the root filesystem can be mounted read-only.
ENV PATH=/opt/venv/bin:$PATH \
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
