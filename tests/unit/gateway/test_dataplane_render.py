"""The HAProxy configuration rendered from a routing table: what needs a reload and
what does not, canary thresholds, server slots, API-key maps; every render is
accepted by the real `haproxy -c`."""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import re

import pytest

from matrixinfer.core import pki
from matrixinfer.gateway.adapters.dataplane.haproxy import ConfigRefused, check_config
from matrixinfer.gateway.adapters.dataplane.manager import replica_client_pem
from matrixinfer.gateway.adapters.dataplane.render import (
    REPLICA_CA,
    REPLICA_CLIENT_CERT,
    ApiKey,
    Options,
    Ports,
    Render,
    Replica,
    ReplicaTls,
    api_keys_maps,
    assign_slots,
    render,
    thresholds,
)
from matrixinfer.gateway.domain.routing import (
    HeaderMatch,
    Limit,
    Route,
    RouteLimit,
    RoutingTable,
    Rule,
    Server,
)
from matrixinfer.gateway.settings import GatewaySettings

PORTS = Ports("127.0.0.1", 18001, 18000, 18101, 18100)
KEY = ApiKey("ab" * 32, frozenset({"iris"}), "team-a")


def table(
    weights: tuple[int, int] = (90, 10),
    stable_replicas: tuple[str, ...] = ("127.0.0.1:5001",),
    header: HeaderMatch | None = None,
) -> RoutingTable:
    stable = Server("default", "iris", "iris", stable_replicas, model_infer="iris")
    canary = Server(
        "default",
        "iris-v2",
        "iris-v2",
        ("127.0.0.1:5003",),
        model_infer="iris-v2",
        hash_header="x-user",
    )
    rules = (
        Rule("pinned", "2", (), ((canary, 100),)),
        Rule(
            "main",
            "",
            (header,) if header else (),
            ((stable, weights[0]), (canary, weights[1])),
            timeout_ms=500,
        ),
    )
    t = RoutingTable(
        http_ports={
            "127.0.0.1:5001": 5002,
            "127.0.0.1:5005": 5006,
            "127.0.0.1:5003": 5004,
        }
    )
    t.routes["iris"] = Route(
        "iris", "default", rules, RouteLimit(Limit(10, 20), "tenant", True)
    )
    return t


def rendered(t: RoutingTable, tmp: pathlib.Path, **options: object) -> Render:
    return render(
        t,
        [KEY],
        PORTS,
        Options(**options),  # type: ignore[arg-type]
        str(tmp),
    )


def write(r: Render, tmp: pathlib.Path) -> pathlib.Path:
    for name, text in r.files.items():
        (tmp / name).write_text(text)
    for name, entries in r.maps.items():
        (tmp / name).write_text("".join(f"{k} {v}\n" for k, v in entries.items()))
    path = tmp / "haproxy.cfg"
    path.write_text(r.config)
    return path


def test_thresholds_are_cumulative_shares() -> None:
    assert thresholds([90, 10]) == [9000, 10000]
    assert thresholds([1, 1, 1]) == [3333, 6667, 10000]
    assert thresholds([0, 0]) == [10000, 10000]  # all zero: the first takes all
    assert thresholds([0, 5]) == [0, 10000]


def test_slots_keep_replicas_in_place_and_grow_in_powers_of_two() -> None:
    a, b, c = (Replica("127.0.0.1", p, p + 1) for p in (1, 3, 5))
    first = assign_slots(None, (a, b))
    assert first == [a, b, None, None]
    # b goes, c comes: a stays in slot 1, c takes a free slot (not b's).
    second = assign_slots(first, (a, c))
    assert second == [a, None, c, None]
    many = tuple(Replica("127.0.0.1", p, p + 1) for p in range(10, 15))
    assert len(assign_slots(second, many)) == 8


def test_a_slot_a_replica_just_left_is_not_given_to_another() -> None:
    """HAProxy keeps idle connections per server slot and reuses them after the
    slot's address changes: a new replica in the slot of one that is still
    stopping would receive requests on the old replica's connections."""
    a, b, c, d = (Replica("127.0.0.1", p, p + 1) for p in (1, 3, 5, 7))
    # c leaves as d comes, slot 1 emptied a moment ago: d takes slot 4.
    assert assign_slots([None, b, c, None], (b, d), frozenset({1})) == [
        None,
        b,
        None,
        d,
    ]
    # Every free slot cooling: the slots double (a reload) rather than reuse one.
    grown = assign_slots([a, b, c, None], (d,), frozenset({4}))
    assert grown[4:] == [d, None, None, None] and grown[:4] == [None] * 4


def test_api_key_maps() -> None:
    maps = api_keys_maps([KEY, ApiKey("cd" * 32, frozenset({"*"}), "")])
    assert maps["keys.map"] == {"ab" * 32: "team-a", "cd" * 32: "-"}
    assert set(maps["scopes.map"]) == {f"{'ab' * 32}:iris", f"{'cd' * 32}:*"}


def test_weights_and_replicas_change_without_a_reload(tmp_path: pathlib.Path) -> None:
    before = rendered(table(), tmp_path)
    weights = rendered(table(weights=(50, 50)), tmp_path)
    assert weights.structure == before.structure
    assert weights.maps["weights.map"]["default:iris/1/0"] == "5000"
    assert before.maps["weights.map"]["default:iris/1/0"] == "9000"
    more = rendered(
        table(stable_replicas=("127.0.0.1:5001", "127.0.0.1:5005")), tmp_path
    )
    assert more.structure == before.structure
    assert more.slots["default:iris:iris"][:2] == [
        Replica("127.0.0.1", 5001, 5002),
        Replica("127.0.0.1", 5005, 5006),
    ]
    # A new header match is structure: a reload.
    header = rendered(table(header=HeaderMatch("x-canary", exact="yes")), tmp_path)
    assert header.structure != before.structure


def test_the_render_is_what_haproxy_accepts(tmp_path: pathlib.Path) -> None:
    r = rendered(
        table(header=HeaderMatch("x-user", regex=re.compile(r"team-[0-9]+ \"x\""))),
        tmp_path,
        peers=(("gw1", "127.0.0.1:17001"), ("gw2", "127.0.0.1:17002")),
        peer_name="gw1",
    )
    asyncio.run(check_config("haproxy", write(r, tmp_path)))
    config = r.config
    # The body's first field routes gRPC; REST goes by path; the rename filter is
    # on the backend whose Triton model differs from the public name.
    assert "req.body,bytes(5),protobuf(1)" in config
    assert "filter lua.grpc-rename" in config
    assert "balance hdr(x-user)" in config and "hash-type consistent" in config
    assert "stick-table type string" in config and "peers mi" in config
    off = rendered(table(), tmp_path, auth=False)
    assert "keys.map" not in off.config
    # Each load balancer type is HAProxy's own algorithm.
    assert "balance leastconn" in config
    turns = table()
    route = turns.routes["iris"]
    stable = route.rules[1].targets[0][0]  # the target without a hash header
    server = dataclasses.replace(stable, balance="ROUND_ROBIN")
    rule = dataclasses.replace(route.rules[1], targets=((server, 100),))
    turns.routes["iris"] = dataclasses.replace(route, rules=(rule,))
    assert "balance roundrobin" in rendered(turns, tmp_path).config
    # A rule's priority: set for inference calls of that rule only, written into
    # gRPC bodies by the backend's filter (every backend of the route has it).
    ranked = table()
    route = ranked.routes["iris"]
    first = dataclasses.replace(route.rules[0], priority=1)
    ranked.routes["iris"] = dataclasses.replace(route, rules=(first, route.rules[1]))
    r = rendered(ranked, tmp_path)
    asyncio.run(check_config("haproxy", write(r, tmp_path)))
    assert "set-var(txn.prio) int(1) if !slow infer_call" in r.config
    assert r.config.count("filter lua.grpc-rename") == 2


def test_a_broken_render_is_refused_with_haproxy_s_reason(
    tmp_path: pathlib.Path,
) -> None:
    r = rendered(table(), tmp_path)
    broken = dataclasses.replace(
        r, config=r.config + "backend x\n    balance nonsense\n"
    )
    with pytest.raises(ConfigRefused, match="balance"):
        asyncio.run(check_config("haproxy", write(broken, tmp_path)))


def server_lines(config: str, backend: str) -> list[str]:
    """The `server` lines of one backend."""
    lines, inside = [], False
    for line in config.splitlines():
        if line.startswith("backend "):
            inside = line == f"backend {backend}"
        elif inside and line.startswith("    server "):
            lines.append(line)
    return lines


def test_grpc_to_the_replicas_is_mtls_when_asked_and_plaintext_otherwise(
    tmp_path: pathlib.Path,
) -> None:
    """With replica TLS every gRPC server slot (empty or not) speaks TLS to the
    replica with the gateway's certificate, verifies the replica's against the CA
    and requires its identity; health checks and REST stay plaintext on Triton's
    HTTP port. Without it nothing of this is rendered."""
    tls = ReplicaTls(pki.identity_name(pki.REPLICA))
    r = rendered(table(), tmp_path, replica_tls=tls)
    files = pki.ensure_pki(tmp_path / "pki")
    pem, ca = replica_client_pem(files["gateway"])
    (tmp_path / REPLICA_CLIENT_CERT).write_text(pem)
    (tmp_path / REPLICA_CA).write_text(ca)
    asyncio.run(check_config("haproxy", write(r, tmp_path)))
    wanted = (
        f" ssl verify required ca-file {tmp_path}/{REPLICA_CA}"
        f" crt {tmp_path}/{REPLICA_CLIENT_CERT} alpn h2"
        " verifyhost replica.matrixinfer.internal no-check-ssl"
    )
    grpc = server_lines(r.config, "g:default:iris:iris")
    assert grpc[0] == (
        f"    server r1 127.0.0.1:5001 proto h2 check-proto h1{wanted} port 5002"
    )
    assert grpc[1:] == [
        f"    server r{i} 127.0.0.1:1 proto h2 check-proto h1{wanted} disabled"
        for i in (2, 3, 4)
    ]
    # REST (and the health checks, `port` and no-check-ssl) stay plaintext.
    assert server_lines(r.config, "h:default:iris:iris")[0] == (
        "    server r1 127.0.0.1:5002"
    )
    assert all(" ssl" not in line for line in server_lines(r.config, "slow_grpc"))
    # The slots stay runtime state: replicas change without a reload.
    more = rendered(
        table(stable_replicas=("127.0.0.1:5001", "127.0.0.1:5005")),
        tmp_path,
        replica_tls=tls,
    )
    assert more.structure == r.structure
    assert server_lines(more.config, "g:default:iris:iris")[1] == (
        f"    server r2 127.0.0.1:5005 proto h2 check-proto h1{wanted} port 5006"
    )
    # Without: plaintext h2, as before.
    plain = rendered(table(), tmp_path)
    assert server_lines(plain.config, "g:default:iris:iris")[0] == (
        "    server r1 127.0.0.1:5001 proto h2 check-proto h1 port 5002"
    )
    for word in (" ssl", "verify", "ca-file", "crt ", "alpn", REPLICA_CLIENT_CERT):
        assert word not in plain.config
    # The PEM HAProxy loads: the certificate, then its key, no blank line.
    assert pem.startswith("-----BEGIN CERTIFICATE-----")
    assert "-----BEGIN PRIVATE KEY-----" in pem and "\n\n" not in pem


def test_the_gateway_speaks_mtls_to_the_replicas_with_its_own_certificate(
    tmp_path: pathlib.Path,
) -> None:
    """`replica_tls` auto: on with the gateway's tls_* files, off without; `off`
    keeps plaintext with them; `on` needs them."""
    files = pki.ensure_pki(tmp_path)["gateway"]
    own = {
        "tls_cert_file": files.cert,
        "tls_key_file": files.key,
        "tls_ca_file": files.ca,
    }
    assert GatewaySettings(**own).replica_tls_files() == files  # type: ignore[arg-type]
    assert GatewaySettings().replica_tls_files() is None
    off = GatewaySettings(**own, replica_tls="off")  # type: ignore[arg-type]
    assert off.replica_tls_files() is None
    with pytest.raises(ValueError, match="replica_tls on needs tls_cert_file"):
        GatewaySettings(replica_tls="on")
