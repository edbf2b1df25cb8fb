"""The HAProxy configuration for a routing table: a pure function, no I/O.

What a render holds is split by how it may change at run time:

- ``config``: the text of ``haproxy.cfg``. It holds the *structure*: one frontend per
  protocol, one ACL line per route rule, one backend per (route, ModelServer) pair
  with a fixed number of server slots, the traffic policies, the rate-limit tables.
  Changing it takes a seamless reload.
- ``maps``: files HAProxy looks values up in on every request (public model name →
  route, canary thresholds, API-key hashes and their scopes). Changed at run time
  with ``prepare map``/``commit map``, no reload.
- ``slots``: the replica address in each server slot of each backend. Changed at run
  time with ``set server``, no reload.

Requests HAProxy does not carry itself go to the gateway's Python ("the slow path"):
a model with no ready replica (the activator holds it and wakes the autoscaler),
a rule that mirrors, a gRPC call to a model whose Triton name differs from its
public name, JWTs, ambiguous credentials, server-level calls and the admin API.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from google.rpc import error_details_pb2, status_pb2

from matrixinfer.gateway.domain.auth import CLIENT_CERT_HEADER
from matrixinfer.gateway.domain.routing import HeaderMatch, Route, RoutingTable, Server

GRPC_SERVICE = "/inference.GRPCInferenceService/"
#: Model-scoped calls: their request message has model_name in field 1 and
#: model_version in field 2, which is all HAProxy reads of the body.
GRPC_MODEL_METHODS = (
    "ModelInfer",
    "ModelReady",
    "ModelMetadata",
    "ModelConfig",
    "ModelStatistics",
)
GRPC_STREAM_METHOD = "ModelStreamInfer"
#: Triton's own administration: never reachable by clients.
GRPC_REFUSED_PREFIXES = (
    "Repository",
    "SystemSharedMemory",
    "CudaSharedMemory",
    "TraceSetting",
    "LogSettings",
)
#: How Triton's REST errors for a request body it cannot parse begin.
UNPARSABLE_BODY = (
    '{"error":"Unable to parse ',
    '{"error":"failed to parse the request JSON buffer',
)
#: gRPC status codes HAProxy answers itself.
NOT_FOUND, PERMISSION_DENIED, RESOURCE_EXHAUSTED, UNAUTHENTICATED = 5, 7, 8, 16
_HTTP_OF = {NOT_FOUND: 404, PERMISSION_DENIED: 403, RESOURCE_EXHAUSTED: 429, 16: 401}
#: Weighted picks draw an integer below this; each target's cumulative share of it
#: is a map value, so weights change without a reload.
WEIGHT_SCALE = 10_000
MIN_SLOTS = 4
#: HAProxy's Lua: the tensor checks (gRPC and REST binary) and the filter that
#: rewrites a gRPC message's head (rename, priority).
LUA_SCRIPT = "matrixinfer.lua"
#: TLS at the edge: the certificate chain and key HAProxy serves (one PEM file in
#: the data plane's folder, replaced at run time by ``set ssl cert``) and the CAs
#: that sign client certificates.
EDGE_CERT = "edge.pem"
CLIENT_CA = "client-ca.pem"
#: mTLS to the replicas' gRPC ports: the gateway's certificate and key (one PEM
#: file, as HAProxy loads a client certificate) and the CA that signs the
#: replicas' certificates, copied into the data plane's folder.
REPLICA_CLIENT_CERT = "replica-client.pem"
REPLICA_CA = "replica-ca.pem"
#: Mozilla's "intermediate" profile: forward secrecy and AEAD only; TLS 1.3 suites
#: as OpenSSL orders them. No RC4, 3DES, CBC, NULL or export ciphers.
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
TLS13_SUITES = ":".join(
    ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
)


def lua_source() -> str:
    """The Lua shipped beside this module (written into the data plane's folder,
    which HAProxy may see from another container)."""
    return (importlib.resources.files(__package__) / LUA_SCRIPT).read_text()


_TOKEN = re.compile(r"^[A-Za-z0-9._-]+$")
_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")


@dataclass(frozen=True)
class Ports:
    """Where HAProxy listens and where the gateway's slow path listens."""

    host: str
    grpc: int
    http: int
    slow_grpc: int
    slow_http: int
    stats: int = 0  # HAProxy's Prometheus exporter; 0: none


@dataclass(frozen=True)
class JwtPlan:
    """What HAProxy needs to verify JWTs itself: the accepted issuer, audience and
    algorithms, the clock leeway, and the JWKS keys as (kid, declared alg or "",
    public key PEM)."""

    issuer: str
    audience: str
    algorithms: tuple[str, ...]
    leeway_s: int
    max_token_bytes: int
    keys: tuple[tuple[str, str, str], ...]


@dataclass(frozen=True)
class ClientCert:
    """A client certificate subject HAProxy accepts: the hex sha256 of its CN, the
    models it may call ("*" for all) and its tenant ("" for none)."""

    cn_sha256_hex: str
    models: frozenset[str]
    tenant: str


@dataclass(frozen=True)
class EdgeTls:
    """TLS on the public ports (``EDGE_CERT`` in the data plane's folder); with
    ``client_ca``, an optional client certificate signed by ``CLIENT_CA`` is a
    credential, mapped to scopes by ``clients``. ``header_secret`` proves to the
    slow path that the client-certificate header it reads was set by HAProxy."""

    client_ca: bool = False
    clients: tuple[ClientCert, ...] = ()
    header_secret: str = ""


@dataclass(frozen=True)
class ReplicaTls:
    """HAProxy's gRPC to the replicas over mutual TLS: it presents
    ``REPLICA_CLIENT_CERT``, verifies the replica's certificate against
    ``REPLICA_CA`` and requires ``server_name`` in it (the address is a pod's or
    127.0.0.1, never the identity). Health checks stay on Triton's plaintext HTTP
    port."""

    server_name: str


def replica_tls_args(tls: ReplicaTls, directory: str) -> str:
    """The server-line options of a gRPC server slot with mTLS to the replica."""
    return (
        f" ssl verify required ca-file {directory}/{REPLICA_CA}"
        f" crt {directory}/{REPLICA_CLIENT_CERT} alpn h2"
        f" verifyhost {tls.server_name} no-check-ssl"
    )


@dataclass(frozen=True)
class Options:
    auth: bool = True
    default_timeout_ms: int = 30_000
    max_timeout_ms: int = 300_000
    threads: int = 0
    #: Shared stick tables: (name, host:port) of every gateway, this one included.
    peers: tuple[tuple[str, str], ...] = ()
    peer_name: str = ""
    jwt: JwtPlan | None = None
    tls: EdgeTls | None = None
    #: mTLS from HAProxy to the replicas' gRPC ports; None: plaintext.
    replica_tls: ReplicaTls | None = None


@dataclass(frozen=True)
class ApiKey:
    """What HAProxy needs of an API key: the hex sha256 of the whole key, the
    models it may call ("*" for all) and its tenant (rate limits per tenant)."""

    sha256_hex: str
    models: frozenset[str]
    tenant: str


@dataclass(frozen=True)
class Replica:
    address: str
    grpc_port: int
    http_port: int


@dataclass(frozen=True)
class Backend:
    """One ModelServer as one route reaches it (ids: "<ns>:<route>:<server>",
    HAProxy-safe since DNS names have no ':')."""

    server: Server
    public_name: str
    #: Some rule of the route sets a Triton priority (the Lua filter adds it).
    priority: bool = False


@dataclass
class Render:
    config: str
    maps: dict[str, dict[str, str]]
    #: backend id → replica per slot (None: empty slot, in maintenance)
    slots: dict[str, list[Replica | None]]
    #: the part of the config that needs a reload when it changes
    structure: str
    #: backend id → (namespace, ModelInfer, public model) for metrics and load
    owners: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    #: pattern files (header matches) written beside the config
    files: dict[str, str] = field(default_factory=dict)


def api_keys_maps(keys: Iterable[ApiKey]) -> dict[str, dict[str, str]]:
    known: dict[str, str] = {}
    scopes: dict[str, str] = {}
    for key in keys:
        known[key.sha256_hex] = key.tenant or "-"
        for model in key.models:
            scopes[f"{key.sha256_hex}:{model}"] = "1"
    return {"keys.map": known, "scopes.map": scopes}


def client_cert_maps(clients: Iterable[ClientCert]) -> dict[str, dict[str, str]]:
    known: dict[str, str] = {}
    scopes: dict[str, str] = {}
    for client in clients:
        known[client.cn_sha256_hex] = client.tenant or "-"
        for model in client.models:
            scopes[f"{client.cn_sha256_hex}:{model}"] = "1"
    return {"certs.map": known, "certscopes.map": scopes}


def thresholds(weights: list[int]) -> list[int]:
    """Cumulative upper bounds (exclusive) of each target in [0, WEIGHT_SCALE)."""
    total = sum(max(0, w) for w in weights)
    if total <= 0:  # all zero: the first target takes everything, as before
        return [WEIGHT_SCALE] + [WEIGHT_SCALE] * (len(weights) - 1)
    bounds, running = [], 0
    for w in weights:
        running += max(0, w)
        bounds.append(round(WEIGHT_SCALE * running / total))
    bounds[-1] = WEIGHT_SCALE
    return bounds


def slot_count(replicas: int) -> int:
    n = MIN_SLOTS
    while n < replicas:
        n *= 2
    return n


def assign_slots(
    previous: list[Replica | None] | None,
    replicas: tuple[Replica, ...],
    cooling: frozenset[int] = frozenset(),
) -> list[Replica | None]:
    """Keep every replica that stays in its slot; new ones take free slots; the
    slot count grows (a reload) only when they no longer fit.

    ``cooling``: slot numbers (1-based) emptied recently. A new replica never takes
    one: HAProxy may still hold idle connections of that slot to the replica that
    left (still draining, or stopping), and would reuse them for the new address.
    """
    size = max(slot_count(len(replicas)), len(previous or []))
    slots: list[Replica | None] = list(previous or []) + [None] * (
        size - len(previous or [])
    )
    wanted = set(replicas)
    # Slots whose replica leaves in this very change cool down too.
    cooling = cooling | {
        i + 1 for i, r in enumerate(slots) if r is not None and r not in wanted
    }
    slots = [r if r in wanted else None for r in slots]
    placed = {r for r in slots if r is not None}
    for replica in replicas:
        if replica in placed:
            continue
        free = [i for i, r in enumerate(slots) if r is None and (i + 1) not in cooling]
        if not free:
            slots += [None] * len(slots)  # twice the slots: a reload
            free = [len(slots) // 2]
        slots[free[0]] = replica
    return slots


def _q(text: str) -> str:
    """A double-quoted HAProxy argument (our own fixed texts only)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._:-]", "_", text)


def _grpc_error(code: int, message: str, cond: str, details: str = "") -> str:
    extra = f" hdr grpc-status-details-bin {details}" if details else ""
    return (
        f"    http-request return status 200 "
        f"hdr grpc-status {code} hdr grpc-message {_q(message)}{extra} {cond}"
    )


def retry_details(code: int, message: str, retry_after_s: float) -> str:
    """google.rpc.Status with RetryInfo, as gRPC carries it in a trailer (base64)."""
    retry = error_details_pb2.RetryInfo()
    retry.retry_delay.FromNanoseconds(int(retry_after_s * 1e9))
    status = status_pb2.Status(code=code, message=message)
    status.details.add().Pack(retry)
    return base64.b64encode(status.SerializeToString()).decode().rstrip("=")


def _rest_error(code: int, message: str, cond: str, retry_after: bool = False) -> str:
    body = '{"error":"' + message.replace('"', "'") + '"}'
    extra = " hdr retry-after 1" if retry_after else ""
    return (
        f"    http-request return status {_HTTP_OF[code]} content-type "
        f"application/json{extra} string {_q(body)} {cond}"
    )


@dataclass(frozen=True)
class _Limit:
    route: str
    table: str
    period_ms: int
    burst: int
    per_tenant: bool
    retry_after_s: float
    #: `global: true`: the table is shared with the other gateways (peers)
    shared: bool


@dataclass
class _Ctx:
    files: dict[str, str]
    directory: str

    def pattern_file(self, values: list[str]) -> str:
        text = "\n".join(values) + "\n"
        name = "p_" + hashlib.sha256(text.encode()).hexdigest()[:16] + ".pat"
        self.files[name] = text
        return f"{self.directory}/{name}"


def _header_acl(ctx: _Ctx, match: HeaderMatch) -> str | None:
    name = match.name.lower()
    if not _HEADER_NAME.match(name):
        return None
    fetch = f"req.fhdr({name})"
    values = [match.exact, match.prefix, match.regex.pattern if match.regex else None]
    if any(v is not None and ("\n" in v or "\r" in v) for v in values):
        return None  # one pattern per line in the file: such a value never matches
    if match.exact is not None:
        return f"{{ {fetch} -m str -f {ctx.pattern_file([match.exact])} }}"
    if match.prefix is not None:
        return f"{{ {fetch} -m beg -f {ctx.pattern_file([match.prefix])} }}"
    if match.regex is not None:
        # Whole-value match, like the Python router's fullmatch.
        pattern = f"^(?:{match.regex.pattern})$"
        return f"{{ {fetch} -m reg -f {ctx.pattern_file([pattern])} }}"
    return None


def _route_id(route: Route) -> str:
    return _safe_id(f"{route.namespace}:{route.model_name}")


def _backend_id(route: Route, server: Server) -> str:
    return _safe_id(f"{route.namespace}:{route.model_name}:{server.name}")


def _replicas(server: Server, http_ports: Mapping[str, int]) -> tuple[Replica, ...]:
    out = []
    for address in server.replicas:
        host, _, port = address.rpartition(":")
        http = http_ports.get(address, 0)
        if http:
            out.append(Replica(host, int(port), http))
    return tuple(out)


def render(
    table: RoutingTable,
    keys: Iterable[ApiKey],
    ports: Ports,
    options: Options,
    directory: str,
    previous_slots: Mapping[str, list[Replica | None]] | None = None,
    cooling: Mapping[str, frozenset[int]] | None = None,
) -> Render:
    ctx = _Ctx({LUA_SCRIPT: lua_source()}, directory)
    maps: dict[str, dict[str, str]] = {"routes.map": {}, "weights.map": {}}
    maps.update(api_keys_maps(keys))
    if options.tls is not None and options.tls.client_ca:
        maps.update(client_cert_maps(options.tls.clients))
    if options.jwt is not None:
        maps["jwks.map"], maps["jwks-alg.map"] = {}, {}
        for kid, alg, pem in options.jwt.keys:
            ctx.files[_pem_name(pem)] = pem
            kid_hash = hashlib.sha256(kid.encode()).hexdigest()
            maps["jwks.map"][kid_hash] = f"{directory}/{_pem_name(pem)}"
            maps["jwks-alg.map"][kid_hash] = alg or "any"
    slots: dict[str, list[Replica | None]] = {}
    owners: dict[str, tuple[str, str, str]] = {}
    backends: dict[str, Backend] = {}
    routing: list[str] = []  # the rule lines, shared by both frontends
    limits: list[_Limit] = []

    for route in table.routes.values():
        rid = _route_id(route)
        maps["routes.map"][route.model_name] = rid
        for index, rule in enumerate(route.rules):
            rule_id = f"{rid}/{index}"
            conds = [f"{{ var(txn.route) -m str {rid} }}"]
            if rule.version:
                if _TOKEN.match(rule.version):
                    conds.append(f"{{ var(txn.version) -m str {rule.version} }}")
                else:
                    conds.append(
                        "{ var(txn.version) -m str -f "
                        f"{ctx.pattern_file([rule.version])} }}"
                    )
            if rule.tenants:
                # Set by HAProxy's own API key or JWT check (before the rules); a
                # credential the slow path verifies is matched there.
                conds.append(
                    "{ var(txn.tenant) -m str -f "
                    f"{ctx.pattern_file(sorted(rule.tenants))} }}"
                )
            unusable = False
            for header in rule.headers:
                acl = _header_acl(ctx, header)
                if acl is None:
                    unusable = True
                conds.append(acl or "")
            if unusable:
                continue  # a header name HAProxy cannot express never matches
            routing.append(
                f"    http-request set-var(txn.rule) str({rule_id}) "
                f"if !slow !{{ var(txn.rule) -m found }} {' '.join(conds)}"
            )
            if rule.timeout_ms:
                routing.append(
                    f"    http-request set-var(txn.tmo) int({rule.timeout_ms}) "
                    f"if !slow {{ var(txn.rule) -m str {rule_id} }}"
                )
            if rule.priority:
                # Inference only: unary, streamed, REST's /infer and generate.
                here = f"{{ var(txn.rule) -m str {rule_id} }}"
                routing.append(
                    f"    http-request set-var(txn.prio) int({rule.priority}) "
                    f"if !slow infer_call {here} or !slow stream_call {here} "
                    f"or !slow generate_call {here}"
                )
            bounds = thresholds([w for _, w in rule.targets])
            for t_index, ((server, _), bound) in enumerate(
                zip(rule.targets, bounds, strict=True)
            ):
                bid = _backend_id(route, server)
                maps["weights.map"][f"{rule_id}/{t_index}"] = str(bound)
                if bid not in backends:
                    backends[bid] = Backend(
                        server,
                        route.model_name,
                        any(r.priority for r in route.rules),
                    )
                    slots[bid] = assign_slots(
                        (previous_slots or {}).get(bid),
                        _replicas(server, table.http_ports),
                        (cooling or {}).get(bid, frozenset()),
                    )
                    owners[bid] = (
                        server.namespace,
                        server.model_infer,
                        route.model_name,
                    )
                here = (
                    f"!slow {{ var(txn.rule) -m str {rule_id} }} "
                    "!{ var(txn.be) -m found }"
                )
                routing.append(
                    f"    http-request set-var(txn.cut) str({rule_id}/{t_index}),"
                    f"map_str_int({directory}/weights.map,{WEIGHT_SCALE}) if {here}"
                )
                routing.append(
                    f"    http-request set-var(txn.be) str({bid}) if {here} "
                    "{ var(txn.draw),sub(txn.cut) -m int lt 0 }"
                )
            if rule.mirror is not None:
                routing.append(
                    f"    http-request set-var(txn.slow) str(mirror) "
                    f"if !slow {{ var(txn.rule) -m str {rule_id} }}"
                )
        if route.rate_limit is not None:
            lim = route.rate_limit.limit
            period_ms = max(1, round(1000 * lim.burst / lim.rate_per_s))
            limits.append(
                _Limit(
                    rid,
                    f"rl:{rid}",
                    period_ms,
                    lim.burst,
                    route.rate_limit.per == "tenant",
                    1.0 / lim.rate_per_s,
                    route.rate_limit.global_,
                )
            )

    # A priority is written into the gRPC body by the backend's Lua filter; REST
    # bodies and streams (every message would need it) take the slow path.
    routing.append(
        "    http-request set-var(txn.slow) str(priority) if !slow "
        "{ var(txn.prio) -m found } !is_grpc or !slow { var(txn.prio) -m found } "
        "stream_call"
    )
    # Draws and per-backend decisions that do not depend on the rules' order.
    for bid, backend in backends.items():
        routing.append(
            f"    http-request set-var(txn.slow) str(zero) if !slow "
            f"{{ var(txn.be) -m str {bid} }} {{ nbsrv(g:{bid}) eq 0 }}"
        )
        triton = backend.server.triton_model
        if triton and triton != backend.public_name:
            # The Lua filter of the backend rewrites model_name in the body;
            # streams (every message carries the name) take the slow path.
            routing.append(
                f"    http-request set-var(txn.rename) str({triton}) if !slow is_grpc "
                f"{{ var(txn.be) -m str {bid} }}"
            )
            routing.append(
                f"    http-request set-var(txn.slow) str(rename) if !slow is_grpc "
                f"stream_call {{ var(txn.be) -m str {bid} }}"
            )

    structure_parts = [_global(ports, options, directory), _defaults(options)]
    for proto in ("grpc", "rest"):
        structure_parts.append(
            _frontend(proto, ports, options, directory, routing, limits, ctx)
        )
    for bid, backend in backends.items():
        structure_parts.append(
            _backend(
                bid,
                backend,
                len(slots[bid]),
                options,
                grpc=True,
                server_args=(
                    replica_tls_args(options.replica_tls, directory)
                    if options.replica_tls is not None
                    else ""
                ),
            )
        )
        structure_parts.append(
            _backend(bid, backend, len(slots[bid]), options, grpc=False)
        )
    structure_parts.append(_slow_backends(ports, options))
    for limit in limits:
        table_name, period_ms = limit.table, limit.period_ms
        peers = " peers mi" if options.peers and limit.shared else ""
        structure_parts.append(
            f"backend {table_name}\n    stick-table type string len 200 size 100k "
            f"expire {max(10_000, 2 * period_ms)}ms store "
            f"http_req_rate({period_ms}ms){peers}\n"
        )
    if options.peers:
        lines = ["peers mi"]
        for name, address in options.peers:
            lines.append(f"    peer {name} {address}")
        structure_parts.append("\n".join(lines) + "\n")
    if ports.stats:
        structure_parts.append(
            f"frontend stats\n    bind {ports.host}:{ports.stats}\n"
            "    http-request use-service prometheus-exporter if { path /metrics }\n"
            "    http-request return status 404\n"
        )
    structure = "\n".join(structure_parts)
    # Slot contents are not structure (set server), but the first start and every
    # reload must carry the current addresses: they go in a separate layer.
    config = _with_slots(structure, slots)
    return Render(config, maps, slots, structure, owners, ctx.files)


def _global(ports: Ports, options: Options, directory: str) -> str:
    lines = [
        "global",
        "    master-worker",
        f"    stats socket {directory}/admin.sock mode 600 "
        "level admin expose-fd listeners",
        "    stats timeout 1m",
        # After a reload the old worker finishes its streams; the longest a call
        # may take bounds how long it lingers.
        f"    hard-stop-after {options.max_timeout_ms + 10_000}ms",
    ]
    # One Lua state per thread: with one shared state, 2.6 fails filters that run
    # on several threads at once ("attempt to index a thread value").
    lines.append(f"    lua-load-per-thread {directory}/{LUA_SCRIPT}")
    if options.threads:
        lines.append(f"    nbthread {options.threads}")
    if options.peer_name:
        lines.append(f"    localpeer {options.peer_name}")
    if options.tls is not None:
        lines += [
            f"    ssl-default-bind-ciphers {TLS12_CIPHERS}",
            f"    ssl-default-bind-ciphersuites {TLS13_SUITES}",
            # No TLS 1.0/1.1; no session tickets (their key never rotates here).
            "    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets",
        ]
    return "\n".join(lines) + "\n"


def _bind(proto: str, ports: Ports, options: Options, directory: str) -> str:
    grpc = proto == "grpc"
    line = f"    bind {ports.host}:{ports.grpc if grpc else ports.http}"
    tls = options.tls
    if tls is not None:
        line += f" ssl crt {directory}/{EDGE_CERT}"
        line += " alpn h2" if grpc else " alpn h2,http/1.1"
        if tls.client_ca:
            # optional: a caller may present a certificate; one that does not
            # verify against the CA fails the handshake.
            line += f" ca-file {directory}/{CLIENT_CA} verify optional"
    return line + (" proto h2" if grpc else "")


def _defaults(options: Options) -> str:
    return (
        "defaults\n"
        "    mode http\n"
        "    timeout connect 2s\n"
        f"    timeout client {options.max_timeout_ms}ms\n"
        f"    timeout server {options.default_timeout_ms}ms\n"
        "    timeout http-request 30s\n"
        "    timeout queue 10s\n"
        "    timeout tunnel 1h\n"
    )


def _frontend(
    proto: str,
    ports: Ports,
    options: Options,
    directory: str,
    routing: list[str],
    limits: list[_Limit],
    ctx: _Ctx,
) -> str:
    grpc = proto == "grpc"
    error = _grpc_error if grpc else _rest_error
    out = [f"frontend {proto}"]
    out.append(_bind(proto, ports, options, directory))
    out.append("    acl slow var(txn.slow) -m found")
    out.extend(_generated_errors(grpc))
    out.append(f"    acl is_grpc always_{'true' if grpc else 'false'}")
    if not grpc:
        # An h2 request HAProxy refuses itself (401, 403, 404, 429) before reading
        # its body ends with RST_STREAM(CANCEL) after the answer, which curl (7.88)
        # reports as an error instead of the answer: read a body that fits the
        # buffer first (curl speaks h2 wherever TLS offers it).
        out.append(
            "    http-request wait-for-body time 1s if METH_POST { req.ver -m str 2.0 }"
        )
        # Triton answers a body it cannot parse ("Unable to parse 'data': ...",
        # "failed to parse the request JSON buffer: ...") with 500: the client's
        # error, a 400 as Triton's other request errors are. Only 500s are read.
        out.append("    http-response wait-for-body time 1s if { status 500 }")
        patterns = " ".join(_q(p) for p in UNPARSABLE_BODY)
        out.append(
            "    http-response set-status 400 if { status 500 } "
            f"{{ res.body -m beg {patterns} }}"
        )
        out.append("    acl stream_call always_false")
        out.append("    acl infer_call path_end /infer")
        out.append("    acl generate_call path_end /generate /generate_stream")
    if grpc:
        out.append("    acl generate_call always_false")
        for prefix in GRPC_REFUSED_PREFIXES:
            out.append(
                error(
                    PERMISSION_DENIED,
                    "this API is not available through the gateway",
                    f"if {{ path_beg {GRPC_SERVICE}{prefix} }}",
                )
            )
        unary = " ".join(GRPC_SERVICE + m for m in GRPC_MODEL_METHODS)
        out.append(f"    acl model_call path {unary}")
        out.append(f"    acl stream_call path {GRPC_SERVICE}{GRPC_STREAM_METHOD}")
        out.append(
            "    http-request set-var(txn.slow) str(server) if !model_call !stream_call"
        )
        # Only the first bytes are read: model_name is field 1 and serializers write
        # it first, so a partly buffered body is enough (tensors stay unread).
        # ModelInfer: the whole message when it fits the buffer (its tensors are
        # checked against their shapes); other calls: the head is enough.
        out.append(f"    acl infer_call path {GRPC_SERVICE}ModelInfer")
        out.append("    http-request wait-for-body time 2s if infer_call")
        out.append(
            "    http-request wait-for-body time 2s at-least 1k "
            "if model_call !infer_call"
        )
        out.append("    http-request wait-for-body time 2s at-least 12 if stream_call")
        out.append(
            "    http-request set-var(txn.model) req.body,bytes(5),protobuf(1) if !slow"
        )
        out.append(
            "    http-request set-var(txn.version) "
            "req.body,bytes(5),protobuf(2) if !slow"
        )
        # A body HAProxy cannot read (malformed, compressed): Python answers it.
        out.append(
            "    http-request set-var(txn.slow) str(unreadable) if !slow "
            "!{ var(txn.model) -m found }"
        )
        # A grpc-timeout the client sends bounds the server timeout (ms).
        for unit, factor in (("S", "mul(1000)"), ("M", "mul(60000)"), ("m", "add(0)")):
            out.append(
                f"    http-request set-var(txn.ctmo) req.hdr(grpc-timeout),"
                f"regsub({unit}$,),{factor} if {{ "
                f"req.hdr(grpc-timeout) -m end {unit} }}"
            )
    else:
        out.append(
            "    acl model_path path_reg "
            "^/v2/models/[^/]+(/versions/[^/]+)?"
            "(/ready|/config|/stats|/infer|/generate|/generate_stream)?$"
        )
        out.append("    http-request set-var(txn.slow) str(server) if !model_path")
        out.append(
            "    http-request set-var(txn.model) path,field(4,/),url_dec if !slow"
        )
        out.append(
            "    http-request set-var(txn.version) path,field(6,/),url_dec "
            "if !slow { path,field(5,/) -m str versions }"
        )
    out.append(
        "    http-request set-var(txn.route) "
        f"var(txn.model),map({directory}/routes.map) if !slow"
    )
    unknown = "if !slow !{ var(txn.route) -m found }"
    if grpc:
        out.append(
            "    http-request return status 200 hdr grpc-status 5 hdr grpc-message "
            '"model %[var(txn.model),bytes(0,128),url_enc] is not served here" '
            + unknown
        )
    else:
        out.append(
            "    http-request return status 404 content-type application/json "
            'lf-string "{\\"error\\":\\"model %[var(txn.model),bytes(0,128),'
            'json(utf8ps)] is not served here\\"}" ' + unknown
        )
    if options.auth:
        out.extend(_auth_rules(error, options, directory, ctx))
    out.extend(_tensor_checks(grpc))
    out.append(
        "    http-request set-var(txn.draw) rand(" + str(WEIGHT_SCALE) + ") if !slow"
    )
    out.extend(routing)
    out.append(
        error(
            NOT_FOUND,
            "no route of this model matches the request",
            "if !slow !{ var(txn.be) -m found }",
        )
    )
    if any(limit.per_tenant for limit in limits):
        # A JWT caller's tenant picks its counter (set already when HAProxy verified
        # the token; a token Python verifies can only spend a refused request).
        out.append(
            "    http-request set-var(txn.tenant) "
            "http_auth_bearer,jwt_payload_query('$.tenant') "
            "if !{ var(txn.tenant) -m found } { req.hdr(authorization) -m found }"
        )
    # Every request of a route counts, the ones Python finishes (held at zero,
    # mirrored) included: one limiter for both paths.
    for limit in limits:
        rid, table_name, burst = limit.route, limit.table, limit.burst
        per_tenant, retry_s = limit.per_tenant, limit.retry_after_s
        here = f"{{ var(txn.route) -m str {rid} }}"
        key = "var(txn.route),concat(/,txn.tenant,)" if per_tenant else "var(txn.route)"
        out.append(f"    http-request track-sc0 {key} table {table_name} if {here}")
        cond = f"if {here} {{ sc_http_req_rate(0) gt {burst} }}"
        if grpc:
            message = "rate limit exceeded"
            details = retry_details(RESOURCE_EXHAUSTED, message, retry_s)
            out.append(_grpc_error(RESOURCE_EXHAUSTED, message, cond, details))
        else:
            out.append(
                _rest_error(RESOURCE_EXHAUSTED, "rate limit exceeded", cond, True)
            )
    # Client deadline below the route's timeout: the smaller one bounds the server.
    out.append(
        "    http-request set-var(txn.tmo) var(txn.ctmo) if { var(txn.ctmo) -m found } "
        "!{ var(txn.tmo) -m found }"
    )
    out.append(
        "    http-request set-var(txn.tmo) var(txn.ctmo) if { var(txn.ctmo) -m found } "
        "{ var(txn.ctmo),sub(txn.tmo) -m int lt 0 }"
    )
    slow = "slow_grpc" if grpc else "slow_rest"
    letter = "g" if grpc else "h"
    out.append(f"    use_backend {slow} if slow")
    out.append(f"    use_backend {letter}:%[var(txn.be)]")
    return "\n".join(out) + "\n"


def _tensor_checks(grpc: bool) -> list[str]:
    """Tensors whose data does not match their shapes are refused (INVALID_ARGUMENT,
    REST 400) naming the input; a request larger than HAProxy's buffer goes to the
    slow path, whose Python checks it whole."""
    if grpc:
        return [
            "    http-request set-var(txn.tc) req.body,hex,lua.grpc_tensor_check "
            "if !slow infer_call",
            "    http-request set-var(txn.slow) str(large) "
            "if !slow { var(txn.tc) -m str L }",
            "    http-request return status 200 hdr grpc-status 3 "
            'hdr grpc-message "%[var(txn.tc)]" if !slow { var(txn.tc),length gt 1 }',
        ]
    return [
        "    acl rest_binary req.hdr(inference-header-content-length) -m found",
        "    http-request wait-for-body time 2s if !slow rest_binary infer_call",
        "    http-request set-var(txn.cl) req.hdr(content-length) "
        "if !slow rest_binary infer_call",
        "    http-request set-var(txn.rb) req.body if !slow rest_binary infer_call",
        "    http-request set-var(txn.tc) "
        "req.hdr(inference-header-content-length),concat(:,txn.cl,:),"
        "concat(,txn.rb,),lua.rest_tensor_check if !slow rest_binary infer_call",
        "    http-request set-var(txn.slow) str(large) "
        "if !slow { var(txn.tc) -m str L }",
        "    http-request return status 400 content-type application/json "
        'lf-string "{\\"error\\":\\"%[var(txn.tc),json(utf8ps)]\\"}" '
        "if !slow { var(txn.tc),length gt 1 }",
    ]


def _auth_rules(
    error: Callable[[int, str, str], str],
    options: Options,
    directory: str,
    ctx: _Ctx,
) -> list[str]:
    """API keys (sha256 looked up in maps) and, when configured, JWTs (signature by
    the JWKS key its kid names, exp/nbf with leeway, iss, aud, sub, scopes): all in
    HAProxy. What it cannot decide the way the Python authenticator would (an
    unknown kid, list-valued claims, a malformed token, ambiguous credentials) goes
    to the slow path, which answers exactly as before."""
    out = [
        "    acl has_xkey req.hdr(x-api-key) -m found",
        "    acl has_authz req.hdr(authorization) -m found",
        '    acl key_bearer req.fhdr(authorization),lower -m beg "bearer mik_"',
        "    acl key var(txn.cred) -m found",
        "    acl jwt var(txn.jwt) -m found",
        "    http-request set-var(txn.slow) str(auth) if !slow has_xkey has_authz",
        "    http-request set-var(txn.slow) str(auth) if !slow "
        "{ req.hdr_cnt(x-api-key) gt 1 } or !slow { req.hdr_cnt(authorization) gt 1 }",
        "    http-request set-var(txn.cred) req.fhdr(x-api-key) if !slow has_xkey",
        "    http-request set-var(txn.cred) req.fhdr(authorization),word(2,' ') "
        "if !slow key_bearer",
    ]
    certs = options.tls is not None and options.tls.client_ca
    if certs:
        # A verified client certificate is the credential only when the request
        # carries no credential header (a header credential takes precedence).
        out += [
            "    acl cert var(txn.cert) -m found",
            "    http-request set-var(txn.cert) ssl_c_s_dn(CN),sha2(256),hex,lower "
            "if !slow !has_xkey !has_authz { ssl_c_used } { ssl_c_verify 0 } "
            "{ ssl_c_s_dn(CN) -m found }",
        ]
    plan = options.jwt
    if plan is None or not plan.keys:
        out.append(
            "    http-request set-var(txn.slow) str(auth) "
            "if !slow has_authz !key_bearer"
        )
    else:
        out.extend(_jwt_rules(error, plan, directory, ctx))
    out.append(
        error(
            UNAUTHENTICATED,
            "missing credentials",
            "if !slow !key !jwt" + (" !cert" if certs else ""),
        )
    )
    if certs:
        out += [
            "    http-request set-var(txn.tenant) "
            f"var(txn.cert),map({directory}/certs.map) if !slow cert",
            error(
                UNAUTHENTICATED,
                "client certificate not accepted",
                "if !slow cert !{ var(txn.tenant) -m found }",
            ),
            "    http-request set-var(txn.allowed) var(txn.cert),concat(:,txn.model,),"
            f"map({directory}/certscopes.map) if !slow cert",
            "    http-request set-var(txn.allowed) var(txn.cert),concat(:*,,),"
            f"map({directory}/certscopes.map) if !slow cert "
            "!{ var(txn.allowed) -m found }",
        ]
    out += [
        "    http-request set-var(txn.kh) var(txn.cred),sha2(256),hex,lower "
        "if !slow key",
        "    http-request set-var(txn.tenant) "
        f"var(txn.kh),map({directory}/keys.map) if !slow key",
        error(
            UNAUTHENTICATED,
            "invalid API key",
            "if !slow key !{ var(txn.tenant) -m found }",
        ),
        "    http-request set-var(txn.allowed) var(txn.kh),concat(:,txn.model,),"
        f"map({directory}/scopes.map) if !slow key",
        "    http-request set-var(txn.allowed) var(txn.kh),concat(:*,,),"
        f"map({directory}/scopes.map) if !slow key !{{ var(txn.allowed) -m found }}",
        error(
            PERMISSION_DENIED,
            "not allowed to run inference on this model",
            "if !slow !{ var(txn.allowed) -m found }",
        ),
    ]
    return out


JWT_MAX_SCOPES = 16


def _jwt_rules(
    error: Callable[[int, str, str], str],
    plan: JwtPlan,
    directory: str,
    ctx: _Ctx,
) -> list[str]:
    slow = "    http-request set-var(txn.slow) str(auth) if !slow jwt "
    # Claims straight from the header: 2.6's JWT converters do not read a token
    # back from a variable reliably (jwt_verify answers -3).
    payload = "http_auth_bearer,jwt_payload_query"
    out = [
        # A compact JWS (three base64url parts), or Python says what is wrong.
        "    http-request set-var(txn.jwt) http_auth_bearer "
        "if !slow has_authz !key_bearer { req.fhdr(authorization) -m reg -i -f "
        + ctx.pattern_file([r"^bearer [A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$"])
        + " }",
        "    http-request set-var(txn.slow) str(auth) "
        "if !slow has_authz !key_bearer !jwt",
        slow + f"{{ var(txn.jwt),length gt {plan.max_token_bytes} }}",
        "    http-request set-var(txn.jalg) http_auth_bearer,jwt_header_query('$.alg') "
        "if !slow jwt",
        "    http-request set-var(txn.jkid) http_auth_bearer,jwt_header_query('$.kid'),"
        "sha2(256),hex,lower if !slow jwt",
        "    http-request set-var(txn.jkey) "
        f"var(txn.jkid),map({directory}/jwks.map) if !slow jwt",
        "    http-request set-var(txn.jkalg) "
        f"var(txn.jkid),map({directory}/jwks-alg.map) if !slow jwt",
        # An unknown kid: Python refuses it and refreshes the JWKS early.
        slow + "!{ var(txn.jkey) -m found }",
        # The algorithm is ours to allow, never the token's to choose.
        slow + "!{ var(txn.jalg) -m str " + " ".join(plan.algorithms) + " }",
        slow
        + "!{ var(txn.jkalg) -m str any } !{ var(txn.jalg),strcmp(txn.jkalg) eq 0 }",
    ]
    for _, _, pem in plan.keys:
        # Loads each key file at start; requests name the file in txn.jkey.
        path = f"{directory}/{_pem_name(pem)}"
        out.append(
            "    http-request set-var(txn.jpreload) str(),"
            f'jwt_verify(RS256,"{path}") if FALSE'
        )
    out += [
        # Straight from the header: 2.6's jwt_verify refuses (-3) a token read back
        # from a variable.
        "    http-request set-var(txn.jok) "
        "http_auth_bearer,jwt_verify(txn.jalg,txn.jkey) if !slow jwt",
        error(
            UNAUTHENTICATED,
            "token signature invalid",
            "if !slow jwt !{ var(txn.jok) -m int eq 1 }",
        ),
        f"    http-request set-var(txn.jexp) {payload}('$.exp','int') if !slow jwt",
        f"    http-request set-var(txn.jnbf) {payload}('$.nbf','int') if !slow jwt",
        f"    http-request set-var(txn.jaud) {payload}('$.aud') if !slow jwt",
        f"    http-request set-var(txn.jscope) {payload}('$.scope') if !slow jwt",
        "    http-request set-var(txn.now) date() if !slow jwt",
        # Missing or non-integer times, list-valued claims, no subject: Python.
        slow + "!{ var(txn.jexp) -m found }",
        slow + f"!{{ {payload}('$.sub') -m found }}",
        slow + "!{ var(txn.jaud) -m found }",
        slow + "{ var(txn.jaud) -m beg [ }",
        slow + "{ var(txn.jscope) -m beg [ }",
        # (word() past the last word is an empty string, not a missing one)
        slow + f"{{ var(txn.jscope),word({JWT_MAX_SCOPES + 1},' ') -m len gt 0 }}",
        error(
            UNAUTHENTICATED,
            "token expired",
            f"if !slow jwt {{ var(txn.now),sub(txn.jexp) -m int ge {plan.leeway_s} }}",
        ),
        error(
            UNAUTHENTICATED,
            "token not yet valid",
            "if !slow jwt { var(txn.jnbf) -m found } "
            f"{{ var(txn.jnbf),sub(txn.now) -m int gt {plan.leeway_s} }}",
        ),
        error(
            UNAUTHENTICATED,
            "token issuer not accepted",
            f"if !slow jwt !{{ {payload}('$.iss') -m str "
            f"-f {ctx.pattern_file([plan.issuer])} }}",
        ),
        error(
            UNAUTHENTICATED,
            "token audience not accepted",
            "if !slow jwt !{ var(txn.jaud) -m str "
            f"-f {ctx.pattern_file([plan.audience])} }}",
        ),
        f"    http-request set-var(txn.tenant) {payload}('$.tenant') if !slow jwt",
        "    http-request set-var(txn.want) str(),concat(infer:,txn.model,) "
        "if !slow jwt",
    ]
    for i in range(1, JWT_MAX_SCOPES + 1):
        word = f"var(txn.jscope),word({i},' ')"
        out.append(
            "    http-request set-var(txn.allowed) int(1) if !slow jwt "
            f"{{ {word},strcmp(txn.want) eq 0 }} "
            f"or !slow jwt {{ {word} -m str infer:* }}"
        )
    return out


def _pem_name(pem: str) -> str:
    return "jwk_" + hashlib.sha256(pem.encode()).hexdigest()[:16] + ".pem"


def _generated_errors(grpc: bool) -> list[str]:
    """HAProxy's own answers (a server timeout, no server left, a connection that
    failed after the retries) in the protocol's error shape. gRPC clients take
    grpc-status over the HTTP status when both are present."""
    if grpc:
        return [
            "    http-error status 504 hdr grpc-status 4 "
            'hdr grpc-message "deadline exceeded at the gateway"',
            "    http-error status 503 hdr grpc-status 14 "
            'hdr grpc-message "no replica could take the request"',
            "    http-error status 502 hdr grpc-status 14 "
            'hdr grpc-message "the replica failed to answer"',
        ]
    return [
        "    http-error status 504 content-type application/json "
        "string " + _q('{"error":"deadline exceeded at the gateway"}'),
        "    http-error status 503 content-type application/json "
        "string " + _q('{"error":"no replica could take the request"}'),
        "    http-error status 502 content-type application/json "
        "string " + _q('{"error":"the replica failed to answer"}'),
    ]


def _backend(
    bid: str,
    backend: Backend,
    slots: int,
    options: Options,
    grpc: bool,
    server_args: str = "",
) -> str:
    s = backend.server
    letter = "g" if grpc else "h"
    out = [f"backend {letter}:{bid}"]
    if grpc and (
        backend.priority or (s.triton_model and s.triton_model != backend.public_name)
    ):
        out.append("    filter lua.grpc-rename")
    if s.hash_header:
        out.append(f"    balance hdr({s.hash_header.lower()})")
        out.append("    hash-type consistent")
    elif s.balance == "ROUND_ROBIN":
        out.append("    balance roundrobin")
    else:
        out.append("    balance leastconn")
    # The model's readiness, not the server's: a restarted Triton (explicit model
    # control) is ready before it has loaded the model again.
    triton_name = s.triton_model or backend.public_name
    out.append(f"    option httpchk GET /v2/models/{triton_name}/ready")
    out.append("    http-check expect status 200")
    out.append(f"    timeout server {s.timeout_ms or options.default_timeout_ms}ms")
    out.append(
        "    http-request set-timeout server var(txn.tmo) if { var(txn.tmo) -m found }"
    )
    if s.retry_attempts > 0:
        out.append(f"    retries {s.retry_attempts}")
        # A connection that fails, or dies before answering (a SIGKILLed replica),
        # is retried on another replica; both are safe for inference.
        out.append("    retry-on conn-failure empty-response")
        out.append("    option redispatch 1")
    else:
        out.append("    retries 0")
    # Requests of every client share the replica's h2 connections (inference
    # calls are independent, so any idle stream slot may carry any of them).
    out.append("    http-reuse always")
    out.append("    http-request del-header authorization")
    out.append("    http-request del-header x-api-key")
    if not grpc:
        triton = s.triton_model or backend.public_name
        out.append(
            f"    http-request set-path /v2/models/{triton}"
            "%[path,regsub(^/v2/models/[^/]+,)]"
        )
    default = ["default-server"]
    default.append("check inter 2s fastinter 300ms downinter 1s rise 1 fall 2")
    errors = s.consecutive_errors or 5
    default.append(f"observe layer4 error-limit {errors} on-error mark-down")
    if s.max_concurrent_per_replica:
        default.append(f"maxconn {s.max_concurrent_per_replica}")
    out.append("    " + " ".join(default))
    for i in range(1, slots + 1):
        out.append(f"    @slot {letter}:{bid} {i}{server_args}")
    return "\n".join(out) + "\n"


def slot_line(
    grpc: bool, index: int, replica: Replica | None, server_args: str = ""
) -> str:
    """``server_args``: options every server of the backend takes, whether its
    slot is empty or not (mTLS to the replica: :func:`replica_tls_args`)."""
    # gRPC to the replica (h2), its health check over HTTP/1.1 to Triton's HTTP
    # port. 2.6 does not take check-proto from default-server: it is set per server.
    h2 = f" proto h2 check-proto h1{server_args}" if grpc else server_args
    if replica is None:
        return f"    server r{index} 127.0.0.1:1{h2} disabled"
    if grpc:
        return (
            f"    server r{index} {replica.address}:{replica.grpc_port}{h2} "
            f"port {replica.http_port}"
        )
    return f"    server r{index} {replica.address}:{replica.http_port}{h2}"


def _with_slots(structure: str, slots: Mapping[str, list[Replica | None]]) -> str:
    lines = []
    for line in structure.splitlines():
        if line.startswith("    @slot "):
            _, backend, index, *rest = line.split(maxsplit=3)
            letter, _, bid = backend.partition(":")
            replica = slots[bid][int(index) - 1]
            args = f" {rest[0]}" if rest else ""
            lines.append(slot_line(letter == "g", int(index), replica, args))
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def _slow_backends(ports: Ports, options: Options) -> str:
    # Who a verified client certificate names, for the slow path's authenticator:
    # never what the client sent, and with a secret only HAProxy and the gateway
    # know (the slow path's ports are reachable from this machine).
    cert = f"    http-request del-header {CLIENT_CERT_HEADER}\n"
    tls = options.tls
    if tls is not None and tls.client_ca and tls.header_secret:
        cert += (
            f"    http-request set-header {CLIENT_CERT_HEADER} "
            f"{tls.header_secret}:%[ssl_c_s_dn(CN),sha2(256),hex,lower] "
            "if { ssl_c_used } { ssl_c_verify 0 } { ssl_c_s_dn(CN) -m found }\n"
        )
    return (
        "backend slow_grpc\n"
        f"    timeout server {options.max_timeout_ms}ms\n"
        + cert
        + f"    server gateway 127.0.0.1:{ports.slow_grpc} proto h2\n"
        "backend slow_rest\n"
        f"    timeout server {options.max_timeout_ms}ms\n"
        + cert
        + f"    server gateway 127.0.0.1:{ports.slow_http}\n"
    )
