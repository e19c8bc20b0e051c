"""The hub's REST API, called with one token that goes to the hub and nowhere else.

Errors::

    ClientError (sysmon_nb.client)
    └── HubError    the hub did not answer as asked (``code``: its HTTP status, 599
                    when it could not be reached); ``reason`` carries the hub's message
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from .client import ClientError

__all__ = ["HubAPI", "HubError"]


class HubError(ClientError):
    """The hub did not answer a call as asked; ``code`` is its HTTP status (599: none)."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(reason)
        self.code = code


class HubAPI:
    """The hub's REST API (``<hub_url>hub/api/``) called with one token, which goes to the
    hub and nowhere else."""

    def __init__(self, hub_url: str, token: str, *, scheme: str = "token") -> None:
        self.hub_url = hub_url if hub_url.endswith("/") else hub_url + "/"
        self._authorization = f"{scheme} {token}"

    def __repr__(self) -> str:  # never shows the token
        return f"<HubAPI {self.hub_url}>"

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, Any] | None = None,
        accept: str = "application/json",
    ) -> Any:
        """The decoded JSON answer (None when empty); :class:`HubError` otherwise, with
        the hub's own message when it gave one."""
        from tornado.httpclient import AsyncHTTPClient, HTTPClientError

        url = f"{self.hub_url}hub/api/{path}"
        if query:
            url += "?" + urlencode(query)
        headers = {"Authorization": self._authorization, "Accept": accept}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        try:
            reply = await AsyncHTTPClient().fetch(
                url, method=method, headers=headers, body=data, request_timeout=30
            )
        except HTTPClientError as err:
            message = _hub_message(err.response.body if err.response is not None else b"")
            text = f"the hub answered {method} {path} with HTTP {err.code}"
            raise HubError(text + (f": {message}" if message else ""), err.code) from None
        except OSError as err:
            raise HubError(f"cannot reach the hub for {path}: {err}", 599) from err
        return json.loads(reply.body) if reply.body else None


def _hub_message(body: bytes | None) -> str:
    """The ``message`` of a JupyterHub error answer, cut short ('' when none)."""
    try:
        message = json.loads(body or b"{}").get("message")
    except (ValueError, AttributeError):
        return ""
    return str(message)[:300] if message else ""
