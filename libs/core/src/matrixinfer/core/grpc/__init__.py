"""gRPC plumbing shared by the services: server bootstrap, client channels, and the
one mapping from our errors to gRPC statuses.

Named ``grpc`` to match the per-service ``grpc/`` layer; inside it ``import grpc``
still means grpcio (absolute imports).
"""

from matrixinfer.core.grpc.channel import create_channel
from matrixinfer.core.grpc.errors import (
    ErrorDetails,
    ErrorInterceptor,
    error_details,
    status_code_for,
)
from matrixinfer.core.grpc.interceptors import MetricsInterceptor, RequestIdInterceptor
from matrixinfer.core.grpc.server import RunningServer, serve_forever, start_server

__all__ = [
    "ErrorDetails",
    "ErrorInterceptor",
    "MetricsInterceptor",
    "RequestIdInterceptor",
    "RunningServer",
    "create_channel",
    "error_details",
    "serve_forever",
    "start_server",
    "status_code_for",
]
