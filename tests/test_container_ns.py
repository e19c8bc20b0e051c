"""A real server shown the cgroup trees of containers and hosts (tests/fixtures/cgroup).

Each server process runs in a mount namespace of its own (``unshare -m``) where a fixture
set's tree is bind-mounted over ``/sys/fs/cgroup`` and its ``proc-self-cgroup`` over
``/proc/<pid>/cgroup``; then the shell ``exec``s the server, which keeps the pid, so the
file the server reads as ``/proc/self/cgroup`` is the one bound. Nothing else changes:
the host's memory is this machine's (low here), so a container at 95 % of its limit must
show as 95 %, in the sample, in the default memory alert and in the fleet's row.

The four servers start together (one per case) and serve the module.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from sysmon_nb.fleet import summarize
from sysmon_nb.protocol import Status, decode

from .servers import JupyterProcess, isolated_env

FIXTURES = Path(__file__).parent / "fixtures" / "cgroup"
#: namespaced root (Docker), a nested path (TLJH), the host's true root, cgroup v1
CASES = ("docker-v2", "tljh-v2", "host-root-v2", "docker-v1")
INTERVAL = 0.25


def namespaces_work(tmp: Path) -> str | None:
    """Why a server cannot be shown a tree of ours here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (mount namespaces and bind mounts)"
    for tool in ("unshare", "mount"):
        if shutil.which(tool) is None:
            return f"needs {tool} (util-linux)"
    probe = tmp / "probe"
    (probe / "tree").mkdir(parents=True, exist_ok=True)
    (probe / "tree" / "cgroup.controllers").write_text("memory\n")
    (probe / "cgroup").write_text("0::/probe\n")
    script = (
        f"mount --bind {probe / 'tree'} /sys/fs/cgroup && "
        f"mount --bind {probe / 'cgroup'} /proc/$$/cgroup && "
        'exec cat /sys/fs/cgroup/cgroup.controllers "/proc/$$/cgroup"'
    )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0 or done.stdout != "memory\n0::/probe\n":
        return f"unshare -m with bind mounts failed: {done.stderr.strip() or done.stdout!r}"
    return None


def launcher(tmp: Path, case: str) -> Path:
    """A 'python' for :class:`JupyterProcess`: enters a mount namespace, binds the case's
    tree and cgroup file, then becomes the Python that runs the server (same pid)."""
    tree, proc = tmp / case / "sys-fs-cgroup", tmp / case / "proc-self-cgroup"
    shutil.copytree(FIXTURES / case, tmp / case, symlinks=True)
    script = (
        f"mount --bind {shlex.quote(str(tree))} /sys/fs/cgroup && "
        f'mount --bind {shlex.quote(str(proc))} "/proc/$$/cgroup" && '
        'exec "$@"'
    )
    path = tmp / f"python-in-{case}"
    path.write_text(
        "#!/bin/sh\n"
        f"exec unshare --mount --propagation private sh -c {shlex.quote(script)} "
        f'sh {shlex.quote(sys.executable)} "$@"\n'
    )
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, JupyterProcess]]:
    tmp = tmp_path_factory.mktemp("container-ns")
    why = namespaces_work(tmp)
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{why}, which CI has")
        pytest.skip(why)

    def start(case: str) -> JupyterProcess:
        home = tmp / f"home-{case}"
        return JupyterProcess(
            home, python=str(launcher(tmp, case)), env=isolated_env(home), interval=INTERVAL
        )

    started: dict[str, JupyterProcess] = {}
    with ThreadPoolExecutor(len(CASES)) as pool:
        futures = {case: pool.submit(start, case) for case in CASES}
        errors = []
        for case, future in futures.items():
            try:
                started[case] = future.result()
            except Exception as err:
                errors.append(f"{case}: {err}")
        try:
            assert not errors, errors
            yield started
        finally:
            list(pool.map(JupyterProcess.stop, started.values()))  # each by its pid


def status(server: JupyterProcess) -> dict[str, Any]:
    code, body = server.get("sysmon/api/status?metrics=memory,container,alerts")
    assert code == 200, body
    obj = json.loads(body)
    assert isinstance(obj, dict)
    return obj


def expected(case: str) -> dict[str, Any]:
    obj = json.loads((FIXTURES / case / "expected.json").read_text())
    assert isinstance(obj, dict)
    return obj


@pytest.mark.timeout(180)
@pytest.mark.parametrize("case", ["docker-v2", "tljh-v2", "docker-v1"])
def test_a_container_at_95_percent_shows_95_percent(
    servers: dict[str, JupyterProcess], case: str
) -> None:
    server = servers[case]
    # the binds stay in the server's namespace: from ours its cgroup file is the real one
    seen = Path(f"/proc/{server.proc.pid}/cgroup").read_text()
    assert seen != (FIXTURES / case / "proc-self-cgroup").read_text()
    obj = status(server)
    want = expected(case)
    container, memory = obj["container"], obj["memory"]
    assert container["cgroup"] == want["cgroup"]
    assert container["memory_limit_bytes"] == want["memory_limit_bytes"] == 2 * 2**30
    assert container["memory_used_bytes"] == want["memory_used_bytes"]  # 1.9 GiB
    assert container["cpu_limit_cores"] == 1.5
    assert memory["percent"] < 80, "the host itself must have memory to spare here"
    # the default memory alert judges the container's share, not the host's
    active = {a["name"]: a for a in obj["alerts"]["active"]}
    assert "memory" in active, obj["alerts"]
    assert active["memory"]["value"] == 95.0
    # and so does the fleet's row (the client's own decoding of the same JSON)
    sample = decode(json.dumps(obj))
    assert isinstance(sample, Status)
    row = summarize(sample)
    assert row.memory_percent is not None and round(row.memory_percent, 1) == 95.0
    assert "memory" in row.alerts


@pytest.mark.timeout(180)
def test_the_hosts_true_root_leaves_memory_to_the_host(
    servers: dict[str, JupyterProcess],
) -> None:
    obj = status(servers["host-root-v2"])
    container, memory = obj["container"], obj["memory"]
    assert container["cgroup"] == 2
    assert container["memory_used_bytes"] is None and container["memory_limit_bytes"] is None
    assert "container" not in obj["errors"]  # no memory.current at the root is no fault
    assert memory["percent"] < 80
    assert "memory" not in {a["name"] for a in obj["alerts"]["active"]}
    sample = decode(json.dumps(obj))
    assert isinstance(sample, Status)
    assert summarize(sample).memory_percent == memory["percent"]
