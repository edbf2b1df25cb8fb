"""``matrixinfer up``: the whole platform on this machine, supervised.

Registry (SQLite under the state folder, or ``--database-url``), controller (local
Triton processes), autoscaler and gateway each run as their own process, started in
that order once the previous one answers its gRPC health check. Then the quickstart
manifests are applied, ``up`` waits (with progress) until the model answers through
the gateway, and prints the endpoints and commands to paste.

A service that exits on its own is restarted with backoff (and ``up`` gives up after
repeated crashes). Ctrl-C or SIGTERM stops the services in reverse order with
SIGTERM (the controller stops its Triton servers), then SIGKILL after a grace
period; each child also gets SIGTERM from the kernel if ``up`` itself is killed
(parent-death signal), so no ``tritonserver`` is left behind. A second ``up`` with
the same state folder resumes: the registry keeps its objects, applying the
quickstart again changes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import ipaddress
import json
import os
import pathlib
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, TYPE_CHECKING

import click

from matrixinfer.cli.client import Tls, grpc_channel, health
from matrixinfer.cli.config import local_up_path
from matrixinfer.core.process import die_with_parent

if TYPE_CHECKING:
    from rich.console import Console

    from matrixinfer.api.v1 import registry_pb2_grpc
    from matrixinfer.core.pki import CertFiles

EXIT_FAILED, EXIT_USAGE = 1, 2
HOST = "127.0.0.1"
MAX_CRASHES = 5  # within CRASH_WINDOW_S, then up gives up
CRASH_WINDOW_S = 60.0
STOP_GRACE_S = 20.0
EXAMPLE_INPUT = [[6.7, 3.0, 5.2, 2.3]]
#: `up --auth`: the admin API key, kept in the state folder (mode 0600).
ADMIN_KEY_FILE = "admin-api-key"
#: `up --tls`: the local CA clients trust and the gateway's public certificate.
EDGE_TLS_DIR = "edge-tls"


class Stop(Exception):
    """Ctrl-C, SIGTERM or SIGHUP (the terminal closed) arrived."""


HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _repo_root() -> pathlib.Path | None:
    """The checkout this CLI runs from (for the examples), if any."""
    here = pathlib.Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "examples" / "quickstart").is_dir():
            return parent
    return None


@dataclass
class Service:
    name: str
    module: str
    port: int
    env: dict[str, str]
    log_path: pathlib.Path
    process: subprocess.Popen[bytes] | None = None
    crashes: list[float] = field(default_factory=list)
    #: The admin certificate `up` checks health with when the port is mTLS.
    health_tls: Tls | None = None
    #: Its health status name, when asked otherwise (the gateway behind TLS).
    probe: Callable[[], str] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- started by matrixinfer up at {time.ctime()}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [*die_with_parent(), sys.executable, "-m", self.module],
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: the terminal's Ctrl-C reaches only `up`, which then
                # stops everything in order.
                start_new_session=True,
            )

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait_stopped(self, grace_s: float) -> bool:
        """True when it exited within the grace; SIGKILLed otherwise."""
        if self.process is None:
            return True
        try:
            self.process.wait(timeout=grace_s)
            return True
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return False


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _http_ok(
    url: str, headers: dict[str, str] | None = None, cafile: pathlib.Path | None = None
) -> bool:
    import ssl
    import urllib.error
    import urllib.request

    context = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - ours
    try:
        with urllib.request.urlopen(request, timeout=1.0, context=context) as answer:  # noqa: S310
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _read_manifests(paths: list[pathlib.Path], model_path: pathlib.Path) -> str:
    documents = []
    for path in paths:
        files = (
            sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml"))
            if path.is_dir()
            else [path]
        )
        for f in files:
            text = f.read_text().replace("${IRIS_MODEL}", str(model_path))
            documents.append(text.strip().removeprefix("---").strip())
    return "\n---\n".join(documents)


class Supervisor:
    def __init__(self, services: list[Service], console: Console) -> None:
        self.services = services
        self.console = console
        self._stopping = False
        self._critical = 0
        self._pending = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping:
            return
        if self._critical:  # starting a child: stop right after it is tracked
            self._pending = True
            return
        self._stopping = True
        raise Stop()

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """No Stop in here (a child started but not yet tracked would leak)."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
        if self._pending and not self._critical and not self._stopping:
            self._stopping = True
            raise Stop()

    def quiet(self) -> None:
        """From now on signals are ignored: the orderly stop runs to its end."""
        self._stopping = True
        for s in HANDLED_SIGNALS:
            signal.signal(s, signal.SIG_IGN)

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        previous = {s: signal.signal(s, self._on_signal) for s in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def launch(self, service: Service) -> None:
        with self.critical():
            service.start()

    def start(self, service: Service, timeout_s: float) -> None:
        self.launch(service)
        deadline = time.monotonic() + timeout_s
        address = f"{HOST}:{service.port}"
        with self.console.status(f"starting {service.name} on {address} ..."):
            while (
                service.probe()
                if service.probe
                else health(address, 1.0, service.health_tls, service.name)
            ) != "SERVING":
                code = service.exited()
                if code is not None:
                    raise click.ClickException(
                        f"{service.name} exited with code {code} while starting; "
                        f"the end of {service.log_path}:\n{service.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise click.ClickException(
                        f"{service.name} did not become healthy in {timeout_s:.0f} s; "
                        f"see {service.log_path}"
                    )
                time.sleep(0.1)
        self.console.print(f"[green]✓[/] {service.name:<10} {address}")

    def check(self) -> None:
        """Restart services that exited on their own (with backoff)."""
        now = time.monotonic()
        for service in self.services:
            code = service.exited()
            if code is None:
                continue
            service.crashes = [t for t in service.crashes if now - t < CRASH_WINDOW_S]
            service.crashes.append(now)
            if len(service.crashes) > MAX_CRASHES:
                raise click.ClickException(
                    f"{service.name} keeps exiting (last code {code}); giving up. "
                    f"The end of {service.log_path}:\n{service.log_tail()}"
                )
            backoff = min(30.0, 2.0 ** (len(service.crashes) - 1))
            self.console.print(
                f"[yellow]![/] {service.name} exited with code {code}; "
                f"restarting in {backoff:.0f} s (log: {service.log_path})"
            )
            time.sleep(backoff)
            self.launch(service)

    def stop(self) -> None:
        self._stopping = True
        running = [
            s
            for s in reversed(self.services)
            if s.process is not None and s.exited() is None
        ]
        if not running:
            return
        with self.console.status("stopping ..."):
            for service in running:
                service.terminate()
                clean = service.wait_stopped(STOP_GRACE_S)
                mark = "[green]✓[/]" if clean else "[red]killed[/]"
                self.console.print(f"{mark} {service.name} stopped")


def _wait_serving(
    console: Console,
    supervisor: Supervisor,
    stub: registry_pb2_grpc.RegistryStub,
    http_url: str,
    model: str,
    timeout_s: float,
    headers: dict[str, str] | None = None,
    cafile: pathlib.Path | None = None,
) -> None:
    import grpc

    from matrixinfer.api.v1 import registry_pb2 as rpb

    deadline = time.monotonic() + timeout_s
    with console.status(f"waiting for model {model!r} ...") as status:
        while True:
            supervisor.check()
            text = f"waiting for model {model!r}: "
            at_zero = False
            try:
                resource = stub.Get(
                    rpb.GetRequest(kind="ModelInfer", name=model), timeout=2
                )
                infer = resource.model_infer
                ready, desired = infer.status.ready_replicas, infer.spec.replicas
                text += f"{ready}/{max(desired, infer.status.desired_replicas)} ready"
                degraded = [
                    c.message
                    for c in infer.status.conditions
                    if c.type == "Degraded" and c.status == "True"
                ]
                if degraded:
                    text += f" — {degraded[0][:120]}"
                # Scaled to zero by its autoscaling policy: it serves on demand
                # (the first request wakes it), nothing to wait for.
                at_zero = (
                    infer.status.observed_generation > 0
                    and infer.status.desired_replicas == 0
                    and bool(infer.status.scale_reason)
                )
            except grpc.RpcError:
                text += "not reconciled yet"
            status.update(text)
            if at_zero:
                console.print(
                    f"[green]✓[/] {model} is scaled to zero; the first request "
                    "starts it"
                )
                return
            if _http_ok(f"{http_url}/v2/models/{model}/ready", headers, cafile):
                return
            if time.monotonic() > deadline:
                raise click.ClickException(
                    f"model {model!r} did not serve within {timeout_s:.0f} s ({text}); "
                    "see the logs under the state folder"
                )
            time.sleep(0.25)


def _command(name: str) -> str:
    """How to type a script of this environment here: its bare name when that is
    what PATH finds, else its path (relative to here when it can be)."""
    script = pathlib.Path(sys.executable).parent / name
    found = shutil.which(name)
    if found and pathlib.Path(found).resolve() == script.resolve():
        return name
    with contextlib.suppress(ValueError):
        return str(script.relative_to(pathlib.Path.cwd()))
    return str(script)


def _missing_only(
    stub: registry_pb2_grpc.RegistryStub, text: str, console: Console
) -> str:
    """The documents of ``text`` whose object does not exist yet."""
    import grpc
    import yaml

    from matrixinfer.api.v1 import registry_pb2 as rpb

    missing = []
    for doc in yaml.safe_load_all(text):
        if not isinstance(doc, dict):
            continue
        meta = doc.get("metadata") or {}
        try:
            stub.Get(
                rpb.GetRequest(
                    kind=str(doc.get("kind", "")),
                    namespace=str(meta.get("namespace", "")),
                    name=str(meta.get("name", "")),
                ),
                timeout=10,
            )
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
            missing.append(yaml.safe_dump(doc, sort_keys=False))
            continue
        console.print(f"[green]✓[/] {doc['kind']}/{meta.get('name')} kept")
    return "---\n".join(missing)


def _apply(stub: registry_pb2_grpc.RegistryStub, text: str, console: Console) -> None:
    from matrixinfer.api.envelope import unwrap
    from matrixinfer.api.v1 import registry_pb2 as rpb

    applied = stub.Apply(rpb.ApplyRequest(manifest=text), timeout=30)
    for result in applied.results:
        obj = unwrap(result.resource)
        assert obj is not None  # Apply answers with what it applied
        console.print(f"[green]✓[/] {obj.kind}/{obj.metadata.name} {result.action}")


def _lock_state(state: pathlib.Path) -> IO[str]:
    """One `up` per state folder: two would share the SQLite file and run each
    model twice, overwriting each other's status."""
    handle = (state / "up.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        click.echo(
            f"error: {state} is in use by another `matrixinfer up` ({owner}); stop "
            "it first, or pass a different --state-dir",
            err=True,
        )
        sys.exit(EXIT_USAGE)
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle


def local_pki(state: pathlib.Path) -> dict[str, CertFiles]:
    """The local CA and a certificate per service (and the CLI's admin one) under
    ``state/pki``: made on the first start, reused later, reissued near expiry;
    keys mode 0600."""
    from matrixinfer.core.pki import ensure_pki

    return ensure_pki(state / "pki")


def tls_env(prefix: str, files: CertFiles) -> dict[str, str]:
    """The settings that start a service with mTLS on its certificate."""
    return {
        f"MATRIXINFER_{prefix}_TLS_CERT_FILE": str(files.cert),
        f"MATRIXINFER_{prefix}_TLS_KEY_FILE": str(files.key),
        f"MATRIXINFER_{prefix}_TLS_CA_FILE": str(files.ca),
    }


def as_tls(files: CertFiles) -> Tls:
    return (files.ca, files.cert, files.key)


def record_local_up(server: str, admin: CertFiles) -> pathlib.Path:
    """Tell the CLI (config.local_up_tls) which admin certificate reaches
    ``server`` while this `up` runs."""
    path = local_up_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "server": server,
                "tls_ca": str(admin.ca),
                "tls_cert": str(admin.cert),
                "tls_key": str(admin.key),
                "pid": os.getpid(),
            }
        )
        + "\n"
    )
    return path


def forget_local_up() -> None:
    """Remove the record, when it is still ours."""
    path = local_up_path()
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the public ports on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def connect_host(host: str) -> str:
    """Where `up` itself reaches a port bound on ``host``."""
    return HOST if host in ("0.0.0.0", "::", "") else host  # noqa: S104 - a name


def edge_certificate(state: pathlib.Path, host: str) -> tuple[pathlib.Path, ...]:
    """(CA, certificate, key) for TLS on the gateway's public ports: a local CA
    kept in ``state/edge-tls`` (its own, apart from the services' mTLS CA, so a
    client that trusts it trusts only the gateway) and a certificate naming
    localhost, 127.0.0.1, ::1, this machine's name and ``host``. Made on the
    first `up --tls`, reused later, reissued near expiry or for other names."""
    import socket as sockets

    from cryptography import x509

    from matrixinfer.core import pki

    folder = state / EDGE_TLS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    authority = pki.Authority(folder / "ca.crt", folder / "ca.key")
    try:
        authority.load()
    except (OSError, ValueError):
        authority = pki.create_ca(folder, "MatrixInfer local gateway CA")
    names = ["localhost", "127.0.0.1", "::1", sockets.gethostname()]
    if host not in names and host not in ("0.0.0.0", "::"):  # noqa: S104
        names.append(host)
    files = pki.CertFiles(
        folder / "gateway.crt", folder / "gateway.key", authority.cert_path
    )
    wanted = pki.subject_alt_name(names, ip_addresses=True)
    with contextlib.suppress(OSError, ValueError, x509.ExtensionNotFound):
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        if ext.value == wanted and not pki.needs_renewal(files, authority):
            return authority.cert_path, files.cert, files.key
    # issue writes the key first: the gateway reloads a changed pair, and refuses
    # a mismatched one.
    files = pki.issue(
        authority, "gateway", folder, sans=names, ip_addresses=True, usage="server"
    )
    return authority.cert_path, files.cert, files.key


def _write_private(path: pathlib.Path, data: bytes) -> None:
    """Replace ``path`` with ``data``, readable by this user only from the start."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _edge_settings(host: str, edge: tuple[pathlib.Path, ...] | None) -> dict[str, str]:
    """The gateway's settings for its public ports: where, and TLS."""
    out = {"host": host}
    if edge is not None:
        out["edge_tls_cert_file"], out["edge_tls_key_file"] = str(edge[1]), str(edge[2])
    return out


def _gateway_health(
    host: str, grpc_port: int, edge: tuple[pathlib.Path, ...] | None
) -> Callable[[], str] | None:
    """How `up` asks the gateway's health when not plaintext on HOST."""
    address = f"{connect_host(host)}:{grpc_port}"
    if edge is not None:
        return gateway_probe(address, edge[0])
    if host != HOST:
        return lambda: health(address, 1.0)
    return None


def gateway_probe(address: str, ca: pathlib.Path) -> Callable[[], str]:
    """The gateway's gRPC health over TLS (its certificate checked against ca)."""

    def probe() -> str:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
        with grpc.secure_channel(address, credentials) as channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1.0
                )
            except grpc.RpcError as e:
                return f"unreachable ({e.code().name})"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))

    return probe


def admin_api_key(
    stub: registry_pb2_grpc.RegistryStub, state: pathlib.Path
) -> tuple[str, bool]:
    """(the admin API key of `up --auth`, whether it was made now). Made through
    the registry's CreateApiKey on the first start and kept in the state folder
    (mode 0600); later starts reuse it while the registry still has it."""
    import grpc

    from matrixinfer.api.v1 import registry_pb2 as rpb
    from matrixinfer.core.apikeys import api_key_id

    path = state / ADMIN_KEY_FILE
    with contextlib.suppress(OSError):
        secret = path.read_text().strip()
        key_id = api_key_id(secret)
        if key_id is not None:
            try:
                got = stub.Get(rpb.GetRequest(kind="ApiKey", name=key_id), timeout=10)
                if not got.api_key.spec.revoked:
                    return secret, False
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:
                    raise
    made = stub.CreateApiKey(
        rpb.CreateApiKeyRequest(subject="matrixinfer-up", scopes=["admin", "infer:*"]),
        timeout=10,
    )
    _write_private(path, (made.secret + "\n").encode())
    return made.secret, True


@dataclass(frozen=True)
class EdgeAccess:
    """What a client needs for the gateway's public ports: the CA to trust (TLS,
    `up --tls`), the admin API key's file (`up --auth`) and, on the start that made
    the key, the key itself (printed that once)."""

    ca: pathlib.Path | None = None
    key_file: pathlib.Path | None = None
    new_key: str = ""
    bound: str = HOST

    @property
    def host(self) -> str:
        return connect_host(self.bound)

    def _key(self, quote: str = '"') -> str:
        return f"{quote}$(cat {shlex.quote(str(self.key_file))}){quote}"

    def curl_options(self) -> str:
        out = f" --cacert {shlex.quote(str(self.ca))}" if self.ca else ""
        if self.key_file:
            out += ' -H "x-api-key: ' + self._key("") + '"'
        return out

    def cli_env(self) -> str:
        out = f"SSL_CERT_FILE={shlex.quote(str(self.ca))} " if self.ca else ""
        if self.key_file:
            out += f"MATRIXINFER_TOKEN={self._key()} "
        return out

    def triton_options(self) -> str:
        return f", ssl=True, root_certificates={str(self.ca)!r}" if self.ca else ""

    def triton_headers(self) -> str:
        if not self.key_file:
            return ""
        return f', headers={{"x-api-key": open({str(self.key_file)!r}).read().strip()}}'

    def describe(self, console: Console) -> None:
        if self.bound != HOST:
            console.print(f"  Public ports bound on:            {self.bound}")
        if self.ca:
            console.print(
                f"  TLS (local CA for clients):       {self.ca}", highlight=False
            )
        if not self.key_file:
            return
        if self.new_key:
            console.print()
            console.print(
                "[bold]Admin API key[/] (shown once; kept in "
                f"{self.key_file}, mode 0600):",
                highlight=False,
            )
            console.print(f"  {self.new_key}", highlight=False, markup=False)
        else:
            console.print(
                f"  Admin API key:                    in {self.key_file} "
                "(not shown again)",
                highlight=False,
            )
        console.print(
            '  gRPC metadata "x-api-key" (tritonclient headers=..., grpcurl -H '
            "'x-api-key: ...'); REST header x-api-key; CLI MATRIXINFER_TOKEN",
            highlight=False,
            markup=False,
        )


def _kubectl_credentials(
    client: CertFiles | None, key_file: pathlib.Path | None
) -> str:
    """kubectl's options for the registry's HTTPS port: trust the local CA, expect
    the registry's identity name (kubectl dials 127.0.0.1), and present the admin
    API key of `up --auth`, else the admin client certificate."""
    if client is None:
        return ""
    from matrixinfer.core.pki import identity_name

    out = f" --certificate-authority {shlex.quote(str(client.ca))}"
    out += f" --tls-server-name {identity_name('registry')}"
    if key_file is not None:
        return out + f' --token "$(cat {shlex.quote(str(key_file))})"'
    out += f" --client-certificate {shlex.quote(str(client.cert))}"
    return out + f" --client-key {shlex.quote(str(client.key))}"


def print_endpoints(
    console: Console,
    grpc_port: int,
    http_port: int,
    registry_port: int,
    state: str,
    quickstart: bool = True,
    kube_port: int | None = None,
    edge: EdgeAccess | None = None,
    kube_client: CertFiles | None = None,
) -> None:
    """What `up` started and how to reach it. ``kube_client``: the admin client
    certificate, when the registry's Kubernetes API port speaks HTTPS with its
    mTLS files (and wants an identity)."""
    edge = edge or EdgeAccess()
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "X",
                    "shape": [1, 4],
                    "datatype": "FP32",
                    "data": EXAMPLE_INPUT[0],
                }
            ]
        },
        separators=(",", ":"),
    )
    http = f"{'https' if edge.ca else 'http'}://{edge.host}:{http_port}"
    curl = (
        f"curl -s{edge.curl_options()} -X POST {http}/v2/models/iris/infer "
        f"-H 'content-type: application/json' -d {shlex.quote(body)}"
    )
    cli = (
        f"{edge.cli_env()}{_command('matrixinfer')} --gateway {http} infer iris "
        f"--input X={shlex.quote(json.dumps(EXAMPLE_INPUT, separators=(',', ':')))}"
    )
    snippet = (
        "import numpy as np, tritonclient.grpc as grpcclient\n"
        f'client = grpcclient.InferenceServerClient("{edge.host}:{grpc_port}"'
        f"{edge.triton_options()})\n"
        'x = grpcclient.InferInput("X", [1, 4], "FP32")\n'
        "x.set_data_from_numpy(np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32))\n"
        f'print(client.infer("iris", [x]{edge.triton_headers()}).as_numpy("label"))'
    )
    console.print()
    console.print("[bold]MatrixInfer is up.[/]")
    console.print(f"  gRPC (KServe v2, Triton clients): {edge.host}:{grpc_port}")
    console.print(f"  REST (KServe v2):                 {http}")
    console.print(f"  Registry (matrixinfer CLI):       {HOST}:{registry_port}")
    kubectl = ""
    if kube_port is not None:
        kube = f"{'https' if kube_client else 'http'}://{HOST}:{kube_port}"
        console.print(f"  Kubernetes API (kubectl):         {kube}")
        ours = (pathlib.Path(sys.executable).parent / "kubectl").exists()
        kubectl = f"{_command('kubectl') if ours else 'kubectl'} --server {kube}"
        kubectl += _kubectl_credentials(kube_client, edge.key_file)
        kubectl += " get modelinfers"
    console.print(f"  State and logs:                   {state}")
    edge.describe(console)
    console.print()
    if not quickstart:
        if kubectl:
            console.print(f"  {kubectl}", highlight=False, markup=False, soft_wrap=True)
            console.print()
        console.print("Press Ctrl-C to stop everything.")
        return
    console.print("Try it:", highlight=False)
    if kubectl:
        console.print(f"  {kubectl}", highlight=False, markup=False, soft_wrap=True)
    console.print(f"  {curl}", highlight=False, markup=False, soft_wrap=True)
    console.print(f"  {cli}", highlight=False, markup=False, soft_wrap=True)
    console.print(f"  {_command('python')} - <<'EOF'", highlight=False, markup=False)
    for line in snippet.splitlines():
        console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
    console.print("  EOF", highlight=False, markup=False)
    console.print()
    console.print("Press Ctrl-C to stop everything.")


@click.command()
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    default=".matrixinfer",
    show_default=True,
    envvar="MATRIXINFER_STATE_DIR",
    help="Registry database (SQLite), model repositories and logs.",
)
@click.option(
    "--database-url",
    default=None,
    envvar="MATRIXINFER_DATABASE_URL",
    help="Registry database, e.g. postgresql+psycopg://user@host/db "
    "(default: SQLite in the state folder).",
)
@click.option("--grpc-port", default=8001, show_default=True, type=int)
@click.option("--http-port", default=8000, show_default=True, type=int)
@click.option("--registry-port", default=50051, show_default=True, type=int)
@click.option(
    "--kube-port",
    default=50053,
    show_default=True,
    type=int,
    help="The registry's Kubernetes API (kubectl --server https://127.0.0.1:PORT).",
)
@click.option("--controller-port", default=50052, show_default=True, type=int)
@click.option("--autoscaler-port", default=50054, show_default=True, type=int)
@click.option(
    "-f",
    "--filename",
    "manifests",
    multiple=True,
    type=click.Path(exists=True, path_type=pathlib.Path),
    help="Manifests to apply instead of the quickstart (files or folders).",
)
@click.option("--no-examples", is_flag=True, help="Apply nothing; just run.")
@click.option(
    "--host",
    default=HOST,
    show_default=True,
    help="Where the gateway's public ports (gRPC, REST) listen, e.g. 0.0.0.0; "
    "beyond loopback they always serve TLS. The other services stay on loopback.",
)
@click.option(
    "--auth",
    is_flag=True,
    help="Require an API key (or JWT) at the gateway; an admin key is made on the "
    f"first start, printed once and kept in the state folder ({ADMIN_KEY_FILE}).",
)
@click.option(
    "--tls",
    is_flag=True,
    help="Serve TLS on the gateway's public ports, with a certificate from a local "
    f"CA kept in the state folder ({EDGE_TLS_DIR}/ca.crt for clients).",
)
@click.option(
    "--timeout",
    "timeout_s",
    default=180.0,
    show_default=True,
    type=float,
    help="Seconds to wait for each service and for the model to serve.",
)
def up(
    state_dir: pathlib.Path,
    database_url: str | None,
    grpc_port: int,
    http_port: int,
    registry_port: int,
    kube_port: int,
    controller_port: int,
    autoscaler_port: int,
    manifests: tuple[pathlib.Path, ...],
    no_examples: bool,
    timeout_s: float,
    host: str = HOST,
    auth: bool = False,
    tls: bool = False,
) -> None:
    """Run the whole platform here (registry, controller, autoscaler, gateway) and
    deploy the quickstart model; Ctrl-C stops it all."""
    import grpc
    from rich.console import Console

    from matrixinfer.api.v1 import registry_pb2_grpc

    console = Console(highlight=False)
    ports = {
        "--grpc-port": grpc_port,
        "--http-port": http_port,
        "--registry-port": registry_port,
        "--kube-port": kube_port,
        "--controller-port": controller_port,
        "--autoscaler-port": autoscaler_port,
    }
    if len(set(ports.values())) != len(ports):
        raise click.UsageError("the ports must differ")
    # Plaintext only while the public ports stay on this machine.
    tls = tls or not is_loopback(host)
    haproxy = os.environ.get("MATRIXINFER_GATEWAY_HAPROXY_BINARY", "haproxy")
    if shutil.which(haproxy) is None:
        # The gateway's data plane; stop before starting anything.
        raise click.ClickException(
            f"{haproxy!r} not found: HAProxy (>= 2.6) carries every inference "
            "request. Install it with `sudo apt-get install haproxy` (Debian/Ubuntu; "
            "`make setup` does it when run as root), then run this again."
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock_state(state_dir.resolve())
    busy = [f"{opt} {port}" for opt, port in ports.items() if not _port_free(port)]
    if busy:
        click.echo(
            f"error: port(s) in use: {', '.join(busy)}. Is another `matrixinfer up` "
            "running? Stop it, or choose other ports with those options.",
            err=True,
        )
        sys.exit(EXIT_USAGE)
    root = _repo_root()
    paths = list(manifests)
    if not paths and not no_examples:
        if root is None:
            raise click.UsageError(
                "the quickstart manifests were not found (run from a checkout, or "
                "pass -f with your manifests, or --no-examples)"
            )
        paths = [root / "examples" / "quickstart"]
    model_path = (root or pathlib.Path.cwd()) / "examples" / "iris" / "model.onnx"
    state = state_dir.resolve()
    logs = state / "logs"
    database = database_url or f"sqlite+aiosqlite:///{state}/registry.db"
    common = {"LOG_JSON": "false", "HOST": HOST}

    def env(prefix: str, **values: object) -> dict[str, str]:
        merged = {**common, **{k.upper(): str(v) for k, v in values.items()}}
        return {f"MATRIXINFER_{prefix}_{k}": v for k, v in merged.items()}

    registry_address = f"{HOST}:{registry_port}"
    # TLS on the gateway's public ports (`--tls`, or bound beyond loopback).
    edge_tls = edge_certificate(state, host) if tls else None
    # mTLS between the services (and from this CLI) on a local CA.
    pki = local_pki(state)
    admin_tls = as_tls(pki["admin"])
    services = [
        Service(
            "registry",
            "matrixinfer.registry",
            registry_port,
            env(
                "REGISTRY",
                grpc_port=registry_port,
                kube_port=kube_port,
                database_url=database,
            )
            | tls_env("REGISTRY", pki["registry"]),
            logs / "registry.log",
            health_tls=admin_tls,
        ),
        Service(
            "controller",
            "matrixinfer.controller",
            controller_port,
            env(
                "CONTROLLER",
                grpc_port=controller_port,
                registry_address=registry_address,
                state_dir=state / "controller",
            )
            | tls_env("CONTROLLER", pki["controller"])
            # Every replica's Triton takes mTLS on gRPC (the gateway, with its
            # own files, then speaks it to them).
            | tls_env("CONTROLLER_REPLICA", pki["replica"]),
            logs / "controller.log",
            health_tls=admin_tls,
        ),
        Service(
            "autoscaler",
            "matrixinfer.autoscaler",
            autoscaler_port,
            env(
                "AUTOSCALER",
                grpc_port=autoscaler_port,
                registry_address=registry_address,
                controller_address=f"{HOST}:{controller_port}",
            )
            | tls_env("AUTOSCALER", pki["autoscaler"]),
            logs / "autoscaler.log",
            health_tls=admin_tls,
        ),
        Service(
            "gateway",
            "matrixinfer.gateway",
            grpc_port,
            env(
                "GATEWAY",
                grpc_port=grpc_port,
                http_port=http_port,
                registry_address=registry_address,
                autoscaler_address=f"{HOST}:{autoscaler_port}",
                # Local development; `--auth` (and production) sets `required`.
                auth_mode="required" if auth else "off",
                **_edge_settings(host, edge_tls),
            )
            | tls_env("GATEWAY", pki["gateway"]),
            logs / "gateway.log",
            probe=_gateway_health(host, grpc_port, edge_tls),
        ),
    ]
    supervisor = Supervisor(services, console)
    code = 0
    with supervisor.signals():
        try:
            console.print(f"state folder {state} (database {database.split('://')[0]})")
            record_local_up(registry_address, pki["admin"])
            console.print(
                f"mTLS between the services and to the replicas' gRPC, certificates "
                f"in {state / 'pki'} (the matrixinfer CLI uses the admin one while "
                "this runs)"
            )
            for service in services:
                supervisor.start(service, timeout_s)
            access = EdgeAccess(edge_tls[0] if edge_tls else None, bound=host)
            if auth:
                with grpc_channel(registry_address, "registry", admin_tls) as channel:
                    secret, made = admin_api_key(
                        registry_pb2_grpc.RegistryStub(channel), state
                    )
                access = dataclasses.replace(
                    access,
                    key_file=state / ADMIN_KEY_FILE,
                    new_key=secret if made else "",
                )
            if paths:
                text = _read_manifests(paths, model_path)
                with grpc_channel(registry_address, "registry", admin_tls) as channel:
                    stub = registry_pb2_grpc.RegistryStub(channel)
                    if not manifests:
                        # The quickstart only fills in what is missing: a second
                        # `up` keeps what the user changed since.
                        text = _missing_only(stub, text, console)
                    if text.strip():
                        _apply(stub, text, console)
                    if not manifests:
                        _wait_serving(
                            console,
                            supervisor,
                            stub,
                            f"{'https' if access.ca else 'http'}://"
                            f"{access.host}:{http_port}",
                            "iris",
                            timeout_s,
                            {"x-api-key": secret} if auth else None,
                            access.ca,
                        )
            print_endpoints(
                console,
                grpc_port,
                http_port,
                registry_port,
                str(state),
                quickstart=bool(paths) and not manifests,
                kube_port=kube_port,
                edge=access,
                kube_client=pki["admin"],
            )
            while True:
                supervisor.check()
                time.sleep(0.5)
        except Stop:
            console.print("\nstopping ...")
        except grpc.RpcError as e:
            click.echo(f"error: {e.details()}", err=True)
            code = EXIT_FAILED
        except click.ClickException as e:
            e.show()
            code = EXIT_FAILED
        finally:
            # Another Ctrl-C, SIGTERM or SIGHUP during the orderly stop must not
            # cut it short and leave children behind.
            supervisor.quiet()
            supervisor.stop()
            forget_local_up()
            lock.close()
    sys.exit(code)
