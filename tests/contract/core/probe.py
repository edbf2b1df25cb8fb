"""The generic raw-bytes service the core contract tests run on real servers.

Using grpc's generic handlers keeps these tests free of the project's generated code.
"""

from __future__ import annotations

from typing import Any

from matrixinfer.core.settings import ServiceSettings

#: Full name of the generic test service.
SERVICE = "matrixinfer.test.v1.Probe"


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


def probe_settings(**overrides: Any) -> ServiceSettings:
    values: dict[str, Any] = {
        "service_name": "core-test",
        "host": "127.0.0.1",
        "grpc_port": 0,
        "grace_period_s": 0.0,
    }
    values.update(overrides)
    return ServiceSettings(**values)


def unary(channel: Any, name: str) -> Any:
    return channel.unary_unary(method(name))


def unary_stream(channel: Any, name: str) -> Any:
    return channel.unary_stream(method(name))


def stream_unary(channel: Any, name: str) -> Any:
    return channel.stream_unary(method(name))


def stream_stream(channel: Any, name: str) -> Any:
    return channel.stream_stream(method(name))
