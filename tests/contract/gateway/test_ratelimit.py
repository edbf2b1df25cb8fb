"""Rate limiting: the in-process bucket with a fake clock, the shared bucket against a
real Redis (atomicity, two gateways sharing one limit, TTL, hostile keys), what
happens when Redis is down, and the error the request path raises."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import pytest_asyncio
import redis.asyncio

from matrixinfer.core.errors import ResourceExhausted
from matrixinfer.gateway.ratelimit import (
    Limit,
    LocalTokenBucket,
    RateLimiter,
    RedisTokenBucket,
    bucket_key,
)

pytestmark = pytest.mark.timeout(20)

REDIS_ENV = "MATRIXINFER_TEST_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

NewClient = Callable[..., redis.asyncio.Redis]


class FakeClock:
    def __init__(self, now_s: float = 1000.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


# --- local bucket ---------------------------------------------------------------


def test_local_burst_is_allowed_then_refused() -> None:
    bucket = LocalTokenBucket()
    limit = Limit(rate_per_s=2.0, burst=3)

    decisions = [bucket.try_acquire("k", limit, now_s=100.0) for _ in range(4)]

    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == [2.0, 1.0, 0.0]
    assert decisions[3].retry_after_s == pytest.approx(0.5, abs=1e-6)


def test_local_bucket_refills_with_time_up_to_burst() -> None:
    bucket = LocalTokenBucket()
    limit = Limit(rate_per_s=4.0, burst=2)
    for _ in range(2):
        assert bucket.try_acquire("k", limit, now_s=10.0).allowed

    early = bucket.try_acquire("k", limit, now_s=10.1)  # 0.4 tokens so far
    assert not early.allowed
    assert early.retry_after_s == pytest.approx(0.15, abs=1e-6)
    assert bucket.try_acquire("k", limit, now_s=10.25).allowed  # exactly 1 token

    # A long idle period refills to burst, never beyond it.
    later = [bucket.try_acquire("k", limit, now_s=1000.0) for _ in range(3)]
    assert [d.allowed for d in later] == [True, True, False]


def test_local_retry_after_is_exact_for_fractional_costs() -> None:
    bucket = LocalTokenBucket()
    limit = Limit(rate_per_s=3.0, burst=5)
    assert bucket.try_acquire("k", limit, now_s=0.0, cost=4.25).allowed

    refused = bucket.try_acquire("k", limit, now_s=0.0, cost=2.0)

    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(1.25 / 3.0, abs=1e-6)
    assert refused.remaining == 0.75
    # Waiting retry_after_s is enough, and a microsecond less is not.
    assert not bucket.try_acquire("k", limit, 1.25 / 3.0 - 1e-6, cost=2.0).allowed
    assert bucket.try_acquire("k", limit, now_s=1.25 / 3.0 + 1e-9, cost=2.0).allowed


def test_local_keys_are_independent() -> None:
    bucket = LocalTokenBucket()
    limit = Limit(rate_per_s=1.0, burst=1)
    assert bucket.try_acquire("a", limit, now_s=0.0).allowed
    assert not bucket.try_acquire("a", limit, now_s=0.0).allowed
    assert bucket.try_acquire("b", limit, now_s=0.0).allowed


def test_local_lru_cap_evicts_least_recently_used_key() -> None:
    bucket = LocalTokenBucket(max_keys=2)
    limit = Limit(rate_per_s=0.001, burst=1)
    assert bucket.try_acquire("old", limit, now_s=0.0).allowed
    assert bucket.try_acquire("hot", limit, now_s=0.0).allowed
    assert not bucket.try_acquire("old", limit, now_s=1.0).allowed  # "old" now recent
    assert not bucket.try_acquire("hot", limit, now_s=2.0).allowed  # "hot" most recent

    # A flood of new keys keeps memory at max_keys by dropping the idlest bucket...
    for i in range(10):
        bucket.try_acquire(f"flood-{i}", limit, now_s=3.0)
        assert len(bucket) == 2

    # ...and a dropped key comes back full (fail-open per key, as documented).
    assert bucket.try_acquire("hot", limit, now_s=4.0).allowed
    assert bucket.try_acquire("old", limit, now_s=4.0).allowed


def test_limit_and_cost_are_validated() -> None:
    for rate_per_s in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rate_per_s"):
            Limit(rate_per_s=rate_per_s, burst=1)
    with pytest.raises(ValueError, match="burst"):
        Limit(rate_per_s=1.0, burst=0)
    with pytest.raises(ValueError, match="cost"):
        LocalTokenBucket().try_acquire("k", Limit(1.0, 2), now_s=0.0, cost=3.0)
    assert Limit(rate_per_s=2.0, burst=10).ttl_s == 10
    assert Limit(rate_per_s=1000.0, burst=1).ttl_s == 2


def test_bucket_keys_are_short_and_unambiguous() -> None:
    assert bucket_key("llama", None, "route") == "route:llama"
    assert bucket_key("llama", "acme", "tenant") == "tenant:llama:acme"
    assert bucket_key("llama", None, "tenant") == "tenant:llama:anonymous"

    hostile = "x" * 10_240
    key = bucket_key("llama", hostile, "tenant")
    assert len(key) < 64 and hostile[:100] not in key
    assert key != bucket_key("llama", hostile + "y", "tenant")
    # Separators and glob characters inside a part are hashed, never copied, so
    # ("a:b", "c") and ("a", "b:c") stay different buckets.
    assert bucket_key("a:b", "c", "tenant") != bucket_key("a", "b:c", "tenant")
    assert "*" not in bucket_key("llama", "*\r\n", "tenant")
    with pytest.raises(ValueError, match="per"):
        bucket_key("llama", None, "ip")


# --- Redis bucket ---------------------------------------------------------------


@pytest_asyncio.fixture
async def redis_url() -> str:
    url = os.environ.get(REDIS_ENV, DEFAULT_REDIS_URL)
    probe = redis.asyncio.Redis.from_url(url)
    try:
        await asyncio.wait_for(probe.ping(), timeout=2.0)
    except (redis.RedisError, OSError, TimeoutError) as e:
        if REDIS_ENV in os.environ:
            raise
        pytest.skip(f"no Redis at {url} ({e}); set {REDIS_ENV} or start redis-server")
    finally:
        await probe.aclose()
    return url


@pytest.fixture
def key_prefix() -> str:
    """A prefix of our own per test, so parallel runs never share a bucket."""
    return f"matrixinfer-test:rl:{uuid.uuid4().hex}:"


@pytest_asyncio.fixture
async def new_client(redis_url: str, key_prefix: str) -> AsyncIterator[NewClient]:
    """Makes independent clients (separate pools, like separate gateway processes);
    closes them all and deletes this test's keys, and only those, afterwards."""
    clients: list[redis.asyncio.Redis] = []

    def make(url: str = redis_url) -> redis.asyncio.Redis:
        client = redis.asyncio.Redis.from_url(url)
        clients.append(client)
        return client

    yield make
    cleaner = redis.asyncio.Redis.from_url(redis_url)
    try:
        keys = [k async for k in cleaner.scan_iter(match=key_prefix + "*")]
        if keys:
            await cleaner.delete(*keys)
    finally:
        await cleaner.aclose()
        for client in clients:
            await client.aclose()


async def test_redis_concurrent_burst_is_atomic(
    new_client: NewClient, key_prefix: str
) -> None:
    bucket = RedisTokenBucket(new_client(), key_prefix=key_prefix, timeout_s=2.0)
    limit = Limit(rate_per_s=0.01, burst=10)  # no refill within the test

    decisions = await asyncio.gather(
        *(bucket.try_acquire("route:r", limit) for _ in range(50))
    )

    assert sum(d.allowed for d in decisions) == 10
    assert bucket.redis_errors == 0
    refused = [d for d in decisions if not d.allowed]
    assert all(d.retry_after_s > 0 for d in refused)


async def test_two_gateways_share_one_global_limit(
    new_client: NewClient, key_prefix: str
) -> None:
    limit = Limit(rate_per_s=20.0, burst=20)
    gateways = [
        RedisTokenBucket(new_client(), key_prefix=key_prefix, timeout_s=2.0)
        for _ in range(2)
    ]
    allowed = [0, 0]

    async def hammer(index: int, until_s: float) -> None:
        while time.monotonic() < until_s:
            if (await gateways[index].try_acquire("route:shared", limit)).allowed:
                allowed[index] += 1
            await asyncio.sleep(0.002)  # far more attempts than the rate, little CPU

    start_s = time.monotonic()
    await asyncio.gather(*(hammer(i, start_s + 1.0) for i in (0, 0, 1, 1)))
    elapsed_s = time.monotonic() - start_s

    expected = limit.burst + limit.rate_per_s * elapsed_s  # ~40; unshared would be ~80
    assert abs(sum(allowed) - expected) <= 0.15 * expected, (allowed, expected)
    assert allowed[0] > 0 and allowed[1] > 0
    assert gateways[0].redis_errors == gateways[1].redis_errors == 0


async def test_redis_bucket_refills_on_server_time(
    new_client: NewClient, key_prefix: str
) -> None:
    bucket = RedisTokenBucket(new_client(), key_prefix=key_prefix, timeout_s=2.0)
    limit = Limit(rate_per_s=50.0, burst=1)
    assert (await bucket.try_acquire("route:r", limit)).allowed
    refused = await bucket.try_acquire("route:r", limit)
    assert not refused.allowed
    assert 0 < refused.retry_after_s <= 1 / 50.0

    await asyncio.sleep(refused.retry_after_s + 0.01)
    assert (await bucket.try_acquire("route:r", limit)).allowed


async def test_redis_key_gets_a_ttl(new_client: NewClient, key_prefix: str) -> None:
    client = new_client()
    bucket = RedisTokenBucket(client, key_prefix=key_prefix, timeout_s=2.0)
    limit = Limit(rate_per_s=2.0, burst=10)

    await bucket.try_acquire("route:r", limit)

    ttl_s = await client.ttl(bucket.redis_key("route:r"))
    assert 0 < ttl_s <= limit.ttl_s == 10


async def test_hostile_tenant_makes_a_short_redis_key(
    new_client: NewClient, key_prefix: str
) -> None:
    client = new_client()
    limiter = RateLimiter(
        LocalTokenBucket(),
        RedisTokenBucket(client, key_prefix=key_prefix, timeout_s=2.0),
    )

    await limiter.check(
        "llama", "\n*" + "x" * 10_240, Limit(1.0, 5), per="tenant", global_=True
    )

    keys = [k async for k in client.scan_iter(match=key_prefix + "*")]
    assert len(keys) == 1
    assert len(keys[0]) - len(key_prefix) < 64


# --- Redis down -----------------------------------------------------------------


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local port nothing listens on (bound then released: refused on connect)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    yield port


@pytest_asyncio.fixture
async def silent_server() -> AsyncIterator[int]:
    """Accepts connections and never answers: a hung Redis."""
    writers: list[asyncio.StreamWriter] = []

    async def swallow(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writers.append(writer)
        while await reader.read(4096):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in writers:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_fail_open_allows_counts_and_warns_once(
    new_client: NewClient, closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[BaseException] = []
    clock = FakeClock()
    bucket = RedisTokenBucket(
        new_client(f"redis://127.0.0.1:{closed_port}/0"),
        on_redis_error=seen.append,
        clock=clock,
    )
    limit = Limit(rate_per_s=1.0, burst=1)

    with caplog.at_level(logging.WARNING, logger="matrixinfer.gateway.ratelimit"):
        decisions = [await bucket.try_acquire("route:r", limit) for _ in range(3)]
        clock.now_s += 9.9
        await bucket.try_acquire("route:r", limit)
        assert len(caplog.records) == 1  # no flood inside 10 s
        clock.now_s += 0.1
        await bucket.try_acquire("route:r", limit)

    assert all(d.allowed for d in decisions)
    assert bucket.redis_errors == len(seen) == 5
    assert len(caplog.records) == 2
    assert "4 failures since last warning" in caplog.records[1].getMessage()


async def test_hung_redis_costs_at_most_the_timeout(
    new_client: NewClient, silent_server: int
) -> None:
    bucket = RedisTokenBucket(
        new_client(f"redis://127.0.0.1:{silent_server}/0"), timeout_s=0.05
    )

    start_s = time.monotonic()
    decision = await bucket.try_acquire("route:r", Limit(1.0, 1))

    assert decision.allowed
    assert bucket.redis_errors == 1
    assert time.monotonic() - start_s < 1.0


async def test_fail_closed_refuses_through_the_facade(
    new_client: NewClient, closed_port: int
) -> None:
    bucket = RedisTokenBucket(
        new_client(f"redis://127.0.0.1:{closed_port}/0"), failure_mode="closed"
    )
    limiter = RateLimiter(LocalTokenBucket(), bucket)

    assert not (await bucket.try_acquire("route:r", Limit(100.0, 100))).allowed
    with pytest.raises(ResourceExhausted) as raised:
        await limiter.check("llama", None, Limit(100.0, 100), "route", global_=True)

    assert raised.value.retry_after_s is not None and raised.value.retry_after_s > 0
    assert bucket.redis_errors == 2


# --- facade ---------------------------------------------------------------------


async def test_facade_raises_resource_exhausted_naming_the_route() -> None:
    clock = FakeClock()
    limiter = RateLimiter(LocalTokenBucket(), clock=clock)
    limit = Limit(rate_per_s=2.0, burst=2)
    secret_tenant = "sk-live-9f8e7d6c5b4a"

    for _ in range(2):
        await limiter.check("llama-7b", secret_tenant, limit, "tenant", global_=False)
    with pytest.raises(ResourceExhausted) as raised:
        await limiter.check("llama-7b", secret_tenant, limit, "tenant", global_=False)

    assert raised.value.retry_after_s == pytest.approx(0.5, abs=1e-6)
    message = str(raised.value)
    assert "llama-7b" in message and "2 requests/s" in message
    assert secret_tenant not in message
    assert raised.value.reason == "RESOURCE_EXHAUSTED"

    # Another tenant on the same route has its own bucket; time refills the first.
    await limiter.check("llama-7b", "other", limit, "tenant", global_=False)
    clock.now_s += 0.5
    await limiter.check("llama-7b", secret_tenant, limit, "tenant", global_=False)


async def test_facade_per_route_is_shared_by_all_tenants_and_anonymous() -> None:
    limiter = RateLimiter(LocalTokenBucket(), clock=FakeClock())
    limit = Limit(rate_per_s=1.0, burst=2)
    await limiter.check("r", "a", limit, "route", global_=False)
    await limiter.check("r", None, limit, "route", global_=False)
    with pytest.raises(ResourceExhausted, match="route 'r'"):
        await limiter.check("r", "b", limit, "route", global_=False)

    # per: tenant without a tenant is one "anonymous" bucket for all such callers.
    await limiter.check("r", None, Limit(1.0, 1), "tenant", global_=False)
    with pytest.raises(ResourceExhausted):
        await limiter.check("r", None, Limit(1.0, 1), "tenant", global_=False)


async def test_facade_global_limit_in_redis(
    new_client: NewClient, key_prefix: str
) -> None:
    bucket = RedisTokenBucket(new_client(), key_prefix=key_prefix, timeout_s=2.0)
    gateway_a = RateLimiter(LocalTokenBucket(), bucket)
    gateway_b = RateLimiter(
        LocalTokenBucket(),
        RedisTokenBucket(new_client(), key_prefix=key_prefix, timeout_s=2.0),
    )
    limit = Limit(rate_per_s=0.01, burst=1)

    await gateway_a.check("r", None, limit, "route", global_=True)
    with pytest.raises(ResourceExhausted) as raised:
        await gateway_b.check("r", None, limit, "route", global_=True)
    assert raised.value.retry_after_s is not None and raised.value.retry_after_s > 1
