"""gRPC for every service: servers, channels, interceptors, and the one mapping
from our errors to gRPC statuses, each in its own module.

Named ``grpc`` to match the per-service ``grpc/`` layer; inside it ``import grpc``
still means grpcio (absolute imports). Nothing is imported here: a client that needs
only :mod:`matrixinfer.core.grpc.errors` (the CLI) must not load the server and
channel modules, with their settings, tracing and interceptors.
"""
