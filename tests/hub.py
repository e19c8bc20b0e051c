"""A real JupyterHub for the tests: hub, configurable-http-proxy and the local-process
spawner, every single-user server running sysmon, all reached through the hub's proxy.

Each test module that needs a hub starts one (module scope) with its own users, groups
and roles; the test drives it through the REST API as the admin service ``tester``.
The hub declares the ``custom:sysmon:read`` scope (jupyter_server_ext.hub_scopes).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

#: Bound on starting the hub and a batch of servers on a slow, shared machine (s).
START_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def proxy_command() -> str:
    """configurable-http-proxy, which CI installs with npm; its absence fails in CI."""
    found = shutil.which("configurable-http-proxy")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(
                "configurable-http-proxy is not installed (npm i -g configurable-http-proxy)"
            )
        pytest.skip("configurable-http-proxy is not installed")
    return found


HUB_CONFIG = """
c = get_config()  # noqa
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {public_port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.db_url = "sqlite:///{tmp}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{tmp}/cookie_secret"
c.JupyterHub.pid_file = "{tmp}/hub.pid"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = ["{proxy}"]
c.ConfigurableHTTPProxy.pid_file = "{tmp}/proxy.pid"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = {users!r}
c.Authenticator.admin_users = {admins!r}
c.JupyterHub.load_groups = {groups!r}
c.JupyterHub.allow_named_servers = True
c.JupyterHub.custom_scopes = {{
    "custom:sysmon:read": {{"description": "Read system status from sysmon (read-only)"}},
}}
c.JupyterHub.services = [
    {{"name": "tester", "api_token": "{service_token}", "admin": True}},
    *{services!r},
]
c.JupyterHub.load_roles = [
    {{
        "name": "tester",
        "scopes": ["admin:users", "admin:groups", "tokens", "servers", "admin:servers"],
        "services": ["tester"],
    }},
    *{roles!r},
]
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = "{tmp}/home/{{username}}"
c.Spawner.cmd = ["{singleuser}"]
c.Spawner.args = ["--allow-root"] if {root} else []
c.Spawner.environment = {{
    "JUPYTER_CONFIG_DIR": "{tmp}/user-config",
    "JUPYTER_RUNTIME_DIR": "{tmp}/user-runtime",
}}
c.Spawner.start_timeout = 80
c.Spawner.http_timeout = 80
c.JupyterHub.cleanup_servers = True
{extra}
"""


class Hub:
    """A running hub, and a small client for its REST API.

    ``users``, ``admins``, ``groups`` ({name: {"users": [...]}}) and ``roles`` (a list
    of role dicts) go into its config; ``sysmon`` is ``c.SysmonExtension`` of every
    single-user server; ``services`` (service dicts, beside the test's own ``tester``)
    and ``extra`` (lines of jupyterhub_config.py) may be set until :meth:`start`.
    """

    def __init__(
        self,
        tmp: Path,
        *,
        users: Iterable[str],
        admins: Iterable[str] = (),
        groups: dict[str, Any] | None = None,
        roles: Iterable[dict[str, Any]] = (),
        sysmon: dict[str, Any] | None = None,
        services: Iterable[dict[str, Any]] = (),
        extra: str = "",
    ) -> None:
        self.tmp = tmp
        self.public_port = free_port()
        self.url = f"http://127.0.0.1:{self.public_port}"
        self.service_token = secrets.token_hex(16)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = tmp / "hub.log"
        self.users = sorted(users)
        self.admins = sorted(admins)
        self.groups = groups or {}
        self.roles = list(roles)
        self.sysmon = sysmon or {}
        self.services = list(services)
        self.extra = extra
        self._children: list[Any] = []  # psutil.Process of what the hub started

    def start(self) -> None:
        (self.tmp / "user-config").mkdir()
        user_config = {
            "ServerApp": {"jpserver_extensions": {"jupyter_server_ext": True}},
            "SysmonExtension": self.sysmon,
        }
        (self.tmp / "user-config" / "jupyter_server_config.json").write_text(
            json.dumps(user_config)
        )
        config = HUB_CONFIG.format(
            public_port=self.public_port,
            hub_port=free_port(),
            proxy_api_port=free_port(),
            tmp=self.tmp,
            proxy=proxy_command(),
            service_token=self.service_token,
            singleuser=Path(sys.executable).parent / "jupyterhub-singleuser",
            root=os.getuid() == 0,
            users=set(self.users),
            admins=set(self.admins),
            groups=self.groups,
            roles=self.roles,
            services=self.services,
            extra=self.extra,
        )
        (self.tmp / "jupyterhub_config.py").write_text(config)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", "jupyterhub_config.py"],
                cwd=self.tmp,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_for(lambda: self.api("GET", "/")[0] == 200, "the hub to answer")

    def wait_for(
        self, condition: Callable[[], object], what: str, timeout: float = START_TIMEOUT
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"the hub exited while waiting for {what}:\n{self.log()}")
            with contextlib.suppress(OSError):
                if condition():
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.log()}")
            time.sleep(0.25)

    def api(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        """Call the hub's REST API (as the test service unless ``token`` is given):
        (status, decoded JSON or None)."""
        request = urllib.request.Request(
            f"{self.url}/hub/api{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {token or self.service_token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=20) as reply:
                text = reply.read()
                return reply.status, json.loads(text) if text else None
        except urllib.error.HTTPError as err:
            with contextlib.closing(err):
                return err.code, None

    def new_token(self, user: str, scopes: Iterable[str] | None = None) -> dict[str, Any]:
        """A new API token of ``user``: all its permissions, or just ``scopes``."""
        body: dict[str, Any] = {"note": "sysmon test"}
        if scopes is not None:
            body["scopes"] = list(scopes)
        code, model = self.api("POST", f"/users/{user}/tokens", body)
        assert code == 201, (code, model, self.log())
        assert isinstance(model, dict)
        return model

    def server_ready(self, user: str, name: str = "") -> bool:
        _, model = self.api("GET", f"/users/{user}")
        server = (model or {}).get("servers", {}).get(name)
        return bool(server and server.get("ready"))

    def start_servers(self, servers: Iterable[tuple[str, str]]) -> None:
        """Start (user, server name) servers at once, then wait until all are ready."""
        wanted = list(servers)
        for user, name in wanted:
            path = f"/users/{user}/servers/{name}" if name else f"/users/{user}/server"
            code, _ = self.api("POST", path)
            assert code in (201, 202), (code, self.log())
        self.wait_for(
            lambda: all(self.server_ready(u, n) for u, n in wanted),
            f"servers {wanted}",
            START_TIMEOUT + 10 * len(wanted),
        )

    def stop_server(self, user: str, name: str = "") -> None:
        path = f"/users/{user}/servers/{name}" if name else f"/users/{user}/server"
        code, _ = self.api("DELETE", path)
        assert code in (202, 204), (code, self.log())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def server_process(self, user: str, name: str = "") -> tuple[int, int]:
        """The (pid, port) of a running single-user server (its runtime file)."""
        _, model = self.api("GET", f"/users/{user}")
        pid = int(model["servers"][name]["state"]["pid"])
        info = json.loads((self.tmp / "user-runtime" / f"jpserver-{pid}.json").read_text())
        return pid, int(info["port"])

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            self._children = self._descendants(process.pid)
            process.send_signal(signal.SIGTERM)  # cleanup_servers stops the servers
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        # whatever the hub left behind: the proxy and the single-user servers, by pid
        pids = [self._pid(self.tmp / "proxy.pid")]
        for info in (self.tmp / "user-runtime").glob("jpserver-*.json"):
            with contextlib.suppress(ValueError, OSError):
                pids.append(int(json.loads(info.read_text())["pid"]))
        for pid in pids:
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for child in self._children:  # a service the hub left running (same process only)
            with contextlib.suppress(Exception):
                if child.is_running():
                    child.kill()

    @staticmethod
    def _descendants(pid: int) -> list[Any]:
        """The processes the hub started (services too, in their own sessions)."""
        import psutil

        with contextlib.suppress(psutil.Error):
            return list(psutil.Process(pid).children(recursive=True))
        return []

    @staticmethod
    def _pid(path: Path) -> int | None:
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return None


class Listener:
    """What a user who replaced their server's process could run on its port: a plain
    socket that records each request's head (request line and headers), answers 503 and
    hangs up. Runs in a thread until :meth:`close`."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.heads: list[str] = []
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + timeout
        while True:  # the killed server's port is free once the process is gone
            try:
                self._sock.bind(("127.0.0.1", port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(5)
                head = b""
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in head and len(head) < 65536:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        head += chunk
                    self.heads.append(head.decode(errors="replace"))
                    conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\n"
                                 b"Content-Length: 0\r\nConnection: close\r\n\r\n")  # fmt: skip

    def tokens(self) -> set[str]:
        """The credentials of every ``Authorization`` header recorded."""
        found = set()
        for head in list(self.heads):
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "authorization":
                    found.add(value.strip().partition(" ")[2])
        return found

    def close(self) -> None:
        self._closed.set()
        self._thread.join(10)
        self._sock.close()
