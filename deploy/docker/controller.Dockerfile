# The controller image: NVIDIA's Triton image (tritonserver with its backends, CUDA;
# runs on CPU-only hosts too) plus matrixinfer-api, -core, -triton and -controller in
# a virtual environment on the image's own Python (3.12 on Ubuntu 24.04).
# Override the release with --build-arg TRITON_VERSION=<yy.mm>.
ARG TRITON_VERSION=25.10
FROM nvcr.io/nvidia/tritonserver:${TRITON_VERSION}-py3 AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY constraints.txt ./
COPY protos ./protos
COPY tools ./tools
COPY libs/api ./libs/api
COPY libs/core ./libs/core
COPY libs/triton ./libs/triton
COPY services/controller ./services/controller
# tools/genproto.py needs grpcio-tools, mypy-protobuf and googleapis-common-protos
# (google/api/*.proto); the generated code ends up in the matrixinfer-api wheel.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt \
      grpcio-tools mypy-protobuf googleapis-common-protos \
 && /opt/venv/bin/python tools/genproto.py \
 && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt \
      ./libs/api ./libs/core ./libs/triton ./services/controller \
 && /opt/venv/bin/pip uninstall -y grpcio-tools mypy-protobuf

FROM nvcr.io/nvidia/tritonserver:${TRITON_VERSION}-py3
# Same base as the build stage, so the venv's python link (/usr/bin/python3) resolves.
COPY --from=build /opt/venv /opt/venv
# State (model repositories, artifact cache, replica logs) and the Prometheus file_sd
# folder, owned by the service user so named volumes mounted there inherit that.
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/matrixinfer matrixinfer \
 && install -d -o 10001 -g 10001 /var/lib/matrixinfer/controller /var/lib/matrixinfer/prometheus-sd
USER 10001
WORKDIR /var/lib/matrixinfer
# Replicas are this image's tritonserver (found through MATRIXINFER_TRITONSERVER,
# not the nvidia-pytriton wheel of `make setup`); they bind 127.0.0.1 inside the
# container, so what talks to them shares this container's network namespace.
ENV PATH=/opt/venv/bin:/opt/tritonserver/bin:$PATH \
    MATRIXINFER_TRITONSERVER=/opt/tritonserver/bin/tritonserver \
    MATRIXINFER_CONTROLLER_HOST=0.0.0.0 \
    MATRIXINFER_CONTROLLER_STATE_DIR=/var/lib/matrixinfer/controller \
    MATRIXINFER_CONTROLLER_PROMETHEUS_SD_FILE=/var/lib/matrixinfer/prometheus-sd/replicas.json
EXPOSE 50052
ENTRYPOINT ["matrixinfer-controller"]
