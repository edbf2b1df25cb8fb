"""The adapter around the ``haproxy`` binary: configuration checks, a supervised
master-worker process, seamless reloads and the runtime API (a Unix socket).

The master runs in its own session with a parent-death signal, so it never outlives
the gateway; if it dies it is started again with backoff. A reload re-executes the
master, which starts a new worker that takes the listening sockets over from the old
one (``expose-fd listeners``): no connection is refused during a reload, and the old
worker finishes the requests it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import time

from matrixinfer.core.process import die_with_parent

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "HAProxy (>= 2.6) is the gateway's data plane and is not installed: "
    "run `sudo apt-get install haproxy` (Debian/Ubuntu), or set "
    "MATRIXINFER_GATEWAY_HAPROXY_BINARY to its path"
)


class ConfigRefused(Exception):
    """``haproxy -c`` refused a rendered configuration; the message is its output."""


class HAProxyMissing(RuntimeError):
    pass


def find_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise HAProxyMissing(INSTALL_HINT)
    return path


async def check_config(binary: str, path: pathlib.Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        binary,
        "-c",
        "-f",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        text = out.decode(errors="replace").strip()
        alerts = [
            line.split(" : ", 1)[-1].strip()
            for line in text.splitlines()
            if "ALERT" in line
        ]
        raise ConfigRefused("\n".join(alerts) or text or "haproxy -c failed")


class RuntimeApi:
    """HAProxy's runtime API on its stats socket: one connection per batch of
    commands (``;``-separated), the answer read until the socket closes."""

    def __init__(self, socket_path: pathlib.Path, timeout_s: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # During a reload the socket's path briefly names the old worker's closed
        # listener: try again for a moment.
        for _ in range(40):
            try:
                return await asyncio.open_unix_connection(str(self.socket_path))
            except (ConnectionRefusedError, FileNotFoundError):
                await asyncio.sleep(0.05)
        return await asyncio.open_unix_connection(str(self.socket_path))

    async def execute(self, command: str) -> str:
        async with asyncio.timeout(self.timeout_s):
            reader, writer = await self._connect()
            try:
                writer.write(command.encode() + b"\n")
                await writer.drain()
                data = await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        return data.decode(errors="replace")

    async def commands(self, commands: list[str], batch: int = 200) -> None:
        """Run commands in batches; raises when HAProxy answers an error."""
        for start in range(0, len(commands), batch):
            answer = await self.execute("; ".join(commands[start : start + batch]))
            # Success is silence, or one of these notes; anything else refused.
            bad = [
                line
                for line in map(str.strip, answer.splitlines())
                if line
                and not line.isdigit()
                and not line.startswith(("New version created", "Done"))
                and "changed from" not in line
            ]
            if bad:
                raise RuntimeError(f"runtime API refused: {' | '.join(bad[:5])}")

    async def replace_map(self, path: str, entries: dict[str, str]) -> None:
        """Swap a map's whole content atomically (prepare, fill, commit)."""
        answer = await self.execute(f"prepare map {path}")
        version = answer.split(":")[-1].strip() if ":" in answer else ""
        if not version.isdigit():
            raise RuntimeError(f"prepare map {path}: {answer.strip()}")
        cmds = [f"add map @{version} {path} {k} {v}" for k, v in entries.items()]
        cmds.append(f"commit map @{version} {path}")
        await self.commands(cmds)

    async def set_ssl_cert(self, path: str, pem: str) -> None:
        """Replace a loaded certificate (chain and key) at run time: new handshakes
        get it, established connections keep theirs. Raises when HAProxy refuses
        it (unreadable, key and certificate do not match), leaving the old one."""
        # The payload ends at the first empty line.
        payload = "\n".join(line for line in pem.splitlines() if line.strip())
        answer = await self.execute(f"set ssl cert {path} <<\n{payload}\n")
        if "Transaction created" not in answer and "Transaction updated" not in answer:
            raise RuntimeError(f"set ssl cert {path}: {answer.strip()}")
        answer = await self.execute(f"commit ssl cert {path}")
        if "Success!" not in answer:
            with contextlib.suppress(Exception):
                await self.execute(f"abort ssl cert {path}")
            raise RuntimeError(f"commit ssl cert {path}: {answer.strip()}")

    async def show_stat(self) -> list[dict[str, str]]:
        text = await self.execute("show stat")
        text = text.lstrip("# ")
        return list(csv.DictReader(io.StringIO(text)))

    async def worker_pid(self) -> int:
        for line in (await self.execute("show info")).splitlines():
            if line.startswith("Pid:"):
                return int(line.split(":", 1)[1])
        raise RuntimeError("show info has no Pid")


class HAProxyProcess:
    """One supervised HAProxy master (and its worker)."""

    def __init__(
        self, binary: str, directory: pathlib.Path, external: bool = False
    ) -> None:
        self.binary = binary
        #: HAProxy runs beside us (another container); we only drive its sockets.
        self.external = external
        self.master = RuntimeApi(directory / "master.sock")
        self.directory = directory
        self.config_path = directory / "haproxy.cfg"
        self.master_socket = directory / "master.sock"
        self.runtime = RuntimeApi(directory / "admin.sock")
        self.log_path = directory / "haproxy.log"
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False
        self._log_file: io.BufferedWriter | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        if self.external:
            # The container waits for haproxy.cfg, then starts; we wait for it.
            await self._wait_ready(timeout_s=120.0)
            return
        await self._spawn()
        self._watch = asyncio.get_running_loop().create_task(self._supervise())

    async def _spawn(self) -> None:
        for stale in (self.master_socket, self.runtime.socket_path):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        if self._log_file is None:
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [
                *die_with_parent(),
                self.binary,
                "-W",
                "-S",
                f"{self.master_socket},mode,600",
                "-f",
                str(self.config_path),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
        await self._wait_ready()

    async def _wait_ready(self, timeout_s: float = 15.0) -> int:
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(
                    f"haproxy exited with {self._proc.returncode}: {self.tail_log()}"
                )
            try:
                return await self.runtime.worker_pid()
            except (OSError, RuntimeError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"haproxy did not start: {self.tail_log()}"
                    ) from None
                await asyncio.sleep(0.05)

    def tail_log(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    async def reload(self, timeout_s: float = 15.0) -> None:
        """Seamless reload of the current config file; returns once the new worker
        answers the runtime API (the old one finishes what it holds)."""
        old = await self.runtime.worker_pid()
        # Through the master CLI, so it works the same when HAProxy runs in another
        # container: the master re-executes itself and reads the file again.
        await self.master.execute("reload")
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(OSError, RuntimeError, TimeoutError):
                if await self.runtime.worker_pid() != old:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"haproxy reload did not finish: {self.tail_log()}")
            await asyncio.sleep(0.02)

    async def _supervise(self) -> None:
        backoff = 0.5
        while not self._stopping:
            proc = self._proc
            assert proc is not None
            code = await asyncio.to_thread(proc.wait)
            if self._stopping:
                return
            self.restarts += 1
            log.error(
                "haproxy exited with %s; restarting in %.1f s (%s)",
                code,
                backoff,
                self.tail_log(3),
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
            try:
                await self._spawn()
                backoff = 0.5
            except Exception as e:  # keep trying; the old config is still there
                log.error("haproxy restart failed: %s", e)

    async def stop(self, grace_s: float = 5.0) -> None:
        self._stopping = True
        if self.external:
            return  # its lifecycle is the container runtime's
        proc = self._proc
        if proc is not None and proc.poll() is None:
            # SIGUSR1 to the master: workers stop accepting and finish their streams.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGUSR1 if grace_s > 0 else signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.to_thread(proc.wait), grace_s + 0.5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.to_thread(proc.wait)
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
