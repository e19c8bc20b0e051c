"""A real JupyterHub: hub, configurable-http-proxy, a local spawner and a single-user
server with sysmon, all reached through the hub's proxy.

Users: alice and carol are hub admins, bob a plain user (his server is the one
watched), olga a member of the ``ops`` group that ``admin_groups`` names; carol may
also use bob's server through a role, so she keeps access when her admin flag goes.
The test manages users, groups and tokens through the hub's REST API as an admin
service.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
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
import websockets

from sysmon_nb.protocol import CLOSE_CREDENTIALS_EXPIRED, CLOSE_NOT_ADMIN

from .conftest import recv_json, recv_type

#: Seconds between the single-user server's re-checks of hub credentials.
REVALIDATE_INTERVAL = 1.0
#: Bound on starting the hub and bob's server on a slow, shared machine (s).
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
c.Authenticator.allowed_users = {{"alice", "bob", "olga", "carol"}}
c.Authenticator.admin_users = {{"alice", "carol"}}
c.JupyterHub.load_groups = {{"ops": {{"users": ["olga"]}}}}
c.JupyterHub.services = [{{"name": "tester", "api_token": "{service_token}", "admin": True}}]
c.JupyterHub.load_roles = [
    {{
        "name": "tester",
        "scopes": ["admin:users", "admin:groups", "tokens", "servers", "admin:servers"],
        "services": ["tester"],
    }},
    {{"name": "ops-on-bob", "scopes": ["access:servers!user=bob"], "groups": ["ops"]}},
    {{"name": "carol-on-bob", "scopes": ["access:servers!user=bob"], "users": ["carol"]}},
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
"""

USER_CONFIG = {
    "ServerApp": {"jpserver_extensions": {"jupyter_server_ext": True}},
    "SysmonExtension": {
        "interval": 0.5,
        "metrics": ["cpu", "memory"],
        "admin_groups": ["ops"],
        "revalidate_interval": REVALIDATE_INTERVAL,
    },
}


class Hub:
    """A running hub, and a small client for its REST API."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.public_port = free_port()
        self.url = f"http://127.0.0.1:{self.public_port}"
        self.service_token = secrets.token_hex(16)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = tmp / "hub.log"

    def start(self) -> None:
        (self.tmp / "user-config").mkdir()
        (self.tmp / "user-config" / "jupyter_server_config.json").write_text(
            json.dumps(USER_CONFIG)
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

    def wait_for(self, condition: Any, what: str, timeout: float = START_TIMEOUT) -> None:
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

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call the hub's REST API as the test service: (status, decoded JSON or None)."""
        request = urllib.request.Request(
            f"{self.url}/hub/api{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.service_token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=20) as reply:
                text = reply.read()
                return reply.status, json.loads(text) if text else None
        except urllib.error.HTTPError as err:
            with contextlib.closing(err):
                return err.code, None

    def new_token(self, user: str) -> dict[str, Any]:
        code, model = self.api("POST", f"/users/{user}/tokens", {"note": "sysmon test"})
        assert code == 201, (code, model)
        assert isinstance(model, dict)
        return model

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.api("DELETE", "/users/bob/server")
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        # whatever the hub left behind: the proxy and the single-user server, by pid
        pids = [self._pid(self.tmp / "proxy.pid")]
        for info in (self.tmp / "user-runtime").glob("jpserver-*.json"):
            with contextlib.suppress(ValueError, OSError):
                pids.append(int(json.loads(info.read_text())["pid"]))
        for pid in pids:
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    @staticmethod
    def _pid(path: Path) -> int | None:
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return None


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    running = Hub(tmp_path_factory.mktemp("hub"))
    try:
        running.start()
        code, _ = running.api("POST", "/users/bob/server")
        assert code in (201, 202), (code, running.log())

        def bob_ready() -> bool:
            _, model = running.api("GET", "/users/bob")
            server = (model or {}).get("servers", {}).get("")
            return bool(server and server.get("ready"))

        running.wait_for(bob_ready, "bob's server")
        yield running
    finally:
        running.stop()


def sysmon_url(hub: Hub) -> str:
    return f"ws://127.0.0.1:{hub.public_port}/user/bob/sysmon/ws?metrics=cpu"


def connect(hub: Hub, token: str) -> Any:
    return websockets.connect(
        sysmon_url(hub), additional_headers={"Authorization": f"token {token}"}, open_timeout=30
    )


async def closed_code(ws: Any, timeout: float) -> tuple[int, str, float]:
    """Read until the server closes; (close code, reason, when)."""
    deadline = time.monotonic() + timeout
    with pytest.raises(websockets.ConnectionClosed) as excinfo:
        while time.monotonic() < deadline:
            await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
    assert excinfo.value.rcvd is not None, "closed without a close frame"
    return excinfo.value.rcvd.code, excinfo.value.rcvd.reason, time.monotonic()


@pytest.mark.timeout(240)
async def test_jupyterhub_admins_groups_and_revocation(hub: Hub) -> None:
    alice = hub.new_token("alice")
    bob = hub.new_token("bob")
    olga = hub.new_token("olga")
    carol = hub.new_token("carol")

    # a hub admin streams status from bob's server
    async with connect(hub, alice["token"]) as ws:
        hello = await recv_json(ws, timeout=30)
        assert hello["type"] == "hello"
        assert "cpu" in await recv_type(ws, "status")

        # bob's own token reaches his server, but he is not an administrator
        with pytest.raises(websockets.InvalidStatus) as excinfo:
            async with connect(hub, bob["token"]):
                pass
        assert excinfo.value.response.status_code == 403
        assert "not an administrator" in json.loads(excinfo.value.response.body)["message"]
        # ... and his server carries on serving the admin
        assert "cpu" in await recv_type(ws, "status")

        # revoking alice's token closes her open socket with 4401
        code, _ = hub.api("DELETE", f"/users/alice/tokens/{alice['id']}")
        assert code == 204
        revoked_at = time.monotonic()
        code, reason, closed_at = await closed_code(ws, timeout=REVALIDATE_INTERVAL + 20)
        assert (code, reason) == (CLOSE_CREDENTIALS_EXPIRED, "credentials expired or revoked")
        assert closed_at - revoked_at < REVALIDATE_INTERVAL + 5  # one re-check, on a busy machine

    # a member of an admin group is admitted; leaving the group closes with 4403
    async with connect(hub, olga["token"]) as ws:
        assert (await recv_json(ws, timeout=30))["type"] == "hello"
        assert "cpu" in await recv_type(ws, "status")
        code, _ = hub.api("DELETE", "/groups/ops/users", {"users": ["olga"]})
        assert code == 200
        code, reason, _ = await closed_code(ws, timeout=REVALIDATE_INTERVAL + 20)
        assert code == CLOSE_NOT_ADMIN
        assert reason in ("no longer an administrator", "no longer allowed on this server")

    # a hub admin whose admin flag is removed while connected: 4403
    async with connect(hub, carol["token"]) as ws:
        assert (await recv_json(ws, timeout=30))["type"] == "hello"
        code, _ = hub.api("PATCH", "/users/carol", {"admin": False})
        assert code == 200
        code, reason, _ = await closed_code(ws, timeout=REVALIDATE_INTERVAL + 20)
        assert (code, reason) == (CLOSE_NOT_ADMIN, "no longer an administrator")


def test_prometheus_scrapes_a_hub_server_with_a_hub_token(hub: Hub) -> None:
    """What the README's hub scrape config relies on: a hub token that may access the
    server (here an admin's; in production a service's with ``access:servers``) is
    accepted as Prometheus's bearer credentials, and without one /metrics stays 403."""
    token = hub.new_token("alice")["token"]
    url = f"{hub.url}/user/bob/metrics"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=20) as reply:
        body = reply.read().decode()
    assert "sysmon_memory_total_bytes" in body
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=20)
    assert refused.value.code == 403
    refused.value.close()
