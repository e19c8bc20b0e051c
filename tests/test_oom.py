"""A kernel killed by the out-of-memory killer, for real, is reported with its notebook.

The test makes its own memory cgroup (a child of this process's own, on cgroup v1 or
v2), starts a real Jupyter server inside it, opens ``analysis.ipynb`` through the REST
API, makes the kernel allocate past the limit, and waits on a websockets client for the
``oom_kill`` event. The cgroup is removed afterwards, whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from .conftest import recv_type
from .servers import TOKEN, JupyterProcess, isolated_env

CGROUP = Path("/sys/fs/cgroup")
#: Room for the server and an idle kernel (about 150 MiB together here), not for 1 GiB.
LIMIT_BYTES = 384 << 20
ALLOCATE = "held = [b'x' * (16 << 20) for _ in range(96)]  # 1.5 GiB, page by page"


def own_dir(mount: Path, controller: str | None) -> Path:
    """This process's cgroup under ``mount`` (``controller`` None: the v2 line)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (controller is None and controllers == "") or (
            controller is not None and controller in controllers.split(",")
        ):
            parts = [p for p in path.split("/") if p and p != ".."]
            for start in range(len(parts)):
                if mount.joinpath(*parts[start:]).is_dir():
                    return mount.joinpath(*parts[start:])
            return mount
    return mount


def write(path: Path, value: str) -> None:
    path.write_text(value)


@contextlib.contextmanager
def memory_cgroup(limit_bytes: int) -> Iterator[Path]:
    """A fresh memory cgroup with ``limit_bytes`` and no swap; removed on exit, with
    any process left in it killed (only processes this test put there)."""
    name = f"sysmon-oom-test-{uuid.uuid4().hex[:8]}"
    try:
        if (CGROUP / "cgroup.controllers").is_file():  # v2
            parent = own_dir(CGROUP, None)
            if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
                write(parent / "cgroup.subtree_control", "+memory")
            group = parent / name
            group.mkdir()
            write(group / "memory.max", str(limit_bytes))
            if (group / "memory.swap.max").exists():
                write(group / "memory.swap.max", "0")
        else:  # v1
            group = own_dir(CGROUP / "memory", "memory") / name
            group.mkdir()
            write(group / "memory.limit_in_bytes", str(limit_bytes))
            if (group / "memory.memsw.limit_in_bytes").exists():
                write(group / "memory.memsw.limit_in_bytes", str(limit_bytes))
    except OSError as err:
        reason = (
            f"cgroups cannot be written here ({err}); the OOM test needs root and a "
            "writable cgroup filesystem"
        )
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, which CI has")
        pytest.skip(reason)
    try:
        yield group
    finally:
        for _ in range(100):
            pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)  # processes still exiting
        assert not group.exists(), f"could not remove {group}"


def post(server: JupyterProcess, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        server.url + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        result = json.loads(reply.read())
    assert isinstance(result, dict)
    return result


@pytest.mark.timeout(240)
async def test_kernel_oom_kill_reaches_a_connected_client(tmp_path: Path) -> None:
    from jupyter_client import BlockingKernelClient

    with memory_cgroup(LIMIT_BYTES) as group:
        procs = group / "cgroup.procs"
        launcher = tmp_path / "in-cgroup"
        # join the cgroup before the server allocates anything, then become the server
        launcher.write_text(f'#!/bin/sh\necho $$ > {procs}\nexec {sys.executable} "$@"\n')
        launcher.chmod(0o755)
        env = isolated_env(tmp_path)
        server = JupyterProcess(tmp_path, python=str(launcher), env=env, interval=0.25)
        try:
            assert str(server.proc.pid) in procs.read_text().split()
            session = post(server, "api/sessions", {
                "path": "analysis.ipynb", "type": "notebook", "kernel": {"name": "python3"},
            })  # fmt: skip
            kernel_id = session["kernel"]["id"]
            url = f"ws://127.0.0.1:{server.port}/sysmon/ws?metrics=container,jupyter,alerts"
            headers = {"Authorization": f"token {TOKEN}"}
            async with websockets.connect(url, additional_headers=headers) as ws:
                pid = None
                for _ in range(400):  # until the sampler follows the kernel
                    frame = await recv_type(ws, "status")
                    usage = {k["id"]: k for k in frame["jupyter"]["kernel_usage"]}
                    if kernel_id in usage and usage[kernel_id]["rss_bytes"]:
                        pid = usage[kernel_id]["pid"]
                        break
                assert pid is not None and str(pid) in procs.read_text().split()
                assert frame["container"]["memory_limit_bytes"] == LIMIT_BYTES
                oom_before = frame["container"]["oom_kills"]
                used_before = frame["container"]["memory_used_bytes"]
                connection_file = env["JUPYTER_RUNTIME_DIR"] + f"/kernel-{kernel_id}.json"
                client = BlockingKernelClient(connection_file=connection_file)
                client.load_connection_file()
                client.start_channels()
                try:
                    client.wait_for_ready(timeout=60)
                    started = time.monotonic()
                    client.execute(ALLOCATE)
                    event = None
                    for _ in range(400):
                        frame = await recv_type(ws, "status")
                        kinds = {e["kind"]: e for e in frame["alerts"]["events"]}
                        if "oom_kill" in kinds or "kernel_died" in kinds:
                            event = kinds.get("oom_kill") or kinds["kernel_died"]
                            break
                    elapsed = time.monotonic() - started
                finally:
                    client.stop_channels()
            print(f"server + idle kernel: {used_before / 2**20:.0f} MiB; allocation to event: "
                  f"{elapsed:.2f} s; event: {event}")  # fmt: skip
            assert event is not None, "no event within 400 samples"
            assert event["kind"] == "oom_kill", event
            assert event["kernel_id"] == kernel_id
            assert event["path"] == "analysis.ipynb"
            assert event["pid"] == pid
            assert event["message"] == (
                "kernel of analysis.ipynb killed: out of memory at 384 MiB limit"
            )
            assert frame["container"]["oom_kills"] > oom_before
        finally:
            server.stop()
