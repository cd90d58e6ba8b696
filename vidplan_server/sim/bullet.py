"""Import PyBullet without its "pybullet build time" banner on stdout.

The C extension prints the banner while the interpreter shuts down; on a pipe it would land
after machine-readable output (``vidplan ... --json | jq``). An exit handler, which runs before
modules are torn down, points file descriptor 1 at /dev/null once Python's own output is flushed.
"""

from __future__ import annotations

import atexit
import os
import sys

import pybullet as p


def _silence_stdout_at_exit() -> None:
    try:
        sys.stdout.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
    except (OSError, ValueError):
        pass


atexit.register(_silence_stdout_at_exit)

__all__ = ["p"]
