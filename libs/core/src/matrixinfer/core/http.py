"""Small helpers for aiohttp clients."""

from __future__ import annotations

import aiohttp


class BodyTooLarge(ValueError):
    pass


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body (``content.read(n)`` may return a partial one), refusing more
    than ``limit`` bytes without buffering them."""
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"response body larger than {limit} bytes")
    return bytes(body)
