# The gateway image: matrixinfer-api, -core, -httpapi, -triton and -gateway only.
FROM python:3.11-slim AS build
WORKDIR /src
COPY constraints.txt ./
COPY protos ./protos
COPY tools ./tools
COPY libs/api ./libs/api
COPY libs/core ./libs/core
COPY libs/httpapi ./libs/httpapi
COPY libs/triton ./libs/triton
COPY services/gateway ./services/gateway
# tools/genproto.py needs grpcio-tools, mypy-protobuf and googleapis-common-protos
# (google/api/*.proto); the generated code ends up in the matrixinfer-api wheel.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt \
      grpcio-tools mypy-protobuf googleapis-common-protos \
 && /opt/venv/bin/python tools/genproto.py \
 && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt \
      ./libs/api ./libs/core ./libs/httpapi ./libs/triton ./services/gateway \
 && /opt/venv/bin/pip uninstall -y grpcio-tools mypy-protobuf

FROM python:3.11-slim
COPY --from=build /opt/venv /opt/venv
# Debian's HAProxy 2.6: `haproxy -c` checks every rendered configuration, and the
# image can also run it itself (MATRIXINFER_GATEWAY_DATAPLANE_MODE=supervised).
RUN apt-get update \
 && apt-get install -y --no-install-recommends haproxy \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/matrixinfer matrixinfer
USER 10001
WORKDIR /var/lib/matrixinfer
# KServe v2 on Triton's ports (HAProxy's): 8001 gRPC, 8000 HTTP (also /metrics,
# /healthz, /readyz).
ENV PATH=/opt/venv/bin:$PATH \
    MATRIXINFER_GATEWAY_HOST=0.0.0.0
EXPOSE 8000 8001
ENTRYPOINT ["matrixinfer-gateway"]
