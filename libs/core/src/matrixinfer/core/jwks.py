"""Keeps the JWT verification keys current from the identity provider's JWKS URL
(the gateway's and the registry's; :mod:`matrixinfer.core.jwts` verifies with them).

Fetched at start, then every ``refresh_s``, and early (at most once per
``min_interval_s``) when a token names a key id we do not know, which is how a key
rotation shows up. A failed fetch keeps the keys we have and is retried; until the
first fetch succeeds JWTs are refused as "unknown signing key" (fail closed), while
API keys keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp

from matrixinfer.core.http import read_capped

log = logging.getLogger(__name__)
MAX_JWKS_BYTES = 1024 * 1024


def check_jwks_url(url: str) -> str:
    """https, or http to a loopback address (a local provider in development)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname:
        host = parts.hostname
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(host).is_loopback:
                return url
        if host == "localhost":
            return url
    raise ValueError(f"jwks_url must be https (http only to loopback): {url!r}")


class JwksHolder(Protocol):
    """Whoever verifies with the keys: a :class:`~matrixinfer.core.jwts.JwtVerifier`,
    or the gateway's authenticator around one."""

    def replace_jwks(self, jwks: Mapping[str, Any]) -> object: ...


class JwksFetcher:
    def __init__(
        self,
        url: str,
        holder: JwksHolder,
        refresh_s: float = 300.0,
        min_interval_s: float = 10.0,
        timeout_s: float = 5.0,
    ) -> None:
        self._url = check_jwks_url(url)
        self._holder = holder
        self._refresh_s = refresh_s
        self._min_interval_s = min_interval_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_attempt = float("-inf")
        self.fetched = 0

    def poke(self) -> None:
        """Ask for an early refresh (a token named an unknown key id)."""
        self._wake.set()

    async def fetch_once(self) -> bool:
        self._last_attempt = time.monotonic()
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.get(self._url, allow_redirects=False) as response,
            ):
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}")
                body = await read_capped(response, MAX_JWKS_BYTES)
                document = await asyncio.to_thread(_parse, body)
            self._holder.replace_jwks(document)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            log.warning("could not fetch the JWKS from %s: %s", self._url, e)
            return False
        self.fetched += 1
        return True

    async def _run(self) -> None:
        ok = await self.fetch_once()
        while True:
            # After a failure retry sooner than the regular refresh.
            wait_s = self._refresh_s if ok else min(self._refresh_s, 5.0)
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
            # cancel that lands as the event is set, and stop() would then hang.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._wake.wait()
            self._wake.clear()
            too_soon = self._min_interval_s - (time.monotonic() - self._last_attempt)
            if too_soon > 0:
                await asyncio.sleep(too_soon)
            ok = await self.fetch_once()

    async def start(self) -> None:
        """First fetch (bounded by the timeout), then refresh in the background."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _parse(body: bytes) -> dict[str, object]:
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError("a JWKS document is a JSON object")
    return document
