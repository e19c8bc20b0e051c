"""Find the sysmon server's URL and credentials from inside a kernel.

This is the one place the notebook side reads its environment. In order (docs/notebook.md):

1. explicit arguments (``url``, ``token``);
2. ``SYSMON_URL`` / ``SYSMON_TOKEN``;
3. the JupyterHub environment: ``JUPYTERHUB_SERVICE_URL`` and ``JUPYTERHUB_API_TOKEN``
   (the single-user server this kernel belongs to, and its owner's token);
4. the running-server files (``jupyter_server.serverapp.list_running_servers``), the
   one whose pid is the kernel's parent (``JPY_PARENT_PID``, else ``os.getppid()``).

Nothing found raises :class:`DiscoveryError` with a message saying what was tried.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .client import ClientError


class DiscoveryError(ClientError):
    """No server (or no credentials) could be found; ``reason`` says what to do."""


@dataclass(frozen=True)
class Target:
    """Where to connect: the server's URL, the ``Authorization`` token, and whence."""

    url: str
    token: str | None
    source: str

    def __repr__(self) -> str:  # never show the token
        hidden = "set" if self.token else "none"
        return f"Target(url={self.url!r}, token={hidden}, source={self.source!r})"


def discover(
    url: str | None = None,
    token: str | None = None,
    *,
    token_env: str | None = None,
    environ: Mapping[str, str] | None = None,
    servers: Callable[[], Iterable[Mapping[str, Any]]] | None = None,
    parent_pid: int | None = None,
) -> Target:
    """Where this kernel's sysmon server is, and the credentials for it.

    ``token_env`` names an environment variable holding the token (``--token-env``).
    ``environ``, ``servers`` and ``parent_pid`` are seams for tests; by default they are
    ``os.environ``, ``list_running_servers`` and the kernel's parent process.
    """
    env = os.environ if environ is None else environ
    if token is None and token_env:
        token = env.get(token_env)
        if not token:
            raise DiscoveryError(f"the environment variable {token_env} is not set or empty")

    if url:
        return Target(url, token if token is not None else env.get("SYSMON_TOKEN"), "arguments")
    if env.get("SYSMON_URL"):
        return Target(
            env["SYSMON_URL"], token if token is not None else env.get("SYSMON_TOKEN"), "SYSMON_URL"
        )
    if env.get("JUPYTERHUB_SERVICE_URL") and env.get("JUPYTERHUB_API_TOKEN"):
        return Target(
            env["JUPYTERHUB_SERVICE_URL"],
            token if token is not None else env["JUPYTERHUB_API_TOKEN"],
            "JupyterHub",
        )

    pids = _parent_pids(env, parent_pid)
    listed = list((servers or _list_running_servers)())
    for info in listed:
        if info.get("pid") in pids:
            server_url = str(info.get("url") or "")
            server_token = token if token is not None else (info.get("token") or None)
            if not server_token:
                raise DiscoveryError(
                    f"found this kernel's server at {server_url}, but it uses a password,"
                    " not a token: pass token=... (or %sysmon --token-env VAR)"
                )
            return Target(server_url, server_token, f"running server (pid {info.get('pid')})")

    tried = [
        "arguments",
        "SYSMON_URL/SYSMON_TOKEN",
        "JUPYTERHUB_SERVICE_URL/JUPYTERHUB_API_TOKEN",
        f"{len(listed)} running Jupyter server(s), none the parent of this kernel"
        f" (pid {', '.join(str(p) for p in sorted(pids)) or 'unknown'})",
    ]
    raise DiscoveryError(
        "cannot find the sysmon server: tried " + "; ".join(tried) + ". Set SYSMON_URL and"
        " SYSMON_TOKEN, or pass url= and token= (%sysmon --url ... --token-env VAR)."
    )


def _parent_pids(env: Mapping[str, str], parent_pid: int | None) -> set[int]:
    if parent_pid is not None:
        return {parent_pid}
    pids = {os.getppid()}
    with contextlib.suppress(ValueError):
        pids.add(int(env.get("JPY_PARENT_PID", "")))
    return pids


def _list_running_servers() -> Iterable[Mapping[str, Any]]:
    from jupyter_server.serverapp import list_running_servers

    return list(list_running_servers())


def discover_hub(
    url: str | None = None,
    token: str | None = None,
    *,
    token_env: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Target:
    """The hub (public URL) and the token for the fleet view.

    Explicit arguments, then ``SYSMON_HUB_URL`` / ``SYSMON_HUB_TOKEN`` (or the variable
    ``token_env`` names). The kernel's own ``JUPYTERHUB_API_TOKEN`` is never used: it
    is a server token and cannot list the hub's users.
    """
    env = os.environ if environ is None else environ
    if token is None:
        token = env.get(token_env or "SYSMON_HUB_TOKEN") or None
    source = "arguments" if url else "SYSMON_HUB_URL"
    url = url or env.get("SYSMON_HUB_URL") or None
    if not url or not token:
        raise DiscoveryError(
            "the fleet view needs the hub's public URL and a token that may list its"
            " servers: set SYSMON_HUB_URL and SYSMON_HUB_TOKEN (a hub admin's API token,"
            " or a user's with custom:sysmon:read, list:users, read:servers and tokens"
            " for that user), or pass hub_url= and token="
        )
    return Target(url, token, source)
