"""Auth and rate limits at the gateway, with API keys issued by the registry and
real Triton replicas behind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import grpc
import jwt as pyjwt
import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from tritonclient.grpc import service_pb2, service_pb2_grpc

from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.core.grpc.errors import error_details
from matrixinfer.gateway.main import GatewayApp
from tests.integration.conftest import (
    Platform,
    carried_by,
    haproxy_counts,
    iris_manifests,
    start_gateway,
    wait_routed,
)

#: A rule for one tenant, sending it to its own ModelServer (same replicas), so
#: HAProxy's per-server counts show which rule took a call.
TENANT_ROUTE = """  rules:
    - match: {tenants: [team-a]}
      targets: [{modelServer: iris-team-a}]
    - targets: [{modelServer: iris}]
---
apiVersion: networking.matrixinfer.ai/v1alpha1
kind: ModelServer
metadata: {name: iris-team-a}
spec: {modelInferRef: iris, model: iris}"""
LIMITED_ROUTE = """  rules:
    - targets: [{modelServer: iris}]
  rateLimit: {requestsPerSecond: 0.5, burst: 2, per: tenant}"""


@dataclass
class Secured:
    app: GatewayApp
    stub: service_pb2_grpc.GRPCInferenceServiceStub
    iris_key: str
    other_key: str
    iris_key_id: str


def infer_request() -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="iris")
    tensor = request.inputs.add(name="X", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([6.7, 3.0, 5.2, 2.3])
    return request


@pytest_asyncio.fixture
async def secured(platform: Platform) -> AsyncIterator[Secured]:
    app = await start_gateway(platform, auth_mode="required")
    channel = grpc.aio.insecure_channel(app.address)
    try:
        manifests = iris_manifests().replace(
            "  rules:\n    - targets: [{modelServer: iris}]", LIMITED_ROUTE
        )
        await platform.apply(manifests)
        await platform.wait_for(
            lambda i: i is not None and i.status.ready_replicas == 1
        )
        iris = await platform.stub.CreateApiKey(
            rpb.CreateApiKeyRequest(
                subject="app", scopes=["infer:iris"], tenant="team-a"
            )
        )
        other = await platform.stub.CreateApiKey(
            rpb.CreateApiKeyRequest(subject="app2", scopes=["infer:resnet"])
        )
        for _ in range(200):  # the gateway learns keys and routes through Watch
            if (
                iris.api_key.metadata.name in app.routes.api_keys.records
                and app.routes.table.routed_replicas("iris") > 0
            ):
                break
            await asyncio.sleep(0.05)
        yield Secured(
            app,
            service_pb2_grpc.GRPCInferenceServiceStub(channel),
            iris.secret,
            other.secret,
            iris.api_key.metadata.name,
        )
    finally:
        await channel.close()
        await app.stop(0)


async def call(
    s: Secured, metadata: tuple[tuple[str, str], ...]
) -> service_pb2.ModelInferResponse:
    response: service_pb2.ModelInferResponse = await s.stub.ModelInfer(
        infer_request(), metadata=metadata, timeout=10
    )
    return response


async def code_of(s: Secured, metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(s, metadata)
    assert "mik_" not in (info.value.details() or "")  # no secret is ever echoed
    return info.value.code()


async def test_auth_matrix(secured: Secured, platform: Platform) -> None:
    ok = await call(secured, (("x-api-key", secured.iris_key),))
    label = np.frombuffer(ok.raw_output_contents[0], dtype=np.int64)
    assert label.tolist() == [2]
    assert await code_of(secured, ()) == grpc.StatusCode.UNAUTHENTICATED
    assert await code_of(secured, (("authorization", "Bearer   "),)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert await code_of(secured, (("x-api-key", secured.iris_key + "x"),)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    both = (
        ("x-api-key", secured.iris_key),
        ("authorization", f"Bearer {secured.iris_key}"),
    )
    assert await code_of(secured, both) == grpc.StatusCode.UNAUTHENTICATED
    assert await code_of(secured, (("x-api-key", secured.other_key),)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    # Revocation reaches the gateway through Watch.
    await platform.stub.RevokeApiKey(rpb.RevokeApiKeyRequest(name=secured.iris_key_id))
    for _ in range(100):
        if secured.app.routes.api_keys.records[secured.iris_key_id].revoked:
            break
        await asyncio.sleep(0.05)
    assert await code_of(secured, (("x-api-key", secured.iris_key),)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )


async def test_rate_limit_says_when_to_retry(secured: Secured) -> None:
    bearer = (("authorization", f"Bearer {secured.iris_key}"),)
    await call(secured, bearer)
    await call(secured, bearer)  # burst of 2
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(secured, bearer)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry_after = error_details(info.value).retry_after_s
    assert retry_after is not None and 0 < retry_after <= 2.0


async def test_jwt_from_the_providers_jwks_url_over_rest(platform: Platform) -> None:
    """A JWT signed by the identity provider, whose keys the gateway fetched from
    the provider's URL, is accepted over REST; bad tokens get 401/403 and are never
    echoed."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = pyjwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response({"keys": [{**public, "kid": "idp-1", "use": "sig"}]})

    idp = web.Application()
    idp.router.add_get("/jwks.json", jwks)
    runner = web.AppRunner(idp)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    jwks_url = f"http://127.0.0.1:{runner.addresses[0][1]}/jwks.json"

    def token(**claims: object) -> str:
        body: dict[str, object] = {
            "iss": "https://idp.test",
            "aud": "matrixinfer",
            "sub": "carol",
        }
        body.update({"exp": int(time.time()) + 300, "scope": "infer:iris"}, **claims)
        return pyjwt.encode(body, key, algorithm="RS256", headers={"kid": "idp-1"})

    app = await start_gateway(
        platform,
        auth_mode="required",
        jwt_issuer="https://idp.test",
        jwt_audience="matrixinfer",
        jwks_url=jwks_url,
    )
    try:
        await platform.apply(iris_manifests())
        await platform.wait_for(
            lambda i: i is not None and i.status.ready_replicas == 1
        )
        await wait_routed(app)
        body = {
            "inputs": [
                {"name": "X", "shape": [1, 4], "datatype": "FP32",
                 "data": [6.7, 3.0, 5.2, 2.3]}
            ]
        }  # fmt: skip
        url = f"{app.http_url}/v2/models/iris/infer"
        async with aiohttp.ClientSession() as session:

            async def status(bearer: str) -> int:
                headers = {"authorization": f"Bearer {bearer}"}
                async with session.post(url, json=body, headers=headers) as response:
                    text = await response.text()
                    assert bearer not in text
                    return response.status

            assert await status(token()) == 200
            assert await status(token(aud="someone-else")) == 401
            assert await status(token(exp=int(time.time()) - 3600)) == 401
            assert await status(token(scope="infer:resnet")) == 403
            assert await status(token()[:-4] + "AAAA") == 401  # bad signature
            assert await status("not-a-jwt") == 401
    finally:
        await app.stop(0)
        await runner.cleanup()


async def test_jwts_are_verified_by_haproxy_with_the_jwks_keys(
    platform: Platform,
) -> None:
    """JWTs over gRPC, checked by HAProxy itself (signature by the key the kid
    names, RS256 and ES256, exp/nbf with leeway, iss, aud, scopes): none of these
    calls reaches the gateway's Python. A kid the gateway does not know yet goes to
    the slow path, which refreshes the JWKS; the rotated key then works natively."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    published = [
        {**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "r1"},
        {**ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "kid": "e1"},
    ]

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response({"keys": published})

    idp = web.Application()
    idp.router.add_get("/jwks.json", jwks)
    runner = web.AppRunner(idp)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()

    def token(key: object = rsa_key, kid: str = "r1", **claims: object) -> str:
        now = int(time.time())
        body: dict[str, object] = {
            "iss": "https://idp.test",
            "aud": "matrixinfer",
            "sub": "dave",
            "exp": now + 300,
            "scope": "admin infer:iris",
        }
        body.update(claims)
        alg = "ES256" if key is ec_key else "RS256"
        return pyjwt.encode(body, key, algorithm=alg, headers={"kid": kid})  # type: ignore[arg-type]

    app = await start_gateway(
        platform,
        auth_mode="required",
        jwt_issuer="https://idp.test",
        jwt_audience="matrixinfer",
        jwks_url=f"http://127.0.0.1:{runner.addresses[0][1]}/jwks.json",
        jwks_refresh_s=3600,
    )
    channel = grpc.aio.insecure_channel(app.address)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

    async def code(bearer: str) -> grpc.StatusCode:
        try:
            await stub.ModelInfer(
                infer_request(),
                metadata=(("authorization", f"Bearer {bearer}"),),
                timeout=10,
            )
        except grpc.aio.AioRpcError as e:
            assert bearer not in (e.details() or "")
            return e.code()
        return grpc.StatusCode.OK

    async def slow_calls() -> int:
        return (await haproxy_counts(app, "slow_grpc"))[("slow_grpc", "BACKEND")]

    try:
        await platform.apply(iris_manifests())
        await platform.wait_for(
            lambda i: i is not None and i.status.ready_replicas == 1
        )
        await wait_routed(app)
        before = await slow_calls()
        now = int(time.time())
        ok, unauth, denied = (
            grpc.StatusCode.OK,
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED,
        )
        cases = [
            (token(), ok),
            (token(ec_key, "e1"), ok),
            (token(scope="infer:*"), ok),
            (token(exp=now - 10), ok),  # within the 30 s leeway
            (token(exp=now - 3600), unauth),
            (token(nbf=now + 3600), unauth),
            (token(iss="https://evil.test"), unauth),
            (token(aud="someone-else"), unauth),
            (token(scope="infer:resnet admin"), denied),
            (token(scope="infer:iris-v2"), denied),  # a prefix is not a match
            (token()[:-4] + "AAAA", unauth),  # signature
            (token(ec_key, "r1"), unauth),  # ES256 token naming the RSA key
        ]
        for bearer, expected in cases:
            assert await code(bearer) == expected, pyjwt.decode(
                bearer, options={"verify_signature": False}
            )
        assert await slow_calls() == before  # all decided by HAProxy

        # Key rotation: an unknown kid goes to Python, which refetches the JWKS.
        published.append(
            {**RSAAlgorithm.to_jwk(rotated.public_key(), as_dict=True), "kid": "r2"}
        )
        fresh = token(rotated, "r2")
        for _ in range(100):
            if await code(fresh) == ok:
                break
            await asyncio.sleep(0.1)
        await app.dataplane.wait_applied()
        at_rotation = await slow_calls()
        assert await code(fresh) == ok
        assert await slow_calls() == at_rotation  # the new key is HAProxy's now
    finally:
        await channel.close()
        await app.stop(0)
        await runner.cleanup()


async def test_jwt_keys_that_arrive_after_start_reach_haproxy(
    platform: Platform,
) -> None:
    """The identity provider is down when the gateway starts: JWTs are refused by
    the slow path, which keeps asking for the keys; once they come, HAProxy is
    reconfigured with them and verifies the tokens itself."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "late"}
    up = {"yes": False}

    async def jwks(request: web.Request) -> web.Response:
        if not up["yes"]:
            return web.json_response({"error": "down"}, status=503)
        return web.json_response({"keys": [public]})

    idp = web.Application()
    idp.router.add_get("/jwks.json", jwks)
    runner = web.AppRunner(idp)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    claims = {
        "iss": "https://idp.test",
        "aud": "matrixinfer",
        "sub": "erin",
        "exp": int(time.time()) + 300,
        "scope": "infer:iris",
    }
    bearer = pyjwt.encode(claims, key, algorithm="RS256", headers={"kid": "late"})
    app = await start_gateway(
        platform,
        auth_mode="required",
        jwt_issuer="https://idp.test",
        jwt_audience="matrixinfer",
        jwks_url=f"http://127.0.0.1:{runner.addresses[0][1]}/jwks.json",
    )
    channel = grpc.aio.insecure_channel(app.address)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    metadata = (("authorization", f"Bearer {bearer}"),)
    try:
        await platform.apply(iris_manifests())
        await platform.wait_for(
            lambda i: i is not None and i.status.ready_replicas == 1
        )
        await wait_routed(app)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ModelInfer(infer_request(), metadata=metadata, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        up["yes"] = True
        for _ in range(100):  # an unknown kid makes the gateway refetch early
            try:
                await stub.ModelInfer(infer_request(), metadata=metadata, timeout=10)
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.2)
        await app.dataplane.wait_applied()
        assert app.dataplane.last_error == ""
        native = ("g:default:iris:iris", "BACKEND")
        before = (await haproxy_counts(app, native[0]))[native]
        await stub.ModelInfer(infer_request(), metadata=metadata, timeout=10)
        assert (await haproxy_counts(app, native[0]))[native] == before + 1
    finally:
        await channel.close()
        await app.stop(0)
        await runner.cleanup()


async def test_a_rule_matches_the_callers_authenticated_tenant(
    platform: Platform,
) -> None:
    """The tenant comes from the credential (an API key's tenant), never from what
    the client says: a team-b key with a forged tenant header takes the default."""
    app = await start_gateway(platform, auth_mode="required")
    channel = grpc.aio.insecure_channel(app.address)
    try:
        await platform.apply(
            iris_manifests().replace(
                "  rules:\n    - targets: [{modelServer: iris}]", TENANT_ROUTE
            )
        )
        await platform.wait_for(
            lambda i: i is not None and i.status.ready_replicas == 1
        )
        keys = {
            tenant: await platform.stub.CreateApiKey(
                rpb.CreateApiKeyRequest(
                    subject=tenant, scopes=["infer:iris"], tenant=tenant
                )
            )
            for tenant in ("team-a", "team-b")
        }
        for _ in range(200):  # the gateway learns keys and routes through Watch
            known = app.routes.api_keys.records
            if (
                all(k.api_key.metadata.name in known for k in keys.values())
                and app.routes.table.routed_replicas("iris") > 0
            ):
                break
            await asyncio.sleep(0.05)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def backends(tenant: str, *extra: tuple[str, str]) -> set[str]:
            metadata = (("x-api-key", keys[tenant].secret), *extra)

            async def send() -> None:
                await stub.ModelInfer(infer_request(), metadata=metadata, timeout=10)

            return {proxy for proxy, _ in await carried_by(app, "g:", send)}

        assert await backends("team-a") == {"g:default:iris:iris-team-a"}
        assert await backends("team-b") == {"g:default:iris:iris"}
        forged = ("x-tenant", "team-a"), ("tenant", "team-a")
        assert await backends("team-b", *forged) == {"g:default:iris:iris"}
    finally:
        await channel.close()
        await app.stop(0)
