"""The registry's admin API over REST, transcoded from its ``google.api.http``
annotations.

Nothing here lists the RPCs: :func:`matrixinfer.httpapi.transcoding.bindings` reads
each method's ``HttpRule`` from the descriptors, so an RPC that gains an annotation is
served (and documented in ``/openapi.json``) without a change here. The rules are
google/api/http.proto's (the transcoding is :mod:`matrixinfer.httpapi`'s):

- a path variable ``{field}`` (or ``{a.b=literal/*}``) sets that request field;
- ``body: "*"`` maps the whole JSON body onto the request message (fields the path
  sets must not be in it); ``body: "field"`` maps the body onto that one field;
- every other request field may come as a query parameter, by its JSON or proto name
  (``?labelSelector=app%3Diris&limit=10``, ``?resource.kind=Model``; a repeated field
  by repeating the parameter); unknown parameters are refused with 400;
- the response is the message in protobuf's JSON mapping (lowerCamelCase names,
  64-bit integers as strings), or its ``response_body`` field.

A server-streaming RPC (``Watch``) answers newline-delimited JSON
(``application/x-ndjson``), one message a line, for at most ``timeoutSeconds``
(capped by the gateway's ``admin_watch_max_s``, which is also the default) and then
ends, as Kubernetes' ``?watch=true&timeoutSeconds=`` does; clients watch again from
the last ``resourceVersion``. Headers go out with the first event (or after a second
without one), so a request the registry refuses still gets its proper status; an
error after that is the stream's last line, ``{"error": {...}}``.

Every route needs a credential with the ``admin`` scope unless the gateway's
``auth_mode`` is ``off``. Errors keep the gRPC status's meaning in HTTP (see
:data:`matrixinfer.core.grpc.errors.HTTP_STATUS`) with a JSON body naming each
wrong field.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.descriptor import ServiceDescriptor

from matrixinfer.api.v1 import registry_pb2
from matrixinfer.core.apikeys import API_KEY_PREFIX
from matrixinfer.core.errors import InvalidArgument, MatrixInferError
from matrixinfer.core.grpc.errors import (
    error_details,
    http_status_for,
    status_code_for,
)
from matrixinfer.core.grpc.interceptors import (
    REQUEST_ID_METADATA_KEY,
    request_id_from_metadata,
)
from matrixinfer.gateway.domain.auth import Authenticator, authorize_admin
from matrixinfer.gateway.http.webutil import Handler, request_headers
from matrixinfer.httpapi.jsonbody import parse_json
from matrixinfer.httpapi.transcoding import (
    NDJSON,
    STREAM_TIMEOUT_PARAM,
    Binding,
    bindings,
    message_class,
    render,
    transcode,
)

log = logging.getLogger(__name__)

REGISTRY: ServiceDescriptor = registry_pb2.DESCRIPTOR.services_by_name["Registry"]

# A watch's expired resourceVersion is Kubernetes' 410 Gone: list again, then watch.
_EXPIRED_REASON = "EXPIRED"
# What a caller sees for transport failures; the details (addresses) go to the log.
_GENERIC_MESSAGES: Mapping[grpc.StatusCode, str] = {
    grpc.StatusCode.UNAVAILABLE: "the registry is unavailable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the registry did not answer in time",
}
# Headers of a stream wait this long for its first message (see the module doc).
_STREAM_HEADERS_GRACE_S = 1.0


class HttpError(Exception):
    """A refusal that is HTTP's own (body too large), not a gRPC status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


# ------------------------------------------------------------------ JSON and errors


def http_status(code: grpc.StatusCode, reason: str | None = None) -> int:
    if code == grpc.StatusCode.OUT_OF_RANGE and reason == _EXPIRED_REASON:
        return 410
    return http_status_for(code)


def error_body(
    code: grpc.StatusCode,
    message: str,
    reason: str | None = None,
    violations: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    body: dict[str, Any] = {"error": message, "code": code.name}
    if reason:
        body["reason"] = reason
    if violations:
        body["fieldViolations"] = [
            {"field": f, "description": d} for f, d in violations
        ]
    return body


def _credential(request: web.Request) -> tuple[tuple[str, str], ...]:
    """The caller's API key or JWT, passed on so the registry (when it enforces
    authorization) acts as the caller, with the caller's own scopes, and its
    audit log names them, not the gateway. A JWT reaches a registry that takes
    none as UNAUTHENTICATED saying so (401 here)."""
    key = request.headers.get("x-api-key", "").strip()
    if key:
        return (("x-api-key", key),)
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return ()
    if token.startswith(f"{API_KEY_PREFIX}_"):
        return (("x-api-key", token),)
    return (("authorization", f"Bearer {token}"),)


def _respond(
    status: int,
    body: dict[str, Any],
    request_id: str,
    retry_after_s: float | None = None,
) -> web.Response:
    response = web.json_response(body, status=status)
    response.headers[REQUEST_ID_METADATA_KEY] = request_id
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="matrixinfer"'
    if retry_after_s is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    return response


def rpc_error(error: grpc.aio.AioRpcError) -> tuple[int, dict[str, Any], float | None]:
    """HTTP status, body and Retry-After for a failed registry call."""
    details = error_details(error)
    reason = details.error_info.reason if details.error_info is not None else None
    if details.error_info is None and details.code in _GENERIC_MESSAGES:
        # Not the registry's own refusal but the channel's: keep addresses out.
        log.warning("registry call failed: %s %s", details.code.name, details.message)
        message = _GENERIC_MESSAGES[details.code]
    else:
        message = details.message or details.code.name
    body = error_body(details.code, message, reason, details.field_violations)
    return http_status(details.code, reason), body, details.retry_after_s


def our_error(error: MatrixInferError) -> tuple[int, dict[str, Any]]:
    code = status_code_for(error)
    violations = (
        [(v.field, v.description) for v in error.violations]
        if isinstance(error, InvalidArgument)
        else []
    )
    return http_status(code), error_body(code, error.message, error.reason, violations)


# ------------------------------------------------------------------ the routes


class AdminApi:
    """The annotated RPCs of ``service`` as aiohttp routes, calling ``channel``."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        authenticator: Authenticator | None,
        *,
        auth_required: bool = True,
        timeout_s: float = 10.0,
        max_body_bytes: int = 1024 * 1024,
        watch_max_s: float = 1800.0,
        service: ServiceDescriptor = REGISTRY,
    ) -> None:
        if auth_required and authenticator is None:
            raise ValueError("an authenticator is required when auth is on")
        self.service = service
        self.bindings = bindings(service)
        self.auth_required = auth_required
        self.watch_max_s = watch_max_s
        self._authenticator = authenticator
        self._timeout_s = timeout_s
        self._max_body_bytes = max_body_bytes
        self._stops: set[asyncio.Event] = set()
        self._calls: dict[str, Any] = {}
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            response_type = message_class(method.output_type)
            factory = (
                channel.unary_stream
                if method.server_streaming
                else (channel.unary_unary)
            )
            self._calls[method.name] = factory(
                path,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response_type.FromString,
            )

    def add_routes(self, app: web.Application) -> None:
        """Adds one route per binding; the ones sharing a path share a resource."""
        resources: dict[str, web.Resource] = {}
        for binding in self.bindings:
            resource = resources.get(binding.path.route)
            if resource is None:
                resource = app.router.add_resource(binding.path.route)
                resources[binding.path.route] = resource
            resource.add_route(binding.verb, self._handler(binding))
        app.on_shutdown.append(self._end_streams)

    async def _end_streams(self, app: web.Application) -> None:
        for stop in list(self._stops):
            stop.set()

    def _authorize(self, request: web.Request) -> None:
        if not self.auth_required or self._authenticator is None:
            return
        authorize_admin(self._authenticator.authenticate(request_headers(request)))

    async def _body(self, request: web.Request) -> Any:
        limit = self._max_body_bytes
        too_large = HttpError(
            413, "RESOURCE_EXHAUSTED", f"the request body is over {limit} bytes"
        )
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        raw = bytearray()
        while chunk := await request.content.readany():
            raw += chunk
            if len(raw) > limit:
                raise too_large
        if not raw.strip():
            return None
        return parse_json(bytes(raw))

    def _stream_timeout_s(
        self, request: web.Request
    ) -> tuple[float, list[tuple[str, str]]]:
        query = list(request.query.items())
        given = [v for k, v in query if k == STREAM_TIMEOUT_PARAM]
        rest = [(k, v) for k, v in query if k != STREAM_TIMEOUT_PARAM]
        if not given:
            return self.watch_max_s, rest
        if len(given) > 1:
            raise InvalidArgument.field(STREAM_TIMEOUT_PARAM, "given more than once")
        text = given[0]
        if not re.fullmatch(r"[0-9]{1,12}", text) or int(text) < 1:
            raise InvalidArgument.field(
                STREAM_TIMEOUT_PARAM, "a whole number of seconds, at least 1"
            )
        return min(float(int(text)), self.watch_max_s), rest

    def _handler(self, binding: Binding) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            request_id = request_id_from_metadata(
                [
                    (
                        REQUEST_ID_METADATA_KEY,
                        request.headers.get(REQUEST_ID_METADATA_KEY),
                    )
                ]
            )
            metadata = ((REQUEST_ID_METADATA_KEY, request_id), *_credential(request))
            try:
                self._authorize(request)
                if binding.streaming:
                    timeout_s, query = self._stream_timeout_s(request)
                else:
                    timeout_s, query = self._timeout_s, list(request.query.items())
                message = transcode(
                    binding, request.match_info, query, await self._body(request)
                )
                call = self._calls[binding.rpc]
                if binding.streaming:
                    return await self._stream(
                        request,
                        binding,
                        call(message, timeout=timeout_s, metadata=metadata),
                        request_id,
                    )
                response = await call(message, timeout=timeout_s, metadata=metadata)
                result = web.json_response(render(binding, response))
                result.headers[REQUEST_ID_METADATA_KEY] = request_id
                return result
            except grpc.aio.AioRpcError as e:
                status, body, retry_after_s = rpc_error(e)
                return _respond(status, body, request_id, retry_after_s)
            except MatrixInferError as e:
                status, body = our_error(e)
                log.debug("admin %s refused: %s", binding.rpc, e.message)
                return _respond(status, body, request_id)
            except HttpError as e:
                return _respond(
                    e.status, {"error": e.message, "code": e.code}, request_id
                )

        return handle

    async def _stream(
        self,
        request: web.Request,
        binding: Binding,
        call: Any,
        request_id: str,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": NDJSON, REQUEST_ID_METADATA_KEY: request_id}
        )
        stop = asyncio.Event()
        self._stops.add(stop)
        loop = asyncio.get_running_loop()
        headers_by = loop.time() + _STREAM_HEADERS_GRACE_S
        reading: asyncio.Future[Any] = asyncio.ensure_future(call.read())
        stopping = asyncio.ensure_future(stop.wait())
        started = False
        try:
            while True:
                wait_s = None if started else max(0.0, headers_by - loop.time())
                done, _ = await asyncio.wait(
                    {reading, stopping},
                    timeout=wait_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if stopping in done:
                    break
                if reading not in done:  # nothing yet: the stream has begun anyway
                    await response.prepare(request)
                    started = True
                    continue
                try:
                    item = reading.result()
                except grpc.aio.AioRpcError as e:
                    if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        break  # the stream's own duration is over
                    status, body, retry_after_s = rpc_error(e)
                    if not started:
                        return _respond(status, body, request_id, retry_after_s)
                    await response.write(_line({"error": body}))
                    break
                if item is grpc.aio.EOF:
                    break
                if not started:
                    await response.prepare(request)
                    started = True
                await response.write(_line(render(binding, item)))
                reading = asyncio.ensure_future(call.read())
            if not started:
                await response.prepare(request)
            await response.write_eof()
        except ConnectionResetError:
            log.debug("admin %s: the client went away", binding.rpc)
        finally:
            self._stops.discard(stop)
            for task in (reading, stopping):
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved: nothing to log at collection
                task.cancel()
            call.cancel()
        return response


def _line(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"
