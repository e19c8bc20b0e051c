"""A test seam, and nothing else: a jupyter_server extension that adds one ``oom_kill``
event to the sysmon stream, so the browser test can see how the widget shows one.

Load it beside the real extension (``--ServerApp.jpserver_extensions=
"{'tests.event_seam': True}"``, with the repository on ``PYTHONPATH``). Once a notebook
session exists and a client is connected, the next published sample carries, in its
``alerts.events``, an ``oom_kill`` naming that session's kernel and notebook path, as the
server's OOM detection would. Everything else is the real server: the sampler, the
broadcaster, the WebSocket, the kernel's client and the widget. The real OOM path (a
kernel killed in a memory cgroup) is tested on the server side, not here.

The sample is wrapped so that ``alerts`` survives a subscription that does not name it
(a server whose protocol predates the ``alerts`` group drops unknown groups there).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable
from typing import Any

from tornado.ioloop import IOLoop

from sysmon_nb.protocol import Status

#: What the injected event's message says, so nobody mistakes it for a real one.
MESSAGE = "out of memory (injected by tests/event_seam.py)"
#: How long the seam looks for a session before it gives up (s).
GIVE_UP_S = 600.0


@dataclasses.dataclass(frozen=True)
class _WithAlerts(Status):
    """A status whose ``alerts`` group is kept by :meth:`subset` whatever was asked."""

    def subset(self, metrics: Iterable[str]) -> Status:
        alerts = self.groups.get("alerts")
        out = super().subset(metrics)
        return dataclasses.replace(out, groups={**out.groups, "alerts": alerts})


class EventSeam:
    def __init__(self, serverapp: Any) -> None:
        self.serverapp = serverapp
        self.pending: dict[str, Any] | None = None
        self.sent = False

    async def run(self) -> None:
        """Wrap the broadcaster's publish, then wait (bounded) for a notebook session."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GIVE_UP_S
        ext = None
        while loop.time() < deadline:
            apps = self.serverapp.extension_manager.extension_apps.get("jupyter_server_ext")
            ext = next(iter(apps), None) if apps else None
            if ext is not None and hasattr(ext, "broadcaster"):
                break
            await asyncio.sleep(0.1)
        if ext is None or not hasattr(ext, "broadcaster"):
            return
        publish = ext.broadcaster.publish

        def publish_with_event(status: Status) -> None:
            if self.pending is not None and not self.sent and ext.connections:
                publish(self._inject(status))
                self.sent = True
            else:
                publish(status)

        ext.broadcaster.publish = publish_with_event
        while loop.time() < deadline and self.pending is None:
            for session in await self.serverapp.session_manager.list_sessions():
                path = session.get("path") or ""
                if path.endswith(".ipynb") and session.get("kernel"):
                    self.pending = {"kernel_id": session["kernel"]["id"], "path": path}
                    break
            await asyncio.sleep(0.25)

    def _inject(self, status: Status) -> Status:
        assert self.pending is not None
        alerts = dict(status.groups.get("alerts") or {"active": []})
        event = {"time": status.time, "kind": "oom_kill", "message": MESSAGE, **self.pending}
        alerts["events"] = [*(alerts.get("events") or []), event]
        fields = {f.name: getattr(status, f.name) for f in dataclasses.fields(status)}
        fields["groups"] = {**status.groups, "alerts": alerts}
        return _WithAlerts(**fields)


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": "tests.event_seam"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    seam = EventSeam(serverapp)
    serverapp.event_seam = seam
    IOLoop.current().add_callback(seam.run)
