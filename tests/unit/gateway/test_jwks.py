"""JWKS fetched from the identity provider's URL: a real HTTP server on loopback
plays the provider; keys rotate and the gateway's authenticator follows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import jwt as pyjwt
import pytest
import pytest_asyncio
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from matrixinfer.core.errors import Unauthenticated
from matrixinfer.core.jwks import JwksFetcher, check_jwks_url
from matrixinfer.gateway.domain.auth import Authenticator, JwtSettings

ISSUER, AUDIENCE = "https://idp.example", "matrixinfer"


def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    public = pyjwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**public, "kid": kid, "use": "sig"}


def token(key: rsa.RSAPrivateKey, kid: str) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now + 300}
    claims["scope"] = "infer:iris"
    return pyjwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def bearer(value: str) -> dict[str, list[str]]:
    return {"authorization": [f"Bearer {value}"]}


class Provider:
    def __init__(self) -> None:
        self.document: object = {"keys": []}
        self.status = 200
        self.requests = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.json_response(self.document, status=self.status)


@pytest_asyncio.fixture
async def provider() -> AsyncIterator[Provider]:
    idp = Provider()
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", idp.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    idp.url = f"http://127.0.0.1:{port}/.well-known/jwks.json"
    try:
        yield idp
    finally:
        await runner.cleanup()


def authenticator(poke: Callable[[], None]) -> Authenticator:
    settings = JwtSettings(issuer=ISSUER, audience=AUDIENCE, jwks={"keys": []})
    return Authenticator(None, settings, on_unknown_kid=poke)


async def test_rotation_is_picked_up_after_an_unknown_kid(provider: Provider) -> None:
    old, new = (rsa.generate_private_key(65537, 2048) for _ in range(2))
    provider.document = {"keys": [jwk(old, "k1")]}
    fetcher: JwksFetcher | None = None
    auth = authenticator(lambda: fetcher.poke() if fetcher else None)
    fetcher = JwksFetcher(provider.url, auth, refresh_s=3600, min_interval_s=0)
    await fetcher.start()
    try:
        for _ in range(100):
            if fetcher.fetched:
                break
            await fetcher_sleep()
        assert auth.authenticate(bearer(token(old, "k1"))).subject == "alice"
        # The provider rotates to a new key; the first token signed with it is
        # refused (we do not know the kid yet) and makes us refetch at once.
        provider.document = {"keys": [jwk(new, "k2")]}
        with pytest.raises(Unauthenticated, match="unknown signing key"):
            auth.authenticate(bearer(token(new, "k2")))
        for _ in range(100):
            if fetcher.fetched >= 2:
                break
            await fetcher_sleep()
        assert auth.authenticate(bearer(token(new, "k2"))).subject == "alice"
        with pytest.raises(Unauthenticated):
            auth.authenticate(bearer(token(old, "k1")))  # retired key
    finally:
        # The last call poked a refresh: stopping must still be prompt.
        await asyncio.wait_for(fetcher.stop(), 5)


async def test_a_broken_provider_keeps_the_keys_we_have(provider: Provider) -> None:
    key = rsa.generate_private_key(65537, 2048)
    provider.document = {"keys": [jwk(key, "k1")]}
    auth = authenticator(lambda: None)
    fetcher = JwksFetcher(provider.url, auth, refresh_s=3600, min_interval_s=0)
    assert await fetcher.fetch_once()
    for document, status in (({"error": "down"}, 500), ({"no": "keys"}, 200)):
        provider.document, provider.status = document, status
        assert not await fetcher.fetch_once()
        assert auth.authenticate(bearer(token(key, "k1"))).subject == "alice"


async def fetcher_sleep() -> None:
    await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    "url",
    [
        "http://idp.example/jwks.json",  # plaintext to a remote host
        "file:///etc/passwd",
        "ftp://127.0.0.1/jwks",
        "https:///no-host",
    ],
)
def test_only_https_or_loopback_http_urls(url: str) -> None:
    with pytest.raises(ValueError, match="jwks_url"):
        check_jwks_url(url)


def test_https_and_loopback_urls_are_accepted() -> None:
    for url in ("https://idp.example/jwks", "http://127.0.0.1:9/j", "http://[::1]/j"):
        assert check_jwks_url(url) == url
