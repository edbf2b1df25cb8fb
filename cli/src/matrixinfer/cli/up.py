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
import fcntl
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, TYPE_CHECKING

import click

from matrixinfer.cli.client import health
from matrixinfer.core.process import die_with_parent

if TYPE_CHECKING:
    from rich.console import Console

    from matrixinfer.api.v1 import registry_pb2_grpc

EXIT_FAILED, EXIT_USAGE = 1, 2
HOST = "127.0.0.1"
MAX_CRASHES = 5  # within CRASH_WINDOW_S, then up gives up
CRASH_WINDOW_S = 60.0
STOP_GRACE_S = 20.0
EXAMPLE_INPUT = [[6.7, 3.0, 5.2, 2.3]]


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


def _http_ok(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310 - loopback
            return bool(response.status == 200)
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
            while health(address, 1.0) != "SERVING":
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
            if _http_ok(f"{http_url}/v2/models/{model}/ready"):
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


def print_endpoints(
    console: Console,
    grpc_port: int,
    http_port: int,
    registry_port: int,
    state: str,
    quickstart: bool = True,
    kube_port: int | None = None,
) -> None:
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
    http = f"http://{HOST}:{http_port}"
    curl = (
        f"curl -s -X POST {http}/v2/models/iris/infer "
        f"-H 'content-type: application/json' -d {shlex.quote(body)}"
    )
    cli = (
        f"{_command('matrixinfer')} --gateway {http} infer iris "
        f"--input X={shlex.quote(json.dumps(EXAMPLE_INPUT, separators=(',', ':')))}"
    )
    snippet = (
        "import numpy as np, tritonclient.grpc as grpcclient\n"
        f'client = grpcclient.InferenceServerClient("{HOST}:{grpc_port}")\n'
        'x = grpcclient.InferInput("X", [1, 4], "FP32")\n'
        "x.set_data_from_numpy(np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32))\n"
        'print(client.infer("iris", [x]).as_numpy("label"))'
    )
    console.print()
    console.print("[bold]MatrixInfer is up.[/]")
    console.print(f"  gRPC (KServe v2, Triton clients): {HOST}:{grpc_port}")
    console.print(f"  REST (KServe v2):                 {http}")
    console.print(f"  Registry (matrixinfer CLI):       {HOST}:{registry_port}")
    kubectl = ""
    if kube_port is not None:
        kube = f"http://{HOST}:{kube_port}"
        console.print(f"  Kubernetes API (kubectl):         {kube}")
        ours = (pathlib.Path(sys.executable).parent / "kubectl").exists()
        kubectl = f"{_command('kubectl') if ours else 'kubectl'} --server {kube}"
        kubectl += " get modelinfers"
    console.print(f"  State and logs:                   {state}")
    console.print()
    if not quickstart:
        if kubectl:
            console.print(f"  {kubectl}", highlight=False, markup=False)
            console.print()
        console.print("Press Ctrl-C to stop everything.")
        return
    console.print("Try it:", highlight=False)
    if kubectl:
        console.print(f"  {kubectl}", highlight=False, markup=False)
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
    help="The registry's Kubernetes API (kubectl --server http://127.0.0.1:PORT).",
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
            ),
            logs / "registry.log",
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
            ),
            logs / "controller.log",
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
            ),
            logs / "autoscaler.log",
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
                # Local development on loopback; production sets `required`.
                auth_mode="off",
            ),
            logs / "gateway.log",
        ),
    ]
    supervisor = Supervisor(services, console)
    code = 0
    with supervisor.signals():
        try:
            console.print(f"state folder {state} (database {database.split('://')[0]})")
            for service in services:
                supervisor.start(service, timeout_s)
            if paths:
                text = _read_manifests(paths, model_path)
                with grpc.insecure_channel(registry_address) as channel:
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
                            f"http://{HOST}:{http_port}",
                            "iris",
                            timeout_s,
                        )
            print_endpoints(
                console,
                grpc_port,
                http_port,
                registry_port,
                str(state),
                quickstart=bool(paths) and not manifests,
                kube_port=kube_port,
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
            lock.close()
    sys.exit(code)
