"""gRPC plumbing shared by the services: server bootstrap, client channels, and the
one mapping from our errors to gRPC statuses.

Named ``grpc`` to match the per-service ``grpc/`` layer; inside it ``import grpc``
still means grpcio (absolute imports).
"""

from matrixinfer.core.grpc.channel import create_channel
from matrixinfer.core.grpc.errors import ErrorDetails, error_details, status_code_for
from matrixinfer.core.grpc.interceptors import StandardInterceptor
from matrixinfer.core.grpc.server import RunningServer, serve_forever, start_server

__all__ = [
    "ErrorDetails",
    "RunningServer",
    "StandardInterceptor",
    "create_channel",
    "error_details",
    "serve_forever",
    "start_server",
    "status_code_for",
]
