# The registry image: matrixinfer-api, -core, -httpapi (its Kubernetes API's OpenAPI
# schemas) and -registry only.
FROM python:3.11-slim AS build
WORKDIR /src
COPY constraints.txt ./
COPY protos ./protos
COPY tools ./tools
COPY libs/api ./libs/api
COPY libs/core ./libs/core
COPY libs/httpapi ./libs/httpapi
COPY services/registry ./services/registry
# tools/genproto.py needs grpcio-tools, mypy-protobuf and googleapis-common-protos
# (google/api/*.proto); the generated code ends up in the matrixinfer-api wheel.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt \
      grpcio-tools mypy-protobuf googleapis-common-protos \
 && /opt/venv/bin/python tools/genproto.py \
 && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt \
      ./libs/api ./libs/core ./libs/httpapi ./services/registry \
 && /opt/venv/bin/pip uninstall -y grpcio-tools mypy-protobuf

FROM python:3.11-slim
COPY --from=build /opt/venv /opt/venv
# A writable working folder, so the embedded SQLite default (./.matrixinfer) works too.
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/matrixinfer matrixinfer
USER 10001
WORKDIR /var/lib/matrixinfer
ENV PATH=/opt/venv/bin:$PATH \
    MATRIXINFER_REGISTRY_HOST=0.0.0.0 \
    MATRIXINFER_REGISTRY_METRICS_PORT=9090
EXPOSE 50051 9090 50053
ENTRYPOINT ["matrixinfer-registry"]
