"""Keeps HAProxy's configuration equal to the routing table.

Every change of the table (or of the API keys) is rendered; when the structure
differs from what HAProxy runs, the new file is checked with ``haproxy -c`` and
loaded by a seamless reload; otherwise only maps and server slots change, through
the runtime API. A render that HAProxy refuses leaves the last good configuration
serving, and says why (log, ``matrixinfer_gateway_dataplane_config_errors_total``,
``last_error`` on /readyz's body).

With TLS at the edge, the certificate and key files are watched: a change is
loaded into the running worker with ``set ssl cert`` and ``commit ssl cert`` (new
handshakes get it, established connections keep theirs; no reload), then written
to the data plane's folder for later reloads and restarts.

With mTLS to the replicas, the gateway's certificate and key are written into the
folder as one PEM file (mode 0600, as HAProxy loads a client certificate) with the
CA beside it; when the files change (a rotation) they are written again and
HAProxy reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pathlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from matrixinfer.core.grpc.tls import read_files
from matrixinfer.core.pki import CertFiles
from matrixinfer.gateway.adapters.dataplane.haproxy import (
    ConfigRefused,
    HAProxyProcess,
    check_config,
)
from matrixinfer.gateway.adapters.dataplane.render import (
    CLIENT_CA,
    EDGE_CERT,
    REPLICA_CA,
    REPLICA_CLIENT_CERT,
    ApiKey,
    JwtPlan,
    Options,
    Ports,
    Render,
    Replica,
    render,
)
from matrixinfer.gateway.domain.auth import ApiKeyRecord
from matrixinfer.gateway.domain.routing import RoutingTable

log = logging.getLogger(__name__)

#: A slot emptied this recently is not given to another replica: HAProxy may
#: still hold idle connections of the slot to the replica that left (draining,
#: then stopping within the controller's grace period).
SLOT_COOLING_S = 30.0

Source = Callable[[], tuple[RoutingTable, dict[str, ApiKeyRecord], JwtPlan | None]]


@dataclass(frozen=True)
class EdgeFiles:
    """The operator's files for TLS at the edge (copied into the data plane's
    folder, which HAProxy may see from another container)."""

    cert: pathlib.Path
    key: pathlib.Path
    client_ca: pathlib.Path | None = None
    #: seconds between checks of the certificate and key for a change
    reload_s: float = 2.0

    def edge_pem(self) -> str:
        """The chain and the key as HAProxy loads them."""
        return haproxy_pem(self.cert.read_text(), self.key.read_text())


def haproxy_pem(cert: str, key: str) -> str:
    """A certificate (chain) and its key as HAProxy loads them: one file, no
    blank line."""
    text = cert + "\n" + key
    return "\n".join(line for line in text.splitlines() if line.strip()) + "\n"


def replica_client_pem(files: CertFiles) -> tuple[str, str]:
    """The gateway's certificate and key as one PEM (HAProxy's ``crt``), and the
    CA; only once the certificate and its key belong together (a rotation half
    done raises ValueError)."""
    cert, key, ca = read_files(files)
    return haproxy_pem(cert.decode(), key.decode()), ca.decode()


@dataclass
class DataPlaneStats:
    """The last ``show stat`` rows of the model backends, read four times a second
    (load reports and /metrics read this, never HAProxy per scrape)."""

    rows: dict[str, dict[str, str]] = field(default_factory=dict)


class DataPlane:
    def __init__(
        self,
        binary: str,
        mode: str,
        directory: pathlib.Path,
        ports: Ports,
        options: Options,
        source: Source,
        metrics: CollectorRegistry,
        on_applied: Callable[[RoutingTable, dict[str, ApiKeyRecord]], None] = (
            lambda *_: None
        ),
        edge: EdgeFiles | None = None,
        replica_files: CertFiles | None = None,
        replica_reload_s: float = 2.0,
    ) -> None:
        self._on_applied = on_applied
        self.edge = edge
        #: the gateway's certificate, key and CA HAProxy presents to (and checks
        #: of) the replicas; what HAProxy runs with
        self.replica_files = replica_files
        self._replica_reload_s = replica_reload_s
        self._replica_pems: tuple[str, str] = ("", "")
        self.replica_cert_updates = 0
        self._replica_task: asyncio.Task[None] | None = None
        #: the certificate HAProxy serves (and the last one it refused)
        self._edge_pem = ""
        self._edge_refused = ""
        self.cert_updates = 0
        self._tls_task: asyncio.Task[None] | None = None
        self.directory = directory
        self.ports = ports
        self.options = options
        self.process = HAProxyProcess(binary, directory, external=mode == "external")
        self._source = source
        self.current: Render | None = None
        self.last_error: str = ""
        self.generation = 0  # bumped by every change request
        self.applied = 0  # the generation HAProxy runs
        self.reloads = 0
        self._wake = asyncio.Event()
        # One change at a time: a reload between writing the files and the runtime
        # commands would otherwise start a worker that misses the commands.
        self._lock = asyncio.Lock()
        self._applied_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stats_task: asyncio.Task[None] | None = None
        self.stats = DataPlaneStats()
        #: backend → slot number → when its replica left (see assign_slots)
        self._freed: dict[str, dict[int, float]] = {}
        self._errors = Counter(
            "matrixinfer_gateway_dataplane_config_errors_total",
            "Rendered HAProxy configurations refused by "
            "`haproxy -c` or a failed reload",
            registry=metrics,
        )
        self._reloads = Counter(
            "matrixinfer_gateway_dataplane_reloads_total",
            "Seamless HAProxy reloads (structural routing changes)",
            registry=metrics,
        )
        self._updates = Counter(
            "matrixinfer_gateway_dataplane_runtime_updates_total",
            "Routing changes applied through HAProxy's runtime API without a reload",
            registry=metrics,
        )
        self._cert_updates = Counter(
            "matrixinfer_gateway_dataplane_cert_updates_total",
            "Public TLS certificates loaded into HAProxy at run time (rotations)",
            registry=metrics,
        )
        self._healthy = Gauge(
            "matrixinfer_gateway_dataplane_config_ok",
            "1 while the last rendered configuration is the one HAProxy runs",
            registry=metrics,
        )
        metrics.register(_HAProxyCollector(self))

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        if self.edge is not None:
            self._edge_pem = self.edge.edge_pem()
            _atomic_write(self.directory / EDGE_CERT, self._edge_pem)
            if self.edge.client_ca is not None:
                _atomic_write(
                    self.directory / CLIENT_CA, self.edge.client_ca.read_text()
                )
        if self.replica_files is not None:
            self._write_replica_pems(replica_client_pem(self.replica_files))
        table, keys, plan = self._source()
        first = self._render(table, dataplane_keys(keys, time.time()), plan)
        self._write(first)
        await check_config(self.process.binary, self.process.config_path)
        await self.process.start()
        self.current = first
        self._healthy.set(1)
        self._on_applied(table, keys)
        self._task = asyncio.get_running_loop().create_task(self._loop())
        self._stats_task = asyncio.get_running_loop().create_task(self._poll_stats())
        if self.edge is not None:
            self._tls_task = asyncio.get_running_loop().create_task(self._watch_tls())
        if self.replica_files is not None:
            self._replica_task = asyncio.get_running_loop().create_task(
                self._watch_replica_tls()
            )

    async def stop(self, grace_s: float = 0.0) -> None:
        for task in (
            self._task,
            self._stats_task,
            self._tls_task,
            self._replica_task,
        ):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.process.stop(grace_s)

    def changed(self) -> None:
        """The table or the keys changed: apply soon (changes coalesce)."""
        self.generation += 1
        self._wake.set()

    async def wait_applied(self, timeout_s: float = 10.0) -> None:
        """Until HAProxy runs the latest change (tests; readiness)."""
        target = self.generation
        async with asyncio.timeout(timeout_s):
            while self.applied < target:
                self._applied_event.clear()
                await self._applied_event.wait()

    async def reload(self) -> None:
        """Reload the running configuration as is (operators; tests)."""
        async with self._lock:
            await self.process.reload()
        self.reloads += 1
        self._reloads.inc()

    # -- applying ---------------------------------------------------------------

    def _render(
        self, table: RoutingTable, keys: list[ApiKey], plan: JwtPlan | None
    ) -> Render:
        previous = self.current.slots if self.current is not None else None
        now = time.monotonic()
        cooling = {
            bid: frozenset(i for i, at in freed.items() if now - at < SLOT_COOLING_S)
            for bid, freed in self._freed.items()
        }
        return render(
            table,
            keys,
            self.ports,
            dataclasses.replace(self.options, jwt=plan),
            str(self.directory),
            previous,
            cooling,
        )

    def _note_freed(self, old: Render, new: Render) -> None:
        now = time.monotonic()
        for bid, slots in old.slots.items():
            after = new.slots.get(bid, [])
            for i, replica in enumerate(slots, start=1):
                if replica is not None and (i > len(after) or after[i - 1] is None):
                    self._freed.setdefault(bid, {})[i] = now

    def _write(self, r: Render) -> None:
        """Files first (a reload or a restart reads them), each replaced atomically."""
        for name, text in r.files.items():
            _atomic_write(self.directory / name, text)
        for name, entries in r.maps.items():
            _atomic_write(
                self.directory / name,
                "".join(f"{k} {v}\n" for k, v in entries.items()),
            )
        _atomic_write(self.process.config_path, r.config)

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            target = self.generation
            table, keys, plan = self._source()
            started = time.monotonic()
            try:
                async with self._lock:
                    await self._apply(table, dataplane_keys(keys, time.time()), plan)
                log.debug(
                    "routing change %d applied in %.0f ms",
                    target,
                    (time.monotonic() - started) * 1000,
                )
                self.last_error = ""
                self._healthy.set(1)
            except ConfigRefused as e:
                self._errors.inc()
                self._healthy.set(0)
                self.last_error = f"haproxy refused the rendered configuration: {e}"
                log.error(
                    "%s; the last good configuration keeps serving", self.last_error
                )
            except Exception as e:
                self._errors.inc()
                self._healthy.set(0)
                self.last_error = f"applying the routing table failed: {e}"
                log.exception("applying the routing table failed; retrying")
                await asyncio.sleep(0.5)
                self._wake.set()
                continue
            # A refused render counts as handled: waiting for it would never end;
            # the slow path serves the new table meanwhile.
            self._on_applied(table, keys)
            self.applied = max(self.applied, target)
            self._applied_event.set()

    async def _apply(
        self, table: RoutingTable, keys: list[ApiKey], plan: JwtPlan | None
    ) -> None:
        new = self._render(table, keys, plan)
        old = self.current
        assert old is not None
        if new.structure != old.structure:
            candidate = self.directory / "haproxy.cfg.new"
            for name, text in new.files.items():
                _atomic_write(self.directory / name, text)
            _atomic_write(candidate, new.config)
            await check_config(self.process.binary, candidate)
            self._write(new)
            await self.process.reload()
            self.reloads += 1
            self._reloads.inc()
            self._note_freed(old, new)
            self.current = new
            log.info("data plane reloaded (%d backends)", len(new.slots))
            return
        # Files first: a worker started later (a restart) reads them; then the
        # running worker is told the same through the runtime API.
        self._write(new)
        self._note_freed(old, new)
        self.current = new
        await self._runtime_update(old, new)

    async def _runtime_update(self, old: Render, new: Render) -> None:
        api = self.process.runtime
        for name, entries in new.maps.items():
            if old.maps.get(name) != entries:
                await api.replace_map(str(self.directory / name), entries)
                self._updates.inc()
        commands: list[str] = []
        for bid, slots in new.slots.items():
            before = old.slots.get(bid, [])
            for i, replica in enumerate(slots, start=1):
                if i <= len(before) and before[i - 1] == replica:
                    continue
                commands.extend(_slot_commands(bid, i, replica))
        if commands:
            await api.commands(commands)
            self._updates.inc()

    # -- TLS at the edge --------------------------------------------------------

    async def _watch_tls(self) -> None:
        assert self.edge is not None
        while True:
            await asyncio.sleep(self.edge.reload_s)
            try:
                await self.update_certificate()
            except Exception as e:
                log.error("public TLS certificate not updated: %s", e)

    async def update_certificate(self) -> bool:
        """Load the certificate files into HAProxy if they changed (polled; tests
        call it directly). True when a new certificate was loaded."""
        assert self.edge is not None
        try:
            pem = await asyncio.to_thread(self.edge.edge_pem)
        except OSError as e:  # being replaced: the next check sees the new one
            log.debug("certificate files unreadable for now: %s", e)
            return False
        if pem in (self._edge_pem, self._edge_refused):
            return False
        path = self.directory / EDGE_CERT
        async with self._lock:
            try:
                await self.process.runtime.set_ssl_cert(str(path), pem)
            except RuntimeError as e:
                # E.g. the certificate written before its key: a later check sees
                # the pair; the served certificate stays meanwhile.
                self._edge_refused = pem
                self._errors.inc()
                self.last_error = f"haproxy refused the new TLS certificate: {e}"
                log.error("%s; the current certificate keeps serving", self.last_error)
                return False
            # Reloads and restarts read the file.
            _atomic_write(path, pem)
        self._edge_pem, self._edge_refused = pem, ""
        self.cert_updates += 1
        self._cert_updates.inc()
        if self.last_error.startswith("haproxy refused the new TLS certificate"):
            self.last_error = ""
        log.info("public TLS certificate updated (no reload)")
        return True

    # -- mTLS to the replicas ---------------------------------------------------

    def _write_replica_pems(self, pems: tuple[str, str]) -> None:
        _atomic_write(self.directory / REPLICA_CLIENT_CERT, pems[0])
        _atomic_write(self.directory / REPLICA_CA, pems[1])
        self._replica_pems = pems

    async def _watch_replica_tls(self) -> None:
        while True:
            await asyncio.sleep(self._replica_reload_s)
            try:
                await self.update_replica_certificate()
            except Exception as e:
                log.error("certificate to the replicas not updated: %s", e)

    async def update_replica_certificate(self) -> bool:
        """Write the gateway's certificate, key and CA for HAProxy's connections
        to the replicas again, and reload, when the files changed (polled; tests
        call it directly). True when HAProxy was reloaded with new ones."""
        assert self.replica_files is not None
        try:
            pems = await asyncio.to_thread(replica_client_pem, self.replica_files)
        except (OSError, ValueError, TypeError) as e:  # mid-rotation: next check
            log.debug("replica TLS files not usable for now: %s", e)
            return False
        if pems == self._replica_pems:
            return False
        async with self._lock:
            self._write_replica_pems(pems)
            # HAProxy reads a server's crt and ca-file when it starts: a seamless
            # reload (connections in flight finish on the old worker).
            await self.process.reload()
        self.reloads += 1
        self._reloads.inc()
        self.replica_cert_updates += 1
        log.info(
            "certificate to the replicas %s changed: HAProxy reloaded with it",
            self.replica_files.cert,
        )
        return True

    # -- counters ---------------------------------------------------------------

    async def _poll_stats(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                rows = await self.process.runtime.show_stat()
                self.stats = DataPlaneStats(
                    {
                        r["pxname"]: r
                        for r in rows
                        if r.get("svname") == "BACKEND"
                        and r.get("pxname", "")[:2] in ("g:", "h:")
                    }
                )
            await asyncio.sleep(0.25)

    def load(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(namespace, ModelInfer) → (streams in flight, requests so far)."""
        out: dict[tuple[str, str], tuple[int, int]] = {}
        owners = self.current.owners if self.current is not None else {}
        for name, row in self.stats.rows.items():
            owner = owners.get(name[2:])
            if owner is None:
                continue
            key = (owner[0], owner[1])
            cur, total = out.get(key, (0, 0))
            out[key] = (cur + _int(row.get("scur")), total + _int(row.get("stot")))
        return out


def dataplane_keys(records: dict[str, ApiKeyRecord], now_s: float) -> list[ApiKey]:
    """The API keys HAProxy checks itself: live ones with an inference scope."""
    keys = []
    for record in records.values():
        if record.revoked or not record.hash.startswith("sha256:"):
            continue
        if record.expires_at_s is not None and now_s >= record.expires_at_s:
            continue
        models = frozenset(
            scope.removeprefix("infer:")
            for scope in record.scopes
            if scope.startswith("infer:") and scope != "infer:"
        )
        keys.append(
            ApiKey(record.hash.removeprefix("sha256:"), models, record.tenant or "")
        )
    return keys


def _slot_commands(bid: str, index: int, replica: Replica | None) -> list[str]:
    out: list[str] = []
    for letter in ("g", "h"):
        server = f"{letter}:{bid}/r{index}"
        if replica is None:
            out.append(f"set server {server} state maint")
            continue
        port = replica.grpc_port if letter == "g" else replica.http_port
        out.append(f"set server {server} addr {replica.address} port {port}")
        if letter == "g":
            out.append(f"set server {server} check-port {replica.http_port}")
        out.append(f"set server {server} state ready")
        # A replica the controller reports ready is up until a check says not.
        out.append(f"set server {server} health up")
    return out


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _atomic_write(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    # Owner only: the folder holds the edge certificate's private key.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class _HAProxyCollector(Collector):
    """Per-model series from HAProxy's own counters (read once a second)."""

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        requests = CounterMetricFamily(
            "matrixinfer_gateway_dataplane_requests",
            "Requests HAProxy carried to each model's replicas, by HTTP status class "
            "(gRPC errors travel inside 2xx)",
            labels=["model", "server", "protocol", "code"],
        )
        in_flight = GaugeMetricFamily(
            "matrixinfer_gateway_dataplane_in_flight",
            "Requests in flight to each model's replicas through HAProxy",
            labels=["model", "server", "protocol"],
        )
        seconds = GaugeMetricFamily(
            "matrixinfer_gateway_dataplane_response_time_seconds",
            "HAProxy's average total time of the last 1,024 requests to each model's "
            "replicas (HAProxy 2.6 keeps no histograms)",
            labels=["model", "server", "protocol"],
        )
        up = GaugeMetricFamily(
            "matrixinfer_gateway_dataplane_replicas_up",
            "Replicas HAProxy considers up (health checks and passive ejection)",
            labels=["model", "server", "protocol"],
        )
        current = self._plane.current
        owners = current.owners if current is not None else {}
        for name, row in self._plane.stats.rows.items():
            owner = owners.get(name[2:])
            if owner is None:
                continue
            server = name[2:].rsplit(":", 1)[-1]
            protocol = "grpc" if name.startswith("g:") else "http"
            labels = [owner[2], server, protocol]
            for cls in ("1xx", "2xx", "3xx", "4xx", "5xx", "other"):
                requests.add_metric([*labels, cls], float(_int(row.get(f"hrsp_{cls}"))))
            in_flight.add_metric(labels, float(_int(row.get("scur"))))
            up.add_metric(labels, float(_int(row.get("act"))))
            seconds.add_metric(labels, _int(row.get("ttime")) / 1000.0)
        yield requests
        yield in_flight
        yield seconds
        yield up
