"""Routing and balancing decisions: weighted canaries, header rules, version pinning,
sticky keys, least-outstanding choice, concurrency caps and outlier ejection."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.core.errors import NotFound
from matrixinfer.gateway.domain.balancer import Balancer
from matrixinfer.gateway.domain.routing import build_table


def server(name: str, infer: str) -> pb.ModelServer:
    s = pb.ModelServer()
    s.metadata.namespace, s.metadata.name = "default", name
    s.spec.model_infer_ref = infer
    s.spec.model = "iris"
    return s


def infer(name: str, ports: list[int], draining: int | None = None) -> pb.ModelInfer:
    i = pb.ModelInfer()
    i.metadata.namespace, i.metadata.name = "default", name
    for port in ports:
        i.status.endpoints.add(
            address="127.0.0.1", grpc_port=port, ready=True, draining=port == draining
        )
    return i


def route(rules: list[dict[str, object]]) -> pb.ModelRoute:
    r = pb.ModelRoute()
    r.metadata.namespace, r.metadata.name = "default", "iris"
    r.spec.model_name = "iris"
    for spec in rules:
        rule = r.spec.rules.add(name=str(spec.get("name", "r")))
        for target, weight in spec["targets"]:  # type: ignore[attr-defined]
            rule.targets.add(model_server=target, weight=weight)
        if "version" in spec:
            rule.match.version = str(spec["version"])
        for header, prefix in dict(spec.get("headers", {})).items():  # type: ignore[call-overload]
            rule.match.headers[header].prefix = prefix
        rule.match.tenants.extend(spec.get("tenants", []))  # type: ignore[arg-type]
    return r


def table(rules: list[dict[str, object]]):  # type: ignore[no-untyped-def]
    return build_table(
        [route(rules)],
        [server("stable", "iris-v1"), server("canary", "iris-v2")],
        [infer("iris-v1", [9001, 9002], draining=9002), infer("iris-v2", [9003])],
    )


def test_canary_split_is_within_two_points_over_10000_requests() -> None:
    t = table([{"targets": [("stable", 90), ("canary", 10)]}])
    t.rng = random.Random(7)
    counts = Counter(t.resolve("iris", "", {})[2].name for _ in range(10_000))
    assert abs(counts["canary"] / 10_000 - 0.10) <= 0.02
    assert abs(counts["stable"] / 10_000 - 0.90) <= 0.02


def test_rules_in_order_headers_and_versions() -> None:
    t = table(
        [
            {
                "name": "beta",
                "targets": [("canary", 100)],
                "headers": {"x-user": "beta-"},
            },
            {"name": "pinned", "targets": [("canary", 100)], "version": "2"},
            {"name": "default", "targets": [("stable", 100)]},
        ]
    )
    assert t.resolve("iris", "", {"x-user": "beta-7"})[1].name == "beta"
    assert t.resolve("iris", "2", {})[1].name == "pinned"
    assert t.resolve("iris", "", {"x-user": "prod"})[1].name == "default"
    with pytest.raises(NotFound):
        t.resolve("resnet", "", {})


def test_a_tenant_rule_takes_only_callers_of_its_tenants() -> None:
    t = table(
        [
            {"name": "gold", "targets": [("canary", 100)], "tenants": ["a", "b"]},
            {"name": "default", "targets": [("stable", 100)]},
        ]
    )
    assert t.resolve("iris", "", {}, "b")[1].name == "gold"
    assert t.resolve("iris", "", {"tenant": "a"}, "c")[1].name == "default"
    assert t.resolve("iris", "", {}, None)[1].name == "default"


def test_draining_and_not_ready_endpoints_are_not_routed() -> None:
    t = table([{"targets": [("stable", 100)]}])
    assert t.resolve("iris", "", {})[2].replicas == ("127.0.0.1:9001",)


def test_sticky_key_keeps_its_replica_while_it_lives() -> None:
    balancer = Balancer(rng=random.Random(1))
    replicas = ["a:1", "b:1", "c:1"]
    chosen = {
        key: balancer.pick(replicas, set(), affinity=key)
        for key in map(str, range(200))
    }
    assert all(
        balancer.pick(replicas, set(), affinity=k) == v for k, v in chosen.items()
    )
    assert len(set(chosen.values())) == 3  # keys spread over replicas
    survivors = ["a:1", "c:1"]
    moved = [
        k
        for k, v in chosen.items()
        if v != "b:1" and balancer.pick(survivors, set(), affinity=k) != v
    ]
    assert moved == []  # only b's keys move when b goes


def test_least_outstanding_wins_between_two() -> None:
    balancer = Balancer(rng=random.Random(3))
    for _ in range(5):
        balancer.started("busy:1")
    picks = Counter(balancer.pick(["busy:1", "idle:1"], set()) for _ in range(100))
    assert picks == {"idle:1": 100}


def test_concurrency_cap_and_ejection() -> None:
    now = [0.0]
    balancer = Balancer(clock=lambda: now[0], rng=random.Random(5))
    balancer.started("a:1")
    assert balancer.pick(["a:1"], set(), cap=1) is None
    balancer.finished("a:1", failed=False, max_failures=2, ejection_s=10)
    for _ in range(2):
        balancer.started("b:1")
        balancer.finished("b:1", failed=True, max_failures=2, ejection_s=10)
    assert {balancer.pick(["a:1", "b:1"], set()) for _ in range(20)} == {"a:1"}
    now[0] = 11.0
    assert "b:1" in {balancer.pick(["a:1", "b:1"], set()) for _ in range(50)}
