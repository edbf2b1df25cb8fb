"""The routing table: public model names to replicas, built from ModelRoute,
ModelServer and ModelInfer (status endpoints) as the registry reports them.

The table is rebuilt whole on every change and swapped in one assignment, so a
request reads a consistent snapshot with plain dict lookups; changes are rare next to
requests. If the registry goes away the last table keeps serving.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.core.errors import NotFound


@dataclass(frozen=True)
class Server:
    """A ModelServer with the replicas it reaches."""

    namespace: str
    name: str
    triton_model: str
    replicas: tuple[str, ...]  # "host:grpc_port" of ready, non-draining endpoints
    timeout_ms: int = 30_000
    retry_attempts: int = 2
    retry_on: frozenset[str] = frozenset({"UNAVAILABLE"})
    max_concurrent_per_replica: int = 0
    consecutive_errors: int = 5
    ejection_s: float = 30.0
    hash_header: str = ""
    model_infer: str = ""
    balance: str = "LEAST_REQUEST"  # LEAST_REQUEST | ROUND_ROBIN | CONSISTENT_HASH


@dataclass(frozen=True)
class HeaderMatch:
    name: str
    exact: str | None = None
    prefix: str | None = None
    regex: re.Pattern[str] | None = None

    def matches(self, headers: Mapping[str, str]) -> bool:
        value = headers.get(self.name)
        if value is None:
            return False
        if self.exact is not None:
            return value == self.exact
        if self.prefix is not None:
            return value.startswith(self.prefix)
        return self.regex is not None and self.regex.fullmatch(value) is not None


@dataclass(frozen=True)
class Rule:
    name: str
    version: str
    headers: tuple[HeaderMatch, ...]
    targets: tuple[tuple[Server, int], ...]
    timeout_ms: int = 0
    #: A copy of this share (percent) of the traffic goes here; answers are dropped.
    mirror: tuple[Server, int] | None = None
    #: Triton priority level set on every request (0: the request's own).
    priority: int = 0
    #: The caller's authenticated tenant must be one of these (empty: any caller).
    tenants: frozenset[str] = frozenset()

    def matches(
        self, version: str, headers: Mapping[str, str], tenant: str | None = None
    ) -> bool:
        if self.version and version != self.version:
            return False
        if self.tenants and tenant not in self.tenants:
            return False
        return all(h.matches(headers) for h in self.headers)

    def pick(self, rng: random.Random) -> Server:
        total = sum(weight for _, weight in self.targets)
        if total <= 0:
            return self.targets[0][0]
        point = rng.uniform(0, total)
        for server, weight in self.targets:
            point -= weight
            if point < 0:
                return server
        return self.targets[-1][0]


@dataclass(frozen=True)
class Limit:
    """A route's rate: ``rate_per_s`` sustained, ``burst`` at once (HAProxy counts
    requests over ``burst / rate_per_s`` seconds and refuses above ``burst``)."""

    rate_per_s: float
    burst: int

    def __post_init__(self) -> None:
        # Admission refuses these; the data plane must never render a zero period.
        if not (math.isfinite(self.rate_per_s) and self.rate_per_s > 0):
            raise ValueError(
                f"rate_per_s must be > 0 and finite, not {self.rate_per_s}"
            )
        if isinstance(self.burst, bool) or self.burst < 1:
            raise ValueError(f"burst must be an integer >= 1, not {self.burst!r}")


@dataclass(frozen=True)
class RouteLimit:
    limit: Limit
    per: str  # route | tenant
    global_: bool


@dataclass(frozen=True)
class Route:
    model_name: str
    namespace: str
    rules: tuple[Rule, ...]
    rate_limit: RouteLimit | None = None


@dataclass
class RoutingTable:
    routes: dict[str, Route] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)
    #: Triton's HTTP port of each replica, by its "host:grpc_port"
    http_ports: dict[str, int] = field(default_factory=dict)

    def routed_replicas(self, model_name: str) -> int:
        """Ready replicas behind the first target of the model's first rule; 0 while
        the model is not routed (a route can show up before its targets resolve)."""
        route = self.routes.get(model_name)
        if route is None or not route.rules or not route.rules[0].targets:
            return 0
        return len(route.rules[0].targets[0][0].replicas)

    def resolve(
        self,
        model_name: str,
        version: str,
        headers: Mapping[str, str],
        tenant: str | None = None,
    ) -> tuple[Route, Rule, Server]:
        route = self.routes.get(model_name)
        if route is None:
            raise NotFound(f"model {model_name!r} is not served here")
        for rule in route.rules:
            if rule.matches(version, headers, tenant):
                return route, rule, rule.pick(self.rng)
        raise NotFound(f"no route of model {model_name!r} matches this request")


def build_table(
    routes: list[pb.ModelRoute],
    servers: list[pb.ModelServer],
    infers: list[pb.ModelInfer],
) -> RoutingTable:
    endpoints: dict[tuple[str, str], tuple[str, ...]] = {}
    model_of: dict[tuple[str, str], str] = {}
    http_ports: dict[str, int] = {}
    for infer in infers:
        for e in infer.status.endpoints:
            if e.grpc_port and e.http_port:
                http_ports[f"{e.address}:{e.grpc_port}"] = e.http_port
        key = (infer.metadata.namespace, infer.metadata.name)
        endpoints[key] = tuple(
            f"{e.address}:{e.grpc_port}"
            for e in infer.status.endpoints
            if e.ready and not e.draining and e.grpc_port
        )
        model_of[key] = infer.spec.model_ref.name
    built: dict[tuple[str, str], Server] = {}
    for s in servers:
        ns = s.metadata.namespace
        infer_key = (ns, s.spec.model_infer_ref)
        tp = s.spec.traffic_policy
        built[(ns, s.metadata.name)] = Server(
            namespace=ns,
            name=s.metadata.name,
            triton_model=s.spec.model or model_of.get(infer_key, ""),
            replicas=endpoints.get(infer_key, ()),
            timeout_ms=tp.timeout_ms or 30_000,
            retry_attempts=tp.retry.attempts,
            retry_on=frozenset(tp.retry.retry_on) or frozenset({"UNAVAILABLE"}),
            max_concurrent_per_replica=tp.max_concurrent_requests_per_replica,
            consecutive_errors=tp.outlier_detection.consecutive_errors or 5,
            ejection_s=float(tp.outlier_detection.base_ejection_seconds or 30),
            hash_header=tp.load_balancer.consistent_hash.header
            if tp.load_balancer.type == "CONSISTENT_HASH"
            else "",
            model_infer=s.spec.model_infer_ref,
            balance=tp.load_balancer.type or "LEAST_REQUEST",
        )
    table = RoutingTable(http_ports=http_ports)
    for r in sorted(routes, key=lambda r: (r.metadata.namespace, r.metadata.name)):
        ns = r.metadata.namespace
        rules = []
        for rule in r.spec.rules:
            targets = tuple(
                (built[(ns, t.model_server)], t.weight)
                for t in rule.targets
                if (ns, t.model_server) in built
            )
            if not targets:
                continue
            headers = tuple(
                HeaderMatch(
                    name,
                    exact=m.exact if m.WhichOneof("match") == "exact" else None,
                    prefix=m.prefix if m.WhichOneof("match") == "prefix" else None,
                    regex=re.compile(m.regex)
                    if m.WhichOneof("match") == "regex"
                    else None,
                )
                for name, m in rule.match.headers.items()
            )
            mirror = None
            if rule.HasField("mirror") and (ns, rule.mirror.model_server) in built:
                mirror = (built[(ns, rule.mirror.model_server)], rule.mirror.percent)
            rules.append(
                Rule(
                    rule.name,
                    rule.match.version,
                    headers,
                    targets,
                    rule.timeout_ms,
                    mirror,
                    rule.priority,
                    frozenset(rule.match.tenants),
                )
            )
        limit = None
        if r.spec.HasField("rate_limit"):
            rl = r.spec.rate_limit
            shared = bool(getattr(rl, "global"))  # `global` is a Python keyword
            limit = RouteLimit(
                Limit(rl.requests_per_second, rl.burst), rl.per or "route", shared
            )
        # The first route of a name wins (namespaces in order); clients see one model.
        table.routes.setdefault(
            r.spec.model_name, Route(r.spec.model_name, ns, tuple(rules), limit)
        )
    return table
