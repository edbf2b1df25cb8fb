"""The README quickstart, exactly as a new user follows it: `make run` (in the
background here), the commands it prints, then Ctrl-C — and a second `make run`
resumes the stored state. Uses the default ports (8000, 8001, 50051, 50052,
50054), as the README does."""

from __future__ import annotations

import json
import os
import pathlib
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from matrixinfer.core.process import pids_matching
from tests.conftest import ROOT

# Several platform starts and real traffic: more than the default 120 s.
pytestmark = pytest.mark.timeout(400)

PORTS = (8000, 8001, 50051, 50052, 50054)


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Run:
    process: subprocess.Popen[str]
    lines: queue.Queue[str | None]
    output: list[str]

    def read_until(self, marker: str, timeout_s: float) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while not any(marker in line for line in self.output):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{marker!r} not printed in {timeout_s} s:\n" + "".join(self.output)
                )
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError("make run ended early:\n" + "".join(self.output))
            self.output.append(line)
        return self.output

    @classmethod
    def attach(cls, process: subprocess.Popen[str]) -> Run:
        """Read the process' output on a thread, line by line."""
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert process.stdout is not None
            with process.stdout:
                for line in process.stdout:
                    lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        return cls(process, lines, [])

    def ctrl_c(self, timeout_s: float = 90) -> None:
        """What the terminal does on Ctrl-C: SIGINT to the foreground group."""
        os.killpg(self.process.pid, signal.SIGINT)
        self.process.wait(timeout=timeout_s)
        while (line := self.lines.get(timeout=5)) is not None:
            self.output.append(line)


def make_run(state_dir: pathlib.Path) -> Run:
    env = {**os.environ, "MATRIXINFER_STATE_DIR": str(state_dir)}
    process = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, like a terminal job
    )
    return Run.attach(process)


@pytest.fixture
def state_dir(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    busy = [p for p in PORTS if port_in_use(p)]
    if busy:
        pytest.fail(f"the quickstart's ports are in use here: {busy}")
    yield tmp_path / "state"


def printed_commands(output: list[str]) -> tuple[str, str, str]:
    text = "".join(output)
    lines = [line.strip() for line in text.splitlines()]
    curl = next(line for line in lines if line.startswith("curl "))
    cli = next(line for line in lines if " infer iris " in line)
    start = next(i for i, line in enumerate(lines) if line.endswith("- <<'EOF'"))
    end = lines.index("EOF", start)
    snippet = "\n".join(lines[start : end + 1])
    return curl, cli, snippet


def shell(command: str) -> str:
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def tritonservers_of(state_dir: pathlib.Path) -> list[int]:
    return pids_matching("tritonserver", str(state_dir))


def test_readme_quickstart(state_dir: pathlib.Path) -> None:
    run = make_run(state_dir)
    try:
        output = run.read_until("Press Ctrl-C", timeout_s=240)
        curl, cli, snippet = printed_commands(output)

        answer = json.loads(shell(curl))
        label = next(o for o in answer["outputs"] if o["name"] == "label")
        assert label["data"] == [2]
        assert "[[2]]" in shell(cli)
        assert shell(snippet).strip() == "[[2]]"
        assert tritonservers_of(state_dir), "no Triton server was started"
        # One `up` per state folder.
        second = subprocess.run(
            [".venv/bin/matrixinfer", "up", "--state-dir", str(state_dir)],
            cwd=ROOT, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert second.returncode == 2 and "in use by another" in second.stderr
        # A change of the user's own, to be kept by the next `make run`.
        shell(
            ".venv/bin/matrixinfer apply -f - <<'EOF'\n"
            "apiVersion: registry.matrixinfer.ai/v1alpha1\n"
            "kind: AutoscalingPolicy\n"
            "metadata: {name: iris}\n"
            "spec: {targetRef: {kind: ModelInfer, name: iris}, maxReplicas: 2}\n"
            "EOF"
        )
    finally:
        if run.process.poll() is None:
            run.ctrl_c()
    text = "".join(run.output)
    for service in ("gateway", "autoscaler", "controller", "registry"):
        assert f"{service} stopped" in text
    assert "killed" not in text
    assert tritonservers_of(state_dir) == []  # no orphan tritonserver
    assert [p for p in PORTS if port_in_use(p)] == []  # every port freed

    # A second `make run` resumes the stored state: nothing to create again.
    again = make_run(state_dir)
    try:
        output = again.read_until("Press Ctrl-C", timeout_s=240)
        text = "".join(output)
        assert "ModelInfer/iris kept" in text
        assert "created" not in text and "configured" not in text
        answer = json.loads(shell(printed_commands(output)[0]))
        assert answer["model_name"] == "iris"
        policy = json.loads(
            shell(".venv/bin/matrixinfer get autoscalingpolicy iris -o json")
        )
        assert policy["spec"]["maxReplicas"] == 2  # the user's change survived
    finally:
        if again.process.poll() is None:
            again.ctrl_c()
    assert tritonservers_of(state_dir) == []


def test_up_on_postgresql(pg_schema_url: str, tmp_path: pathlib.Path) -> None:
    """`matrixinfer up --database-url` keeps the registry in PostgreSQL (other ports,
    so a developer's running `make run` does not matter)."""
    ports = {
        "--grpc-port": 18001,
        "--http-port": 18000,
        "--registry-port": 18051,
        "--kube-port": 18053,
        "--controller-port": 18052,
        "--autoscaler-port": 18054,
    }
    args = [a for option, port in ports.items() for a in (option, str(port))]
    process = subprocess.Popen(
        [
            sys.executable, "-m", "matrixinfer.cli", "up",
            "--state-dir", str(tmp_path / "state"),
            "--database-url", pg_schema_url, *args,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )  # fmt: skip
    run = Run.attach(process)
    try:
        output = run.read_until("Press Ctrl-C", timeout_s=240)
        # Content, not terminal layout: the console wraps long state folder paths.
        assert re.search(r"\(database\s+postgresql\+psycopg\)", "".join(output))
        answer = json.loads(shell(printed_commands(output)[0]))
        assert answer["model_name"] == "iris"
    finally:
        if process.poll() is None:
            run.ctrl_c()
    schema = pg_schema_url.rsplit("search_path%3D", 1)[1]
    plain = pg_schema_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(plain.split("?", 1)[0], autocommit=True) as conn:
        rows = conn.execute(
            f'SELECT kind, name FROM "{schema}".resources ORDER BY kind'  # noqa: S608
        ).fetchall()
    assert ("ModelInfer", "iris") in rows and ("AutoscalingPolicy", "iris") in rows
    assert tritonservers_of(tmp_path / "state") == []
