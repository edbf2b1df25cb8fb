"""The README's walk-throughs (canary, rollback, autoscaling and scale to zero), run
verbatim — each `<!-- walkthrough: NAME -->` block as one bash script — against a
fresh `matrixinfer up` on the default ports, as a reader would."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from matrixinfer.cli.client import grpc_channel
from matrixinfer.core.pki import ensure_pki
from tests.conftest import ROOT
from tests.e2e.test_quickstart import PORTS, Run, port_in_use, tritonservers_of

pytestmark = pytest.mark.timeout(400)
MARKER = re.compile(r"<!-- walkthrough: ([a-z-]+) -->\n```bash\n(.*?)```", re.S)


def walkthroughs() -> dict[str, str]:
    return dict(MARKER.findall((ROOT / "README.md").read_text()))


def run_block(name: str) -> str:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", walkthroughs()[name]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, f"{name}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@dataclass
class Up(Run):
    #: The state folder `up` runs with (its local CA and certificates in pki/).
    state: pathlib.Path = pathlib.Path()


@pytest.fixture(scope="module")
def platform_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    busy = [p for p in PORTS if port_in_use(p)]
    if busy:
        pytest.fail(f"the walk-throughs' ports are in use here: {busy}")
    state = tmp_path_factory.mktemp("walkthroughs") / "state"
    process = subprocess.Popen(
        [sys.executable, "-m", "matrixinfer.cli", "up", "--state-dir", str(state)],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    attached = Run.attach(process)
    run = Up(attached.process, attached.lines, attached.output, state)
    try:
        run.read_until("Press Ctrl-C", timeout_s=240)
        yield run
    finally:
        if process.poll() is None:
            run.ctrl_c()
    assert tritonservers_of(state) == []


def test_the_walkthrough_blocks_are_found() -> None:
    assert set(walkthroughs()) == {
        "canary",
        "canary-cleanup",
        "rollback",
        "autoscaling",
    }


def test_canary_splits_traffic(platform_up: Run) -> None:
    out = run_block("canary")
    counts = {name: int(n) for n, name in re.findall(r"^\s*(\d+) (\S+)$", out, re.M)}
    assert sum(counts.values()) == 200, out
    # 10 % of 200: the binomial spread makes 5..45 a bound that cannot flake.
    assert 5 <= counts.get("iris-v2", 0) <= 45, counts
    run_block("canary-cleanup")


def test_rollout_and_rollback(platform_up: Run) -> None:
    out = run_block("rollback")
    assert "modelinfer/iris available (1/1 ready, model revision 2)" in out, out
    assert "modelinfer/iris available: 1/1 ready on revision 3" in out, out
    row = next(line for line in out.splitlines() if line.startswith("iris "))
    assert row.split()[2:4] == ["1/1", "3"], out


def test_autoscaling_to_three_in_panic_and_to_zero_and_back(platform_up: Run) -> None:
    out = run_block("autoscaling")
    lines = out.splitlines()
    # The policy's table once its CURRENT reached 3, under load: 3 wanted, 3 ready.
    at = next(
        i for i, line in enumerate(lines) if line.split()[:2] == ["NAME", "TARGET"]
    )
    policy = dict(zip(lines[at].split(), lines[at + 1].split(), strict=False))
    assert (policy["NAME"], policy["CURRENT"], policy["DESIRED"]) == ("iris", "3", "3")
    # The ModelInfer's scaleReason: the last scale before that was a panic decision
    # on the Concurrency metric. (When the policy's edit found iris idle, it went to
    # zero first and the reason starts "traffic at zero → 3 replicas: " before it.)
    assert re.search(
        r"panic: Concurrency [0-9.]+ over 3s → \d+ replicas \(target 2 per replica\);"
        r" no scale-down until 10s after load last reached 200% of ready replicas",
        lines[at + 2],
    ), out
    assert re.search(r"^\d+ requests answered, 0 failed, in 20 s$", out, re.M), out
    # Scaled to zero once the load was gone.
    at = next(
        i for i, line in enumerate(lines) if line.split()[:2] == ["NAME", "MODEL"]
    )
    infer = dict(zip(lines[at].split(), lines[at + 1].split(), strict=False))
    assert (infer["NAME"], infer["READY"]) == ("iris", "0/0"), out
    answer = json.loads(lines[-1])  # the request at zero
    label = next(o for o in answer["outputs"] if o["name"] == "label")
    assert label["data"] == [2]


def children_running(parent: int, module: str) -> list[int]:
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[1]) == parent and module.encode() in cmdline and stat[0] != "Z":
            found.append(int(proc.name))
    return found


def test_a_crashed_service_is_restarted(platform_up: Up) -> None:
    """`up` supervises: an autoscaler killed with SIGKILL comes back on its own and
    the platform keeps serving."""
    (autoscaler,) = children_running(platform_up.process.pid, "matrixinfer.autoscaler")
    os.kill(autoscaler, signal.SIGKILL)
    platform_up.read_until("autoscaler exited with code -9", timeout_s=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        again = children_running(platform_up.process.pid, "matrixinfer.autoscaler")
        if (
            again
            and again != [autoscaler]
            and health_serving("127.0.0.1:50054", platform_up.state / "pki")
        ):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the autoscaler was not restarted")
    applied = subprocess.run(
        ["bash", "-c", 'sed "s|\\${IRIS_MODEL}|$PWD/examples/iris/model.onnx|" '
         "examples/quickstart/iris.yaml | .venv/bin/matrixinfer apply -f -"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "autoscalingpolicy/iris configured" in applied  # still takes changes...
    answer = subprocess.run(
        ["curl", "-s", "-X", "POST", "localhost:8000/v2/models/iris/infer", "-d",
         '{"inputs":[{"name":"X","shape":[1,4],"datatype":"FP32",'
         '"data":[6.7,3.0,5.2,2.3]}]}'],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert json.loads(answer)["model_name"] == "iris"  # ...and serves


def health_serving(address: str, pki: pathlib.Path) -> bool:
    """The autoscaler's gRPC health, over mTLS with up's admin certificate."""
    admin = ensure_pki(pki)["admin"]
    with grpc_channel(
        address, "autoscaler", (admin.ca, admin.cert, admin.key)
    ) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)
