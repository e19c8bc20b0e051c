"""Real Jupyter server processes for the notebook-side tests (server, lab, notebook)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

TOKEN = "notebook-side-test-token"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def isolated_env(tmp: Path, **extra: str) -> dict[str, str]:
    """This environment with Jupyter's config, data and runtime dirs under ``tmp``
    (the installed ``jupyter_server_config.d`` still enables the extension)."""
    env = dict(os.environ)
    for name in ("CONFIG", "RUNTIME", "DATA"):
        env[f"JUPYTER_{name}_DIR"] = str(tmp / f"jupyter-{name.lower()}")
    env["IPYTHONDIR"] = str(tmp / "ipython")
    for key in (
        "SYSMON_URL",
        "SYSMON_TOKEN",
        "SYSMON_HUB_URL",
        "SYSMON_HUB_TOKEN",
        "JUPYTERHUB_SERVICE_URL",
        "JUPYTERHUB_API_TOKEN",
    ):
        env.pop(key, None)
    env.update(extra)
    return env


class JupyterProcess:
    """``python -m <app>`` on 127.0.0.1, a free (or given) port, our token; ``stop()``
    ends it by its pid."""

    def __init__(
        self,
        tmp: Path,
        *args: str,
        app: str = "jupyter_server",
        port: int | None = None,
        root_dir: Path | None = None,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        interval: float | None = 0.5,
        ready_path: str = "sysmon/api/status",
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        tmp.mkdir(parents=True, exist_ok=True)
        self.log_path = tmp / f"{app}-{self.port}-{time.monotonic_ns()}.log"
        self.log = self.log_path.open("w")
        command = [
            python, "-m", app, "--allow-root", "--no-browser",
            f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
            "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}",
            f"--ServerApp.root_dir={root_dir or tmp}", *args,
        ]  # fmt: skip
        if interval is not None:
            command.append(f"--SysmonExtension.interval={interval}")
        self.proc = subprocess.Popen(
            command,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env if env is not None else isolated_env(tmp),
            cwd=tmp,
        )
        try:
            self.wait_ready(ready_path)
        except BaseException:
            self.stop()  # a server that never got ready is still a process to end
            raise

    def get(self, path: str) -> tuple[int, bytes]:
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": f"token {TOKEN}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def wait_ready(self, path: str = "sysmon/api/status", timeout: float = 90.0) -> None:
        """Until ``path`` answers 200 (by default: sysmon has published a sample)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log_path.read_text()[-3000:]}")
            try:
                if self.get(path)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server did not start in time: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture
def jupyter(tmp_path: Path) -> Iterator[Any]:
    """Start Jupyter processes; each is stopped at the end of the test."""
    started: list[JupyterProcess] = []

    def start(*args: str, **kwargs: Any) -> JupyterProcess:
        server = JupyterProcess(tmp_path, *args, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def pids_connected_to(port: int, pid: int | None = None) -> list[Any]:
    """Established TCP connections from process ``pid`` (default: this one) to ``port``."""
    import psutil

    proc = psutil.Process(pid)
    # net_connections from psutil 6.0; connections (deprecated since) before it.
    connections = getattr(proc, "net_connections", None) or proc.connections
    return [
        c
        for c in connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    ]


def execute(
    nb: Any, cwd: Path, env: dict[str, str], timeout: int = 90, allow_errors: bool = False
) -> Any:
    """Run every cell of ``nb`` in a fresh python3 kernel (nbclient); returns ``nb``."""
    from nbclient import NotebookClient

    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd)}},
        allow_errors=allow_errors,
    )
    client.execute(env=env)
    return nb


def outputs_text(cell: Any) -> str:
    """Everything a code cell printed or returned, as text."""
    parts = []
    for out in cell.get("outputs", []):
        if "text" in out:
            parts.append(out["text"])
        data = out.get("data", {})
        if "text/plain" in data:
            parts.append(data["text/plain"])
        if out.get("output_type") == "error":
            parts.append(f"{out['ename']}: {out['evalue']}")
    return "".join(parts)
