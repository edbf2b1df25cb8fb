"""The Triton replicas, as the proxy reaches them: one persistent gRPC channel per
replica address, closed when the replica leaves the routing table. With ``tls``,
each channel speaks mutual TLS with the gateway's certificate and requires the
replicas' identity (``replica.matrixinfer.internal``) in theirs; the channel
follows the certificate files as they rotate (core's TlsChannel)."""

from __future__ import annotations

from typing import Any

import grpc

from matrixinfer.core.grpc.tls import ClientTls, mtls_channel

# Seconds calls on a retired replica's channel may still take (the controller's
# drain and stop grace together are well below it).
RETIRE_GRACE_S = 60.0


class Upstreams:
    """One persistent channel per replica address."""

    def __init__(self, max_message_bytes: int, tls: ClientTls | None = None) -> None:
        self._tls = tls
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._unary: dict[tuple[str, str], Any] = {}
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
        ]

    def channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = self._open(address)
        return channel

    def _open(self, address: str) -> grpc.aio.Channel:
        if self._tls is None:
            return grpc.aio.insecure_channel(address, options=self._options)
        return mtls_channel(address, self._tls, self._options)

    def unary(self, address: str, path: str) -> Any:
        """The raw-bytes call object for one method on one replica, made once: the
        request path only looks it up."""
        call = self._unary.get((address, path))
        if call is None:
            call = self._unary[(address, path)] = self.channel(address).unary_unary(
                path
            )
        return call

    async def retire(self, live: set[str]) -> None:
        """Close the channels of replicas that are gone. New calls no longer pick
        them; calls still running get the grace to finish (a long inference on a
        draining replica must not be cut off)."""
        for address in [a for a in self._channels if a not in live]:
            for key in [k for k in self._unary if k[0] == address]:
                self._unary.pop(key, None)
            channel = self._channels.pop(address, None)
            if channel is not None:
                await channel.close(grace=RETIRE_GRACE_S)

    async def close(self) -> None:
        channels = list(self._channels.values())
        self._channels.clear()
        self._unary.clear()
        for channel in channels:
            await channel.close()
