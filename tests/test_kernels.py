"""Kernels -> notebooks: process trees, exit statuses, and a real server's kernel_usage."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from jupyter_server_ext.kernels import (
    KernelDeath,
    KernelDeaths,
    exit_code_of,
    proc_children,
    process_tree,
    unix_time,
)

from .conftest import eventually

#: A child that holds memory until its parent (the kernel) is gone.
HOLDER = (
    "import os, time\n"
    "parent = os.getppid()\n"
    "held = b'x' * (200 * 2**20)\n"
    "print('holding', flush=True)\n"
    "for _ in range(3000):\n"
    "    if os.getppid() != parent: break\n"
    "    time.sleep(0.1)\n"
)


def test_process_tree_of_a_real_process_with_a_grandchild() -> None:
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"  # noqa: E501
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        proc = psutil.Process(parent.pid)
        asyncio.run(eventually(lambda: len(proc.children(recursive=True)) == 1))
        (grandchild,) = proc.children(recursive=True)
        tree = process_tree(parent.pid)
        assert tree == [parent.pid, grandchild.pid]
        # the psutil path (no /proc children files) finds the same tree
        assert process_tree(parent.pid, children=None) == tree
        assert process_tree(parent.pid, children=lambda pid: None) == tree
        assert process_tree(parent.pid, limit=1) == [parent.pid]
    finally:
        for p in psutil.Process(parent.pid).children(recursive=True):
            p.kill()
        parent.kill()
        parent.wait(10)


def test_gone_process_has_no_children() -> None:
    done = subprocess.run([sys.executable, "-c", "pass"], check=True)
    assert done.returncode == 0
    assert proc_children(2**22 + 12345) == []


def test_proc_children_reads_every_thread_and_tells_a_missing_feature(tmp_path: Path) -> None:
    tasks = tmp_path / "42" / "task"
    for tid, children in (("42", "5 6\n"), ("43", "7\n"), ("44", "")):
        (tasks / tid).mkdir(parents=True)
        (tasks / tid / "children").write_text(children)
        (tasks / tid / "stat").write_text("")
    (tasks / "45").mkdir()  # a thread that ended while it was listed: no files left
    assert sorted(proc_children(42, tmp_path) or []) == [5, 6, 7]
    assert proc_children(43, tmp_path) == []  # no such process
    (tasks / "46").mkdir()
    (tasks / "46" / "stat").write_text("")  # a live thread without a children file
    assert proc_children(42, str(tmp_path)) is None  # CONFIG_PROC_CHILDREN is off


def test_unix_time_of_kernel_models() -> None:
    moment = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert unix_time(moment) == moment.timestamp()
    assert unix_time("2024-05-01T12:00:00.000000Z") == moment.timestamp()
    assert unix_time("not a time") is None
    assert unix_time(None) is None


def test_exit_code_guard_and_fallback() -> None:
    reaped = SimpleNamespace(provisioner=SimpleNamespace(process=SimpleNamespace(returncode=-9)))
    assert exit_code_of(reaped) == -9
    # a provisioner without a local process (a remote kernel): unknown, not an error
    assert exit_code_of(SimpleNamespace(provisioner=SimpleNamespace(pid=5))) is None
    assert exit_code_of(SimpleNamespace()) is None


class FakeRestarterKM:
    """A kernel manager's restart-callback API, as jupyter_client has it."""

    def __init__(self, pid: int) -> None:
        self.callbacks: dict[str, list[Any]] = {"restart": [], "dead": []}
        self.kernel_name = "python3"
        self.provisioner = SimpleNamespace(pid=pid, process=SimpleNamespace(returncode=None))

    def add_restart_callback(self, f: Any, event: str = "restart") -> None:
        self.callbacks[event].append(f)

    def remove_restart_callback(self, f: Any, event: str = "restart") -> None:
        if f in self.callbacks[event]:
            self.callbacks[event].remove(f)

    def die(self, event: str, code: int) -> None:
        self.provisioner.process.returncode = code
        for callback in self.callbacks[event]:
            callback()


def test_deaths_are_recorded_once_per_process_and_drained() -> None:
    deaths = KernelDeaths(clock=lambda: 1000.0, monotonic=lambda: 5.0)
    km = FakeRestarterKM(pid=77)
    for _ in range(3):  # watched every tick: the callback is registered once
        deaths.watch("k1", km, "analysis.ipynb")
    assert [len(v) for v in km.callbacks.values()] == [1, 1]
    km.die("restart", -9)
    km.die("dead", -9)  # the same process: one death
    assert deaths.drain() == [KernelDeath("k1", "python3", 77, -9, "analysis.ipynb", 1000.0, 5.0)]
    assert deaths.drain() == []
    deaths.forget_except([])
    km.provisioner.pid = 78
    km.die("restart", 1)  # a forgotten kernel's callback still reports, without a path
    assert deaths.drain()[0].path is None


# -- a real server --------------------------------------------------------------------


async def start_session(jp_fetch: Any, path: str) -> dict[str, Any]:
    body = {"path": path, "type": "notebook", "name": path, "kernel": {"name": "python3"}}
    reply = await jp_fetch("api", "sessions", method="POST", body=json.dumps(body))
    session = json.loads(reply.body)
    assert isinstance(session, dict)
    return session


def kernel_usage(sysmon: Any, kernel_id: str) -> dict[str, Any] | None:
    latest = sysmon.broadcaster.latest
    if latest is None or "jupyter" not in latest.groups:
        return None
    for entry in latest.groups["jupyter"]["kernel_usage"]:
        if entry["id"] == kernel_id:
            return dict(entry)
    return None


async def test_kernel_usage_names_the_notebook_and_state(
    sysmon: Any, jp_fetch: Any, jp_serverapp: Any
) -> None:
    session = await start_session(jp_fetch, "work/analysis.ipynb")
    kernel_id = session["kernel"]["id"]
    try:
        await eventually(lambda: kernel_usage(sysmon, kernel_id) is not None, timeout=30)
        entry = kernel_usage(sysmon, kernel_id)
        assert entry is not None
        assert entry["path"] == "work/analysis.ipynb"
        model = jp_serverapp.kernel_manager.kernel_model(kernel_id)
        assert entry["execution_state"] in ("starting", "idle", "busy")
        assert entry["execution_state"] == model["execution_state"]
        assert entry["connections"] == 0
        assert isinstance(entry["last_activity"], float)
        assert abs(entry["last_activity"] - datetime.now(timezone.utc).timestamp()) < 120
    finally:
        await jp_fetch("api", "sessions", session["id"], method="DELETE")


@pytest.mark.timeout(120)
async def test_kernel_tree_memory_includes_its_children(
    sysmon: Any, jp_fetch: Any, jp_serverapp: Any
) -> None:
    session = await start_session(jp_fetch, "tree.ipynb")
    kernel_id = session["kernel"]["id"]
    km = jp_serverapp.kernel_manager.get_kernel(kernel_id)
    client = km.client()
    client.start_channels()
    child_pid: int | None = None
    try:
        await client.wait_for_ready(timeout=60)
        code = f"import subprocess, sys\nholder = subprocess.Popen([sys.executable, '-c', {HOLDER!r}], stdout=subprocess.PIPE)\nholder.stdout.readline()\nprint(holder.pid)"  # noqa: E501
        outputs: list[str] = []
        reply = await client.execute_interactive(
            code,
            timeout=60,
            output_hook=lambda msg: outputs.append(msg["content"].get("text", "")),
        )
        assert reply["content"]["status"] == "ok"
        child_pid = int("".join(outputs).split()[-1])
        kernel_pid = km.provisioner.pid
        assert child_pid in [c.pid for c in psutil.Process(kernel_pid).children()]

        def tree_holds_child() -> bool:
            entry = kernel_usage(sysmon, kernel_id)
            own = psutil.Process(kernel_pid).memory_info().rss
            return bool(entry and entry["rss_bytes"] and entry["rss_bytes"] > own + 150 * 2**20)

        await eventually(tree_holds_child, timeout=30)
    finally:
        client.stop_channels()
        if child_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child_pid, signal.SIGKILL)
        await jp_fetch("api", "sessions", session["id"], method="DELETE")


#: A kernel stand-in: runs three children one after the other, each spinning 0.3 s of
#: CPU then sleeping (alive, its CPU counted) before it exits and is reaped; then says so.
SPAWNER = (
    "import pathlib, subprocess, sys, time\n"
    "child = ('import time\\nt = time.process_time() + 0.3\\n'\n"
    "         'while time.process_time() < t: pass\\ntime.sleep(0.5)')\n"
    "for _ in range(3):\n"
    "    subprocess.run([sys.executable, '-c', child], check=True)\n"
    "pathlib.Path(sys.argv[1]).write_text('done')\n"
    "time.sleep(120)\n"
)


def test_a_kernels_cpu_seconds_never_fall_as_its_children_exit(tmp_path: Path) -> None:
    """``cpu_seconds_total`` of a real process tree, ticked every 0.1 s while children
    come and go: never lower than before, and at the end at least the children's CPU
    time (each exited, reaped by the kernel)."""
    from jupyter_server_ext.collectors import JupyterCollector, JupyterCounts, KernelRef

    done = tmp_path / "done"
    kernel = subprocess.Popen([sys.executable, "-c", SPAWNER, str(done)])
    counts = JupyterCounts((KernelRef("k1", "python3", kernel.pid),), 0, 0)
    collector = JupyterCollector(lambda: counts)
    values: list[float] = []
    tree_sizes: list[int] = []
    try:
        deadline = time.monotonic() + 90
        settled = 0
        while settled < 3:  # a few ticks after the last child is reaped
            assert time.monotonic() < deadline, (values[-5:], tree_sizes[-5:])
            usage = collector.collect(time.monotonic())["kernel_usage"][0]
            values.append(usage["cpu_seconds_total"])
            tree_sizes.append(len(collector.kernel_pids))
            settled += done.exists()
            time.sleep(0.1)
    finally:
        kernel.kill()
        kernel.wait(10)
        collector.close()
    assert max(tree_sizes) == 2 and tree_sizes[-1] == 1  # children were seen, and went
    assert all(b >= a for a, b in itertools.pairwise(values)), values
    assert values[-1] >= 3 * 0.3 * 0.95  # every child's spin, each after it exited
