"""Child processes that never outlive their parent."""

from __future__ import annotations

import shutil


def die_with_parent() -> list[str]:
    """A command prefix that makes the child get SIGTERM when its parent dies, even
    by SIGKILL. util-linux ``setpriv`` sets the parent-death signal and execs the
    command; Python code in the forked child (preexec_fn) is not an option: in a
    threaded process it crashed there (SIGSEGV before exec). Empty where setpriv is
    missing (then only an orderly stop cleans up)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []
