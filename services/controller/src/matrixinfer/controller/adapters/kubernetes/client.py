"""A small Kubernetes API client over aiohttp: the few calls the runtime makes (get,
list, watch, create, merge-patch, delete) on plain JSON dicts, with retries.

Why not kubernetes_asyncio: the runtime needs six REST calls on JSON objects (the
same dicts the tests validate against the OpenAPI schema); the generated model
classes would be converted to and from dicts at every step, and its own
configuration and retry behaviour would sit between us and the semantics we want
(absolute merge patches, Retry-After, 409 on create meaning "adopt").

Errors: 429, 5xx and connection failures are retried with exponential backoff
(Retry-After honoured), as is a 409 on anything but a create; when the attempts run
out the call raises :class:`Unavailable`, so the reconcile is retried later. A 409
on create raises :class:`AlreadyExists`; 404 :class:`NotFound`; 410
:class:`Expired` (a watch that must relist).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pathlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from matrixinfer.core.errors import (
    AlreadyExists,
    Expired,
    FailedPrecondition,
    InvalidArgument,
    MatrixInferError,
    NotFound,
    PermissionDenied,
    Unavailable,
)

log = logging.getLogger(__name__)
JSON = dict[str, Any]
SERVICE_ACCOUNT = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")
_RETRIED = {429, 500, 502, 503, 504}


@dataclass(frozen=True)
class KubeConfig:
    base_url: str
    #: Read at every request: projected service-account tokens are rotated.
    token_file: pathlib.Path | None = None
    ca_file: pathlib.Path | None = None

    @classmethod
    def of(cls, api_url: str) -> KubeConfig:
        """``api_url`` when set; else the in-cluster configuration."""
        if api_url:
            return cls(api_url.rstrip("/"))
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise FailedPrecondition(
                "MATRIXINFER_CONTROLLER_KUBE_API_URL is empty and this is not a pod "
                "(no KUBERNETES_SERVICE_HOST): set the API server's URL"
            )
        if ":" in host:
            host = f"[{host}]"
        return cls(
            f"https://{host}:{port}",
            SERVICE_ACCOUNT / "token",
            SERVICE_ACCOUNT / "ca.crt",
        )


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    base_s: float = 0.2
    max_s: float = 5.0

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        if retry_after is not None:
            try:
                return min(self.max_s, max(0.0, float(retry_after)))
            except ValueError:
                pass
        return min(self.max_s, self.base_s * 2.0**attempt)


def _error(status: int, body: JSON, what: str) -> MatrixInferError:
    message = f"{what}: {body.get('message') or body.get('reason') or status}"
    if status == 404:
        return NotFound(message)
    if status == 409:
        return AlreadyExists(message)
    if status == 410:
        return Expired(message)
    if status in (401, 403):
        return PermissionDenied(message)
    if status in (400, 422):
        return InvalidArgument(message)
    return Unavailable(message)


class KubeClient:
    def __init__(self, config: KubeConfig, retry: RetryPolicy | None = None) -> None:
        self.config = config
        self.retry = retry or RetryPolicy()
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            ssl_context: ssl.SSLContext | None = None
            if self.config.ca_file is not None:
                ssl_context = ssl.create_default_context(
                    cafile=str(self.config.ca_file)
                )
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ssl_context or True),
                timeout=aiohttp.ClientTimeout(total=30),
            )
        return self._session

    def _url(self, path: str) -> str:
        """The base URL may carry a path (an API proxy's prefix)."""
        return f"{self.config.base_url}{path}"

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.config.token_file is not None:
            token = self.config.token_file.read_text().strip()
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: JSON | None = None,
        content_type: str = "application/json",
    ) -> JSON:
        what = f"{method} {path}"
        for attempt in range(self.retry.attempts):
            retry_after: str | None = None
            try:
                async with self._open().request(
                    method,
                    self._url(path),
                    params=params,
                    data=None if body is None else json.dumps(body),
                    headers=self._headers(content_type if body is not None else None),
                ) as response:
                    text = await response.text()
                    try:
                        data = json.loads(text) if text else {}
                    except ValueError:
                        data = {"message": text[:200]}
                    if response.status < 300:
                        return data if isinstance(data, dict) else {}
                    if not isinstance(data, dict):
                        data = {}
                    conflict_retried = response.status == 409 and method != "POST"
                    if response.status not in _RETRIED and not conflict_retried:
                        raise _error(response.status, data, what)
                    retry_after = response.headers.get("Retry-After")
                    log.info(
                        "%s: %d %s; retrying",
                        what,
                        response.status,
                        data.get("message", ""),
                    )
            except (TimeoutError, aiohttp.ClientError) as e:
                log.info("%s: %s; retrying", what, e)
            if attempt + 1 < self.retry.attempts:
                await asyncio.sleep(self.retry.delay(attempt, retry_after))
        raise Unavailable(
            f"{what}: the Kubernetes API kept failing ({self.retry.attempts} attempts)"
        )

    async def get(self, path: str) -> JSON:
        return await self.request("GET", path)

    async def list(self, path: str, label_selector: str) -> tuple[list[JSON], str]:
        data = await self.request("GET", path, params={"labelSelector": label_selector})
        items = data.get("items") or []
        version = str((data.get("metadata") or {}).get("resourceVersion", ""))
        return [i for i in items if isinstance(i, dict)], version

    async def create(self, path: str, body: JSON) -> JSON:
        return await self.request("POST", path, body=body)

    async def merge_patch(self, path: str, patch: JSON) -> JSON:
        return await self.request(
            "PATCH", path, body=patch, content_type="application/merge-patch+json"
        )

    async def delete(self, path: str) -> None:
        """Deletes with background propagation (the garbage collector removes what
        the object owns); an object already gone is fine."""
        try:
            await self.request(
                "DELETE",
                path,
                body={
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "propagationPolicy": "Background",
                },
            )
        except NotFound:
            pass

    async def watch(
        self, path: str, label_selector: str, resource_version: str
    ) -> AsyncIterator[JSON]:
        """The events after ``resource_version`` until the server ends the stream
        (then the caller relists and watches again)."""
        params = {
            "watch": "true",
            "labelSelector": label_selector,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "300",
        }
        if resource_version:
            params["resourceVersion"] = resource_version
        async with self._open().get(
            self._url(path),
            params=params,
            headers=self._headers(),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=330),
        ) as response:
            if response.status != 200:
                text = await response.text()
                try:
                    data = json.loads(text)
                except ValueError:
                    data = {}
                raise _error(response.status, data, f"watch {path}")
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        event = json.loads(line)
                        if isinstance(event, dict):
                            yield event
