"""Child processes that never outlive their parent."""

from __future__ import annotations

import pathlib
import shutil


def die_with_parent() -> list[str]:
    """A command prefix that makes the child get SIGTERM when its parent dies, even
    by SIGKILL. util-linux ``setpriv`` sets the parent-death signal and execs the
    command; Python code in the forked child (preexec_fn) is not an option: in a
    threaded process it crashed there (SIGSEGV before exec). Empty where setpriv is
    missing (then only an orderly stop cleans up)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


def pids_matching(*needles: str) -> list[int]:
    """Processes whose command line contains every one of ``needles`` (Linux
    /proc): how supervisors, benchmarks and tests find children they did not
    start themselves (HAProxy's workers, Triton replicas)."""
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if all(needle in cmdline for needle in needles):
            found.append(int(proc.name))
    return found
