"""A process of another unix user, for the ``users`` group's tests (a fixture)."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from collections.abc import Iterator

import pytest

MIB = 2**20

#: Bytes the other user's process holds (written, so resident).
HELD_BYTES = 64 * MIB


@pytest.fixture
def nobody_process() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A process of user ``nobody`` holding HELD_BYTES: started as root (the interpreter
    may live where ``nobody`` cannot read), it fills its memory, then drops to
    ``nobody`` with ``os.setuid``. It exits when its stdin closes."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a process as another user")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("this machine has no user 'nobody'")
    code = (
        "import os, sys\n"
        f"held = b'x' * {HELD_BYTES}\n"
        f"os.setuid({nobody.pw_uid})\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    try:
        yield nobody.pw_name, child
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.stdout.close()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(10)
