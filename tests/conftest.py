"""Shared fixtures: a real jupyter_server with the extension, and websockets clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
import websockets

from jupyter_server_ext.app import SysmonExtension

from .other_user import nobody_process  # noqa: F401  (the fixture: another user's process)
from .servers import jupyter  # noqa: F401  (the fixture: real Jupyter processes)

pytest_plugins = ["pytest_jupyter.jupyter_server"]

#: Short enough for quick tests, long enough for a loaded 2-core CI machine.
TEST_INTERVAL = 0.25


@pytest.fixture
def sysmon_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Extra ``c.SysmonExtension`` settings; override with indirect parametrize."""
    return dict(getattr(request, "param", {}))


@pytest.fixture
def server_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Extra ``c.ServerApp`` settings; override with indirect parametrize."""
    return dict(getattr(request, "param", {}))


@pytest.fixture
def hub_user_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Set JUPYTERHUB_USER (as a spawner does) before the server starts, if asked."""
    name = getattr(request, "param", None)
    if name is not None:
        monkeypatch.setenv("JUPYTERHUB_USER", name)


@pytest.fixture
def jp_server_config(
    sysmon_config: dict[str, Any], server_config: dict[str, Any], hub_user_env: None
) -> Any:
    config = {"interval": TEST_INTERVAL, "history": 50}
    config.update(sysmon_config)
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_server_ext": True}, **server_config},
        "SysmonExtension": config,
    }


def find_extension(serverapp: Any) -> SysmonExtension:
    (app,) = serverapp.extension_manager.extension_apps["jupyter_server_ext"]
    assert isinstance(app, SysmonExtension)
    return app


@pytest.fixture
def sysmon(jp_serverapp: Any, jp_asyncio_loop: Any) -> SysmonExtension:
    """The running extension. pytest-jupyter skips the server's post-start hook, so the
    extension's own start hook is awaited here."""
    ext = find_extension(jp_serverapp)
    jp_asyncio_loop.run_until_complete(ext._start_jupyter_server_extension(jp_serverapp))
    return ext


@pytest.fixture
def ws_url(jp_http_port: int, jp_base_url: str) -> Callable[..., str]:
    def make(query: str = "") -> str:
        url = f"ws://127.0.0.1:{jp_http_port}{jp_base_url}sysmon/ws"
        return f"{url}?{query}" if query else url

    return make


@pytest.fixture
def connect(
    sysmon: SysmonExtension,
    http_server_client: Any,
    ws_url: Callable[..., str],
    jp_auth_header: dict[str, str],
) -> Callable[..., Any]:
    """Open a ``websockets`` client to ``sysmon/ws`` with the server's token.

    ``http_server_client`` makes pytest-jupyter listen on ``jp_http_port``."""

    def open_ws(query: str = "", headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
        return websockets.connect(
            ws_url(query),
            additional_headers=jp_auth_header if headers is None else headers,
            open_timeout=10,
            **kwargs,
        )

    return open_ws


async def eventually(condition: Callable[[], object], timeout: float = 10.0) -> None:
    """Wait (bounded) until ``condition()`` is true; fail the test if it never is."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


async def recv_json(ws: Any, timeout: float = 10.0) -> dict[str, Any]:
    """The next frame, decoded; fails the test instead of hanging."""
    text = await asyncio.wait_for(ws.recv(), timeout)
    obj = json.loads(text)
    assert isinstance(obj, dict)
    return obj


async def recv_type(ws: Any, kind: str, limit: int = 20) -> dict[str, Any]:
    """Skip frames until one of ``kind`` arrives (bounded)."""
    for _ in range(limit):
        obj = await recv_json(ws)
        if obj["type"] == kind:
            return obj
    raise AssertionError(f"no {kind!r} frame within {limit} frames")
