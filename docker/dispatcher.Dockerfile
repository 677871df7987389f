# syntax=docker/dockerfile:1.7
# Image for the gRPC dispatcher (slice-level scheduling, offloading).
# Build from the repository root:  docker build -f docker/dispatcher.Dockerfile -t ghcr.io/llmfleet/dispatcher:0.1.0 .
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir "grpcio-tools>=1.62" build
COPY pyproject.toml README.md ./
COPY protos/ protos/
COPY llmfleet/ llmfleet/
# The gRPC stubs are generated, not committed (scripts/setup.sh does the same locally).
RUN if ls protos/llmfleet/v1/*.proto >/dev/null 2>&1; then \
      python -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=. protos/llmfleet/v1/*.proto \
      && touch llmfleet/v1/__init__.py; fi \
 && python -m build --wheel --outdir /wheels .

FROM python:${PYTHON_VERSION}-slim
LABEL org.opencontainers.image.title="llmfleet-dispatcher" \
      org.opencontainers.image.description="llmfleet: the gRPC dispatcher (slice-level scheduling, offloading)" \
      org.opencontainers.image.source="https://github.com/llmfleet/llmfleet" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 llmfleet && useradd --system --uid 65532 --gid 65532 --home /nonexistent llmfleet
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels
USER 65532:65532
EXPOSE 50051 9090
ENTRYPOINT ["/usr/bin/tini", "--", "llmfleet"]
CMD ["dispatcher", "--help"]
