"""Token-bucket rate limiting for ``ModelRoute.spec.rateLimit``.

A route asks for ``{requestsPerSecond, burst, per: route|tenant, global}``. This module
turns that into a yes/no (plus how long to wait) for each request, so that one noisy
caller cannot starve a model that every other caller shares.

Why token buckets and not fixed windows: a fixed window lets a client spend a whole
window's quota just before the edge and again just after it, i.e. twice the limit in
an instant. A token bucket refills continuously, so the most anyone can get in any
interval of ``t`` seconds is ``burst + rate_per_s * t``, with no edges to game.

Two stores, same arithmetic:

* :class:`LocalTokenBucket` keeps buckets in this process. It is pure (the clock is
  passed in) and is what ``global: false`` routes use; with N gateway replicas the
  fleet-wide limit is N times the spec, exactly like Envoy's ``local_ratelimit``.
* :class:`RedisTokenBucket` keeps buckets in Redis so every gateway process draws from
  the same bucket (``global: true``), the way ``envoyproxy/ratelimit`` does. One Lua
  script does read-refill-take-write atomically on the server, on the server's clock.

:class:`RateLimiter` is the facade the request path calls; it raises
:class:`~matrixinfer.core.errors.ResourceExhausted` (gRPC RESOURCE_EXHAUSTED with
RetryInfo, 429 + Retry-After over REST), so this module never imports grpc.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio
from redis.exceptions import RedisError

from matrixinfer.core.errors import ResourceExhausted

__all__ = [
    "ANONYMOUS_TENANT",
    "DEFAULT_KEY_PREFIX",
    "Decision",
    "FailureMode",
    "Limit",
    "LocalTokenBucket",
    "RateLimiter",
    "RedisTokenBucket",
    "bucket_key",
]

logger = logging.getLogger(__name__)

FailureMode = Literal["open", "closed"]

#: Every Redis key we write starts with this, so operators can find (and SCAN) them.
DEFAULT_KEY_PREFIX = "matrixinfer:rl:"

#: Bucket name for callers without a tenant when a route limits ``per: tenant``.
#: Unauthenticated callers share one bucket, which is the conservative choice: they
#: cannot dodge the limit by simply not saying who they are.
ANONYMOUS_TENANT = "anonymous"

# Names we copy into keys as they are (readable in `redis-cli --scan`). Anything else,
# and anything longer than 64 characters, is replaced by a hash so a hostile tenant id
# (10 KB, newlines, glob characters) can make neither huge keys nor ambiguous ones.
_SAFE_PART = re.compile(r"[A-Za-z0-9._-]{1,64}")
# A whole key longer than this is hashed by the buckets themselves, so memory per key
# stays bounded even for callers that do not build keys with `bucket_key`.
_MAX_KEY_CHARS = 200
# 128 bits of sha256: collisions would merge two callers' buckets, so keep plenty.
_HASH_HEX_CHARS = 32

# While Redis is down and we fail closed, tell clients to back off this long; we cannot
# know when Redis returns, and one second keeps retries from hammering the gateway.
_FAIL_CLOSED_RETRY_AFTER_S = 1.0
# One warning per this many seconds is enough to page someone; a dead Redis at
# thousands of requests per second must not turn into thousands of log lines.
_WARNING_INTERVAL_S = 10.0


@dataclass(frozen=True)
class Limit:
    """A token bucket's shape: refills at ``rate_per_s`` tokens/s, holds ``burst``."""

    rate_per_s: float
    burst: int

    def __post_init__(self) -> None:
        # A route with a zero or NaN rate would divide by zero (or never refill) on
        # every request; fail when the gateway loads the route instead.
        if not (math.isfinite(self.rate_per_s) and self.rate_per_s > 0):
            raise ValueError(
                f"rate_per_s must be > 0 and finite, not {self.rate_per_s}"
            )
        if isinstance(self.burst, bool) or self.burst < 1:
            raise ValueError(f"burst must be an integer >= 1, not {self.burst!r}")

    @property
    def ttl_s(self) -> int:
        """How long an idle bucket must survive in Redis, in whole seconds.

        An empty bucket is full again after ``burst / rate_per_s`` seconds, and a full
        bucket is the same as no bucket; twice that (rounded up, at least 1 s) leaves a
        safe margin, after which deleting the key changes nothing a caller can see.
        """
        return max(1, math.ceil(self.burst / self.rate_per_s) * 2)


@dataclass(frozen=True)
class Decision:
    """The answer for one request.

    ``retry_after_s`` is 0 when allowed, otherwise how long until ``cost`` tokens will
    be there. ``remaining`` is the tokens left after this request (0.0 when unknown,
    i.e. while Redis is unreachable).
    """

    allowed: bool
    retry_after_s: float
    remaining: float


def _check_cost(limit: Limit, cost: float) -> None:
    # A cost above burst could never be paid, yet would get a finite retry-after: the
    # client would retry forever. That is a caller bug, so say so loudly.
    if not (cost > 0 and cost <= limit.burst):
        raise ValueError(f"cost must be in (0, burst={limit.burst}], not {cost}")


def _hashed(text: str) -> str:
    # "#" is outside _SAFE_PART, so no plain name can ever equal a hashed one (a tenant
    # named after someone else's hash would otherwise share, and drain, their bucket).
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return "#" + digest[:_HASH_HEX_CHARS]


def _safe_part(text: str) -> str:
    return text if _SAFE_PART.fullmatch(text) else _hashed(text)


def _capped(key: str) -> str:
    return key if len(key) <= _MAX_KEY_CHARS else _hashed(key)


def bucket_key(route: str, tenant: str | None, per: str) -> str:
    """The bucket a request draws from: ``route:<r>`` or ``tenant:<r>:<tenant>``.

    ``per: tenant`` is scoped to the route because the limit is part of the route's
    spec: two routes with different limits must not fight over one tenant bucket.
    Each part is either a short safe name or ``#<sha256 prefix>``, and neither contains
    ``:``, so distinct (route, tenant) pairs can never produce the same key.
    """
    if per == "route":
        return "route:" + _safe_part(route)
    if per == "tenant":
        who = ANONYMOUS_TENANT if tenant is None else tenant
        return f"tenant:{_safe_part(route)}:{_safe_part(who)}"
    raise ValueError(f"per must be 'route' or 'tenant', not {per!r}")


@dataclass
class _Bucket:
    tokens: float
    updated_s: float


class LocalTokenBucket:
    """Token buckets in this process's memory, one per key, at most ``max_keys``.

    Memory is bounded against key-cardinality floods (random tenant ids, spoofed IPs):
    beyond ``max_keys`` the least recently used bucket is dropped. A dropped key comes
    back full, so eviction fails open for that key. That is acceptable because the
    evicted bucket is by definition the one idle the longest, an idle bucket refills
    towards full anyway, and to evict a key an attacker must send ``max_keys`` other
    distinct keys first, each of which is itself limited. The alternative, refusing new
    keys when full, would let the same flood lock out every new legitimate caller.

    Not thread-safe; the gateway calls it from its single event loop, and there is no
    ``await`` inside, so coroutines cannot interleave within one call.
    """

    def __init__(self, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, not {max_keys}")
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def try_acquire(
        self, key: str, limit: Limit, now_s: float, cost: float = 1.0
    ) -> Decision:
        """Take ``cost`` tokens from ``key``'s bucket at time ``now_s`` if it has them.

        ``now_s`` should come from a monotonic clock: wall-clock jumps would hand out
        (or withhold) tokens.
        """
        _check_cost(limit, cost)
        key = _capped(key)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(tokens=float(limit.burst), updated_s=now_s)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            elapsed_s = now_s - bucket.updated_s
            # A clock that went backwards refills nothing (rather than draining).
            if elapsed_s > 0:
                bucket.tokens += elapsed_s * limit.rate_per_s
            bucket.updated_s = now_s
        # Also caps a bucket whose route just lowered its burst.
        bucket.tokens = min(bucket.tokens, float(limit.burst))
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return Decision(allowed=True, retry_after_s=0.0, remaining=bucket.tokens)
        retry_after_s = (cost - bucket.tokens) / limit.rate_per_s
        return Decision(
            allowed=False, retry_after_s=retry_after_s, remaining=bucket.tokens
        )


# Same arithmetic as LocalTokenBucket, run atomically inside Redis so that concurrent
# gateways cannot both read "1 token left" and both take it.
# - Time comes from redis.call('TIME'), the server's clock, so gateways whose clocks
#   disagree still agree on refill. (Needs Redis >= 5, where scripts replicate their
#   effects rather than being re-run on replicas.)
# - `ts` is stored in integer microseconds: as a float in seconds, tostring() would keep
#   only ~14 significant digits (100 us) of a 10-digit epoch.
# - Numbers go back to the client as strings: Redis truncates Lua numbers to integers.
# - ts is always reset to now: after a failover to a server whose clock is behind, a
#   stored future ts must not freeze refill until that clock catches up.
_TOKEN_BUCKET_LUA = """
local rate_per_s = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local ttl_s = tonumber(ARGV[4])

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])

local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts_us = tonumber(state[2])
if tokens == nil or ts_us == nil then
  tokens = burst
  ts_us = now_us
end

local elapsed_us = now_us - ts_us
if elapsed_us > 0 then
  tokens = tokens + elapsed_us * rate_per_s / 1000000
end
if tokens > burst then
  tokens = burst
end

local allowed = 0
local retry_after_s = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  retry_after_s = (cost - tokens) / rate_per_s
end

redis.call('HSET', KEYS[1],
  'tokens', string.format('%.17g', tokens),
  'ts', string.format('%.0f', now_us))
redis.call('EXPIRE', KEYS[1], ttl_s)
return {allowed, string.format('%.17g', retry_after_s), string.format('%.17g', tokens)}
"""


class RedisTokenBucket:
    """Token buckets shared by every gateway process through one Redis.

    ``failure_mode`` says what happens when Redis errors or does not answer within
    ``timeout_s``:

    * ``"open"`` (default) allows the request. This matches Envoy, whose global rate
      limit filter defaults to ``failure_mode_deny: false``: a rate limiter exists to
      protect the models, and an outage of the limiter should not become an outage of
      every model behind it. The price is that limits are not enforced while Redis is
      down, which is why every such failure is counted and logged.
    * ``"closed"`` refuses every request (``allowed=False``, retry after 1 s) while
      Redis is down. Choose it only where exceeding a limit is worse than downtime,
      e.g. a paid upstream quota.

    Each failure increments :attr:`redis_errors` and calls ``on_redis_error`` (wire it
    to a metric); a WARNING is logged at most once per 10 s so a dead Redis cannot
    flood the logs. Redis exceptions never leave this class.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        failure_mode: FailureMode = "open",
        timeout_s: float = 0.05,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        on_redis_error: Callable[[BaseException], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``timeout_s`` bounds each Redis round trip (default 50 ms: a rate-limit
        check sits in front of every inference request, so a slow Redis must cost
        little latency). ``clock`` only paces the warning log.
        """
        if failure_mode not in ("open", "closed"):
            raise ValueError(
                f"failure_mode must be 'open' or 'closed': {failure_mode!r}"
            )
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, not {timeout_s}")
        self.failure_mode: FailureMode = failure_mode
        self.timeout_s = timeout_s
        self.key_prefix = key_prefix
        self.redis_errors = 0
        self._on_redis_error = on_redis_error
        self._clock = clock
        self._last_warning_s: float | None = None
        self._errors_since_warning = 0
        self._script = client.register_script(_TOKEN_BUCKET_LUA)

    def redis_key(self, key: str) -> str:
        """The Redis key holding ``key``'s bucket (long keys are hashed)."""
        return self.key_prefix + _capped(key)

    async def try_acquire(self, key: str, limit: Limit, cost: float = 1.0) -> Decision:
        """Take ``cost`` tokens from the shared bucket for ``key`` if it has them."""
        _check_cost(limit, cost)
        try:
            reply: Any = await asyncio.wait_for(
                self._script(
                    keys=[self.redis_key(key)],
                    args=[repr(limit.rate_per_s), limit.burst, repr(cost), limit.ttl_s],
                ),
                timeout=self.timeout_s,
            )
            allowed, retry_after, remaining = reply
            return Decision(
                allowed=int(allowed) == 1,
                retry_after_s=float(retry_after),
                remaining=float(remaining),
            )
        # TimeoutError is what asyncio.wait_for raises on 3.11; OSError covers socket
        # errors a driver might not wrap; ValueError/TypeError a malformed reply.
        except (RedisError, OSError, TimeoutError, ValueError, TypeError) as e:
            return self._on_failure(e)

    def _on_failure(self, error: BaseException) -> Decision:
        self.redis_errors += 1
        self._errors_since_warning += 1
        if self._on_redis_error is not None:
            self._on_redis_error(error)
        now_s = self._clock()
        if (
            self._last_warning_s is None
            or now_s - self._last_warning_s >= _WARNING_INTERVAL_S
        ):
            logger.warning(
                "rate limit store unreachable (%d failures since last warning, "
                "failing %s): %s: %s",
                self._errors_since_warning,
                self.failure_mode,
                type(error).__name__,
                error,
            )
            self._last_warning_s = now_s
            self._errors_since_warning = 0
        if self.failure_mode == "open":
            return Decision(allowed=True, retry_after_s=0.0, remaining=0.0)
        return Decision(
            allowed=False, retry_after_s=_FAIL_CLOSED_RETRY_AFTER_S, remaining=0.0
        )


class RateLimiter:
    """What the request path calls: picks the bucket and raises when refused.

    ``global_`` routes use ``redis_bucket``. A gateway started without Redis still
    limits them, per process, with ``local``, and warns once: that is the same
    trade-off as failing open, and better than not limiting at all.
    """

    def __init__(
        self,
        local: LocalTokenBucket,
        redis_bucket: RedisTokenBucket | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._local = local
        self._redis = redis_bucket
        self._clock = clock
        self._warned_no_redis = False

    async def check(
        self,
        route: str,
        tenant: str | None,
        spec: Limit,
        per: str,
        global_: bool,
    ) -> None:
        """Return if the request may go on; raise ``ResourceExhausted`` if not.

        The message names the route and the limit, never the tenant id: tenant ids can
        be hostile (huge, control characters) or sensitive, and messages reach logs
        and clients.
        """
        key = bucket_key(route, tenant, per)
        if global_ and self._redis is not None:
            decision = await self._redis.try_acquire(key, spec)
        else:
            if global_ and not self._warned_no_redis:
                logger.warning(
                    "route asks for a global rate limit but no Redis is configured; "
                    "limiting per gateway process instead"
                )
                self._warned_no_redis = True
            decision = self._local.try_acquire(key, spec, self._clock())
        if decision.allowed:
            return
        scope = "per tenant " if per == "tenant" else ""
        # Route names are Kubernetes names (<= 253 chars); cut anything longer.
        raise ResourceExhausted(
            f"rate limit of {spec.rate_per_s:g} requests/s {scope}exceeded "
            f"for route {route[:253]!r}",
            retry_after_s=decision.retry_after_s,
        )
