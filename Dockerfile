# syntax=docker/dockerfile:1
#
# segment-worker image: `docker build -t segment-worker .`
#
# Stage 1 builds wheels for the project and every dependency; stage 2 installs them, from those
# wheels only (no index, no compiler), into a slim runtime that runs as a non-root user with a
# fixed uid, so Kubernetes' runAsNonRoot can verify it and volume permissions are predictable.
# The root filesystem may be read-only: the worker writes only to /tmp (Faust's data dir).

# Both stages use the same base, pinned by tag (Python 3.11, Debian 12 slim).
FROM python:3.11.13-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A C compiler for the compiled core; it stays in this stage. Not pinned: Debian's point
# versions change with every security update, and nothing of this stage ships.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --no-install-recommends -y gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the wheel needs (see .dockerignore): the metadata and the package with its data
# files (rules defaults, Redis Functions library, sample history).
COPY pyproject.toml setup.py README.md ./
COPY worker ./worker
# The project's wheel with its pure core compiled by mypyc (setup.py: about 20% more events/s
# per process), then wheels for all of its dependencies, resolved once, here.
RUN pip install setuptools==84.2.1 wheel==0.48.0 mypy==2.4.1 orjson==3.13.0 msgspec==0.23.0 \
        pyyaml==6.0.4 types-pyyaml==6.0.12.20261122 \
    && SW_BUILD_MYPYC=1 pip wheel --no-build-isolation --no-deps --wheel-dir /project . \
    && pip wheel --wheel-dir /wheels /project/segment_worker-*.whl

FROM python:3.11.13-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="segment-worker" \
      org.opencontainers.image.description="Real-time customer segmentation worker: Kafka in, Redis state, segment-change events out" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SEGMENT_WORKER_HTTP_HOST=0.0.0.0 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels are bind-mounted from the build stage, so none of them stays in a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/segment_worker-*.whl \
    && groupadd --system --gid 10001 segment-worker \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin segment-worker
WORKDIR /tmp
USER 10001:10001
# /metrics, /healthz, /readyz, /customers/{id} (SEGMENT_WORKER_HTTP_PORT), on every interface
# of the container (SEGMENT_WORKER_HTTP_HOST above; outside a container the default is 127.0.0.1)
EXPOSE 8080
# Liveness only (/readyz is 503 while Kafka or Redis is down, which a restart would not fix).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SEGMENT_WORKER_HTTP_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["segment-worker"]
CMD ["run"]
