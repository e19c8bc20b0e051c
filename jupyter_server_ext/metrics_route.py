"""``GET sysmon/metrics``: the latest sample as Prometheus text, behind sysmon's admission.

The same admission as ``sysmon/ws`` (:mod:`.admission`): administrators, hub readers
with ``custom:sysmon:read``, the owner where ``allow_owner`` is on. The body is
prometheus_client's text exposition of the extension's own registry (never the global
``REGISTRY`` that jupyter_server's ``/metrics`` serves), which holds nothing but the
:class:`.metrics.Exporter`: a scrape reads the sample the sampler published, it never
samples.
"""

from __future__ import annotations

from jupyter_server.base.handlers import APIHandler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tornado import web

from .admission import AUTH_RESOURCE, SysmonRoute

__all__ = ["MetricsHandler"]


class MetricsHandler(SysmonRoute, APIHandler):
    """``GET sysmon/metrics``: ``sysmon_*`` series for Prometheus."""

    auth_resource = AUTH_RESOURCE
    #: a scrape is not the user's activity: it must not keep an idle server from culling
    _track_activity = False

    @web.authenticated
    async def get(self) -> None:
        await self._authorize_admin()
        ext = self.extension
        if not ext.prometheus:
            raise web.HTTPError(404, "the Prometheus export is off (SysmonExtension.prometheus)")
        body = generate_latest(ext.metrics_registry)
        self.set_header("Cache-Control", "no-store")
        self.finish(body, set_content_type=CONTENT_TYPE_LATEST)
