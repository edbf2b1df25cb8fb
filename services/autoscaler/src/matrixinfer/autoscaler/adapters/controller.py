"""The controller: core's :class:`~matrixinfer.core.controller.ControllerClient`
fits the domain's `Controller` port as it is (a deadline on every call; a peer's
gRPC status becomes a core error, so the domain never sees grpc)."""

from __future__ import annotations

import grpc

from matrixinfer.autoscaler.domain.ports import Controller
from matrixinfer.core.controller import ControllerClient


def controller_client(channel: grpc.aio.Channel, timeout_s: float) -> Controller:
    """The controller behind ``channel``, each call bounded by ``timeout_s``."""
    return ControllerClient(channel, timeout_s)
