"""discover(): URL and credentials in the documented order (docs/notebook.md), and a clear
message otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sysmon_nb.discovery import DiscoveryError, Target, discover

from .servers import TOKEN, isolated_env

HUB = {
    "JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:5555/user/ann/",
    "JUPYTERHUB_API_TOKEN": "hub-token",
}
SYSMON = {"SYSMON_URL": "http://10.0.0.1:9999/", "SYSMON_TOKEN": "env-token"}
SERVERS = [
    {"pid": 111, "url": "http://127.0.0.1:8001/", "token": "other"},
    {"pid": 222, "url": "http://127.0.0.1:8002/base/", "token": "mine"},
]


def no_servers() -> list[dict[str, Any]]:
    return []


def test_arguments_come_first() -> None:
    env = {**SYSMON, **HUB}
    got = discover("http://a:1/", "arg-token", environ=env, servers=no_servers)
    assert got == Target("http://a:1/", "arg-token", "arguments")
    # a URL alone takes SYSMON_TOKEN
    assert discover("http://a:1/", environ=env, servers=no_servers).token == "env-token"


def test_then_sysmon_variables() -> None:
    got = discover(environ={**SYSMON, **HUB}, servers=no_servers)
    assert got == Target("http://10.0.0.1:9999/", "env-token", "SYSMON_URL")


def test_then_the_jupyterhub_environment() -> None:
    got = discover(environ=HUB, servers=lambda: SERVERS, parent_pid=222)
    assert got == Target("http://127.0.0.1:5555/user/ann/", "hub-token", "JupyterHub")


def test_then_the_running_server_that_is_the_kernels_parent() -> None:
    got = discover(environ={}, servers=lambda: SERVERS, parent_pid=222)
    assert got.url == "http://127.0.0.1:8002/base/"
    assert got.token == "mine"
    assert "pid 222" in got.source
    env = {"JPY_PARENT_PID": "111"}
    assert discover(environ=env, servers=lambda: SERVERS).token == "other"


def test_token_env_names_the_variable_holding_the_token() -> None:
    env = {"MY_TOKEN": "from-var", **SYSMON}
    assert discover(token_env="MY_TOKEN", environ=env, servers=no_servers).token == "from-var"
    with pytest.raises(DiscoveryError, match="NOPE is not set"):
        discover(token_env="NOPE", environ=env, servers=no_servers)


def test_nothing_found_says_what_was_tried() -> None:
    with pytest.raises(DiscoveryError) as err:
        discover(environ={}, servers=lambda: SERVERS, parent_pid=333)
    message = err.value.reason
    for tried in ("SYSMON_URL", "JUPYTERHUB_SERVICE_URL", "2 running Jupyter server(s)", "333"):
        assert tried in message
    assert "--token-env" in message


def test_a_password_server_needs_a_token() -> None:
    servers = [{"pid": 5, "url": "http://127.0.0.1:8003/", "token": ""}]
    with pytest.raises(DiscoveryError, match="uses a password"):
        discover(environ={}, servers=lambda: servers, parent_pid=5)


def test_the_target_never_shows_its_token() -> None:
    assert "secret" not in repr(Target("http://a/", "secret", "x"))


@pytest.mark.timeout(120)
def test_finds_a_real_running_server_by_its_pid(
    jupyter: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = isolated_env(tmp_path)
    server = jupyter(env=env)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", env["JUPYTER_RUNTIME_DIR"])
    got = discover(environ={"JPY_PARENT_PID": str(server.proc.pid)})
    assert got.url == server.url
    assert got.token == TOKEN
