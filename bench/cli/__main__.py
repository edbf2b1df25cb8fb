"""CLI benchmark (not a test): ``python -m bench.cli`` (or ``make bench``).

Measures the wall time of ``matrixinfer`` commands as a user runs them, each in a
fresh process (the installed console script, so interpreter start-up and every
import count), the median of ``--runs`` runs after two unmeasured warm-up runs:

- ``matrixinfer --help``;
- ``matrixinfer --server ADDRESS get modelinfers`` against a real registry (SQLite,
  its own process on an ephemeral port) holding the objects of
  examples/manifests/all-kinds.yaml, so the table has rows;
- for scale, ``python -c pass`` (the interpreter alone).

It also counts the modules ``import matrixinfer.cli.main`` loads. Results are
printed and written to BENCHMARKS.md between markers.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from bench.report import ROOT, machine_line, write_section

MANIFESTS = ROOT / "examples/manifests/all-kinds.yaml"
CLI = pathlib.Path(sys.executable).with_name("matrixinfer")
GOALS = {"--help": 0.3, "get modelinfers": 0.5}


@dataclass
class Timing:
    label: str
    command: str
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


@contextmanager
def registry(workdir: pathlib.Path) -> Iterator[str]:
    """A registry process on SQLite and an ephemeral port; its address."""
    port_file = workdir / "registry.port"
    env = {
        **os.environ,
        "MATRIXINFER_REGISTRY_DATABASE_URL": (
            f"sqlite+aiosqlite:///{workdir}/registry.db"
        ),
        "MATRIXINFER_REGISTRY_GRPC_PORT": "0",
        "MATRIXINFER_REGISTRY_KUBE_PORT": "0",
        "MATRIXINFER_REGISTRY_PORT_FILE": str(port_file),
        "MATRIXINFER_REGISTRY_LOG_LEVEL": "WARNING",
    }
    log_path = workdir / "registry.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "matrixinfer.registry"],
            env=env,
            stdout=log,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"registry did not start; see {log_path}")
            time.sleep(0.05)
        yield f"127.0.0.1:{int(port_file.read_text())}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_once(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {result.returncode}: "
            + result.stderr.decode(errors="replace")
        )
    return elapsed


def measure(
    label: str, command: str, argv: list[str], env: dict[str, str], runs: int
) -> Timing:
    for _ in range(2):  # warm the page cache and .pyc files
        run_once(argv, env)
    timing = Timing(label, command, [run_once(argv, env) for _ in range(runs)])
    print(
        f"  {label:18s} median {timing.median * 1000:6.0f} ms   "
        f"min {min(timing.seconds) * 1000:6.0f} ms   "
        f"max {max(timing.seconds) * 1000:6.0f} ms",
        flush=True,
    )
    return timing


def modules_loaded(env: dict[str, str]) -> tuple[int, int]:
    """Modules in sys.modules after ``import matrixinfer.cli.main``, and before it
    (the interpreter's own)."""
    code = (
        "import sys; before = len(sys.modules); import matrixinfer.cli.main; "
        "print(before, len(sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, check=True
    ).stdout.split()
    return int(out[1]), int(out[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument(
        "--no-write", action="store_true", help="do not touch BENCHMARKS.md"
    )
    args = parser.parse_args()
    if not CLI.exists():
        sys.exit(f"{CLI} missing: run `make setup`")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(tmp)
        config = workdir / "config.yaml"
        config.write_text("")  # isolated from the user's ~/.config
        env = {
            **os.environ,
            "MATRIXINFER_CONFIG": str(config),
            "MATRIXINFER_TOKEN": "",
        }
        print(f"{args.runs} runs each, fresh processes:", flush=True)
        timings = [
            measure("python -c pass", "python -c pass",
                    [sys.executable, "-c", "pass"], env, args.runs),
            measure("--help", "matrixinfer --help",
                    [str(CLI), "--help"], env, args.runs),
        ]  # fmt: skip
        with registry(workdir) as address:
            server = [str(CLI), "--server", address]
            subprocess.run(
                [*server, "apply", "-f", str(MANIFESTS)],
                env=env,
                capture_output=True,
                check=True,
            )
            listed = subprocess.run(
                [*server, "get", "modelinfers"],
                env=env,
                capture_output=True,
                check=True,
                text=True,
            ).stdout.splitlines()
            if len(listed) < 2 or listed[0].split()[0] != "NAME":
                raise RuntimeError(f"get modelinfers listed no table: {listed}")
            timings.append(
                measure(
                    "get modelinfers",
                    "matrixinfer --server 127.0.0.1:PORT get modelinfers",
                    [*server, "get", "modelinfers"],
                    env,
                    args.runs,
                )
            )
        loaded, interpreter = modules_loaded(env)
    print(
        f"  import matrixinfer.cli.main loads {loaded - interpreter} modules "
        f"({loaded} in sys.modules)",
        flush=True,
    )
    lines = [
        "Command: `make bench  # = python -m bench.cli`  ",
        f"{machine_line()}; each command in a fresh process (the installed "
        f"console script), median of {args.runs} runs after 2 warm-up runs; "
        "`get modelinfers` against a registry (SQLite) in its own process holding "
        "examples/manifests/all-kinds.yaml.",
        "",
        "| command | median ms | min ms | max ms | goal |",
        "|---|---:|---:|---:|---:|",
    ]
    for t in timings:
        goal = GOALS.get(t.label)
        lines.append(
            f"| `{t.command}` | {t.median * 1000:.0f} | "
            f"{min(t.seconds) * 1000:.0f} | {max(t.seconds) * 1000:.0f} | "
            + (f"≤ {goal * 1000:.0f} ms |" if goal else "- |")
        )
    lines += [
        "",
        f"`import matrixinfer.cli.main` loads {loaded - interpreter} modules beyond "
        "the interpreter's own; gRPC, protobuf, numpy, rich, PyYAML and "
        "matrixinfer.core.grpc are imported inside the commands that use them "
        "(tests/unit/cli/test_import_graph.py keeps them out of `--help`).",
    ]
    if not args.no_write:
        write_section("cli", "CLI", lines)
        print("figures written to BENCHMARKS.md")


if __name__ == "__main__":
    main()
