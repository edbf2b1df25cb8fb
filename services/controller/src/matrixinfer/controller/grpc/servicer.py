"""Controller gRPC servicer: Scale, GetReplicas and GetLogs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from matrixinfer.api.names import SUBDOMAIN_MAX_LENGTH, is_dns1123_label
from matrixinfer.api.v1 import controller_pb2 as cpb
from matrixinfer.api.v1 import controller_pb2_grpc
from matrixinfer.controller.grpc.logs import stream_log
from matrixinfer.controller.loop import ControllerLoop
from matrixinfer.controller.runtimes.base import Replica
from matrixinfer.core.errors import InvalidArgument, NotFound


def _is_name(value: str) -> bool:
    """A DNS-1123 label's characters, up to a subdomain's length (no dots)."""
    return is_dns1123_label(value, max_length=SUBDOMAIN_MAX_LENGTH)


class ControllerServicer(controller_pb2_grpc.ControllerServicer):
    def __init__(self, loop: ControllerLoop) -> None:
        self.loop = loop

    async def Scale(
        self, request: cpb.ScaleRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ScaleResponse:
        if request.replicas < 0:
            raise InvalidArgument.field("replicas", "must be 0 or more")
        if len(request.reason) > 1024:
            raise InvalidArgument.field("reason", "at most 1024 characters")
        applied = self.loop.scale(
            request.namespace or "default",
            request.model_infer,
            request.replicas,
            request.reason,
        )
        return cpb.ScaleResponse(replicas=applied)

    async def GetReplicas(
        self, request: cpb.GetReplicasRequest, context: grpc.aio.ServicerContext
    ) -> cpb.GetReplicasResponse:
        endpoints, desired = self.loop.replicas(
            request.namespace or "default", request.model_infer
        )
        return cpb.GetReplicasResponse(endpoints=endpoints, desired_replicas=desired)

    async def GetLogs(
        self, request: cpb.GetLogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cpb.LogChunk]:
        namespace = request.namespace or "default"
        for field, value, required in (
            ("namespace", namespace, True),
            ("model_infer", request.model_infer, True),
            ("replica", request.replica, False),
        ):
            if (value or required) and not _is_name(value):
                raise InvalidArgument.field(
                    field,
                    "required" if not value else "must be a DNS-1123 name",
                )
        tail: int | None = None
        if request.HasField("tail_lines"):
            if request.tail_lines < 0:
                raise InvalidArgument.field("tail_lines", "must be 0 or more")
            tail = request.tail_lines
        if self.loop.informer.get("ModelInfer", namespace, request.model_infer) is None:
            raise NotFound(f"ModelInfer {namespace}/{request.model_infer} not found")
        owner = f"{namespace}/{request.model_infer}"
        replicas = sorted(self.loop.runtime.replicas(owner), key=lambda r: r.name)
        if request.replica:
            replicas = [r for r in replicas if r.name == request.replica]
            if not replicas:
                names = ", ".join(
                    sorted(r.name for r in self.loop.runtime.replicas(owner))
                )
                raise NotFound(
                    f"replica {request.replica} is not a replica of ModelInfer "
                    f"{owner}; its replicas: {names or 'none'}"
                )
        if not request.follow:
            for replica in replicas:
                if replica.log_path is None:
                    continue
                async for lines in stream_log(
                    replica.log_path, tail, False, lambda: False
                ):
                    yield cpb.LogChunk(replica=replica.name, lines=lines)
            return
        async for chunk in self._follow(owner, replicas, tail):
            yield chunk

    async def _follow(
        self, owner: str, replicas: list[Replica], tail: int | None
    ) -> AsyncIterator[cpb.LogChunk]:
        """Every replica's log at once, merged as lines arrive, until each replica
        is gone (or the caller cancels)."""
        queue: asyncio.Queue[cpb.LogChunk | None] = asyncio.Queue(maxsize=64)

        def alive(name: str) -> bool:
            return any(r.name == name for r in self.loop.runtime.replicas(owner))

        async def pump(replica: Replica) -> None:
            try:
                if replica.log_path is not None:
                    async for lines in stream_log(
                        replica.log_path, tail, True, lambda: alive(replica.name)
                    ):
                        await queue.put(cpb.LogChunk(replica=replica.name, lines=lines))
            finally:  # not when cancelled: then nobody reads the queue any more
                if not asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    await queue.put(None)

        tasks = [asyncio.create_task(pump(r)) for r in replicas]
        try:
            running = len(tasks)
            while running:
                chunk = await queue.get()
                if chunk is None:
                    running -= 1
                else:
                    yield chunk
            for task in tasks:
                await task  # a failed reader fails the call
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
