"""The hub exporter: every single-user server's sysmon series on one ``/metrics``.

A JupyterHub service (``python -m jupyter_server_ext.hub_exporter``; see
docs/prometheus-hub.md) that Prometheus scrapes instead of the servers, so that no
user's server is ever handed a credential that opens other servers. It holds the one
credential (its service token, which goes only to the hub), watches every server the
fleet's way (:class:`sysmon_nb.fleet.FleetClient`: each server is sent only a
short-lived token minted for that server alone, owned by ``token_owner``, rotated and
revoked), keeps each server's newest sample, and serves them all on
``<service prefix>metrics``: each server's sample rendered by
:func:`jupyter_server_ext.metrics.families` (the same series a server exports), every
sample labelled ``hub_user`` and ``hub_server`` (``user`` would clash with the
``sysmon_user_*{user}`` series), plus ``sysmon_hub_server_up{hub_user,hub_server}``
for each ready server (0 while its newest sample is older than ``stale_after``, or is
left out: what a server sends is its user's to shape, so a server that sends more than
``max_series_per_server`` series, or a sample that does not render, is left out rather
than swamp Prometheus or break the scrape) and ``sysmon_hub_listing_up``.

``/metrics`` admits a hub token whose scopes hold this service's access scope
(``access:services!service=<name>``: a Prometheus token with that scope opens this
service and nothing else), checked with JupyterHub's ``HubAuth``, from the
``Authorization`` header only; anything else gets 403. A scrape renders what the
streams already hold: it never waits on a server.

Why it lives here and runs beside the hub: it renders with the extension's own
``families()`` (one definition of the series, whatever servers export) and depends on
what the extension already needs (tornado, prometheus_client, traitlets) plus
JupyterHub, which the hub's environment has; ``jupyter_server_ext`` may import the
client side (``sysmon_nb``), never the reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from tornado import web
from traitlets import Float, Int, Unicode, default
from traitlets.config import Application

from sysmon_nb.client import ClientError
from sysmon_nb.fleet import FleetClient, FleetRefusedError, FleetServer
from sysmon_nb.protocol import Status

from .metrics import families

log = logging.getLogger(__name__)

#: The labels every series gets (not ``user``: sysmon's own ``sysmon_user_*`` use it).
HUB_USER, HUB_SERVER = "hub_user", "hub_server"
#: The groups the streams leave out: the process lists, which no metric exports.
EXCLUDED = ("processes",)
#: What the streams add to a server's default offer: the per-CPU and per-interface
#: counters (``sysmon_cpu_seconds_total``, ``sysmon_network_*_total``).
INCLUDED = ("counters",)
#: Series one server may add to a scrape, by default (a busy server has a few hundred).
MAX_SERIES = 5000
#: Seconds between two tries to reach the hub at start-up, at most.
START_RETRY_MAX = 30.0


def labelled(family: Metric, user: str, server: str) -> Iterator[Any]:
    """``family``'s samples, each with ``hub_user`` and ``hub_server`` added."""
    extra = {HUB_USER: user, HUB_SERVER: server}
    for sample in family.samples:
        yield sample._replace(labels={**sample.labels, **extra})


class HubCollector:
    """prometheus_client collector of the newest sample of every server of ``fleet``
    (a :class:`FleetClient` with ``keep_latest``). A server whose newest sample is older
    than ``stale_after`` seconds is left out (and its ``sysmon_hub_server_up`` is 0)."""

    def __init__(
        self,
        fleet: FleetClient,
        stale_after: float = 60.0,
        clock: Callable[[], float] = time.time,
        max_series: int = MAX_SERIES,
    ) -> None:
        self.fleet = fleet
        self.stale_after = stale_after
        self.max_series = max_series
        self._clock = clock
        self._clash_logged: set[str] = set()
        #: Servers whose sample is left out (too many series, or it did not render).
        self.left_out: set[tuple[str, str]] = set()

    def describe(self) -> list[Metric]:
        return []  # registration never collects

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        merged: dict[str, Metric] = {}
        up = GaugeMetricFamily(
            "sysmon_hub_server_up",
            "1 while the server's newest sysmon sample is fresh, else 0 (ready servers only)",
            labels=[HUB_USER, HUB_SERVER],
        )
        for server in sorted(self.fleet.servers.values(), key=lambda s: s.key):
            if server.hub_state != "ready":
                continue
            status = server.latest if self._fresh(server, now) else None
            rendered = self._render(server, status, now) if status is not None else None
            up.add_metric([server.user, server.name], 0.0 if rendered is None else 1.0)
            for family in rendered or ():
                into = merged.get(family.name)
                if into is None:
                    into = Metric(family.name, family.documentation, family.type, family.unit)
                    merged[family.name] = into
                elif into.type != family.type:
                    self._clash(family.name)
                    continue
                into.samples.extend(labelled(family, server.user, server.name))
        yield from merged.values()
        yield up
        listing = GaugeMetricFamily(
            "sysmon_hub_listing_up", "1 while the hub's last listing of its servers worked"
        )
        listing.add_metric([], 1.0 if self.fleet.listings and not self.fleet.listing_error else 0.0)
        yield listing

    def _render(self, server: FleetServer, status: Status, now: float) -> list[Metric] | None:
        """``status``'s families; None (logged once) when a server sends more series
        than ``max_series`` or a sample that does not render: what a server sends is
        untrusted, and one server must not swamp Prometheus or break the scrape."""
        try:
            rendered = list(families(status, now))
        except Exception:
            problem = "its sample did not render"
            log.debug("sysmon: rendering %s/%s failed", *server.key, exc_info=True)
        else:
            count = sum(len(family.samples) for family in rendered)
            if count <= self.max_series:
                if server.key in self.left_out:
                    self.left_out.discard(server.key)
                    log.info("sysmon: exporting %s/%s again", *server.key)
                return rendered
            problem = f"it sends {count} series, over the {self.max_series} allowed"
        if server.key not in self.left_out:
            self.left_out.add(server.key)
            log.warning("sysmon: leaving %s/%s out: %s", server.key[0], server.key[1], problem)
        return None

    def _fresh(self, server: FleetServer, now: float) -> bool:
        arrived = server.received_at
        return (
            server.latest is not None and arrived is not None and now - arrived <= self.stale_after
        )

    def _clash(self, name: str) -> None:
        if name not in self._clash_logged:
            self._clash_logged.add(name)
            log.warning("sysmon: servers export %s with different types; kept the first", name)


class MetricsHandler(web.RequestHandler):
    """``<prefix>metrics``: the fleet's series, for a token with this service's access."""

    def initialize(self, exporter: HubExporter) -> None:
        self.exporter = exporter

    async def get(self) -> None:
        hub_auth = self.exporter.hub_auth
        # The Authorization header only: never a token from the URL (or a cookie).
        found = hub_auth.auth_header_pat.match(self.request.headers.get("Authorization", ""))
        token = found.group(1) if found else None
        model = await hub_auth.user_for_token(token, sync=False) if token else None
        if not model or not hub_auth.check_scopes(hub_auth.access_scopes, model):
            self.set_status(403)
            scopes = " or ".join(sorted(hub_auth.access_scopes))
            self.finish({"message": f"a hub token with {scopes} is needed here"})
            return
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(self.exporter.registry))


def _log_request(handler: web.RequestHandler) -> None:
    """One access-log line per request, without the query string (no token in logs)."""
    request = handler.request
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING
    log.log(
        level, "%d %s %s %.1fms", status, request.method, request.path,
        1000.0 * request.request_time(),
    )  # fmt: skip


class HubExporter(Application):
    """Serve every server's sysmon series on one ``/metrics`` (see the module docstring)."""

    name = "sysmon-hub-exporter"
    description = "Every JupyterHub server's sysmon series on one /metrics, for Prometheus."

    aliases = {  # noqa: RUF012 (traitlets reads class-level dicts)
        "hub-url": "HubExporter.hub_url",
        "token-owner": "HubExporter.token_owner",
        "refresh-interval": "HubExporter.refresh_interval",
    }

    hub_url = Unicode(
        help="""The hub's URL through its proxy (what users open, or the proxy's in-cluster
        address, e.g. http://proxy-public/): the exporter lists servers at
        <hub_url>hub/api/ and streams each one at <hub_url>user/<name>/<server>/sysmon/ws.
        Required.""",
    ).tag(config=True)

    api_token = Unicode(
        help="""The exporter's hub token (default: $JUPYTERHUB_API_TOKEN, the service's
        own). It goes only to the hub: it lists the servers, mints each server's token and
        checks the tokens Prometheus scrapes with. It needs list:users, read:servers,
        custom:sysmon:read (or access:servers) and tokens for token_owner.""",
    ).tag(config=True)

    token_owner = Unicode(
        "",
        help="""The hub user whose short-lived per-server tokens the exporter mints (each
        scoped to one server, rotated, revoked on exit). Required when api_token is a
        service's (the hub mints tokens for users only); that user must hold
        custom:sysmon:read, and nothing else is needed. Empty: the token's own user.""",
    ).tag(config=True)

    service_name = Unicode(
        help="""This service's name in the hub's c.JupyterHub.services (default:
        $JUPYTERHUB_SERVICE_NAME, else sysmon-exporter). Scrapers need a hub token with
        access:services!service=<name>.""",
    ).tag(config=True)

    service_url = Unicode(
        help="""The service's URL, as the hub's proxy reaches it (default:
        $JUPYTERHUB_SERVICE_URL, else http://127.0.0.1:9650); the port to listen on.""",
    ).tag(config=True)

    ip = Unicode(
        help="""The address to listen on (default: service_url's host; 0.0.0.0 where
        the proxy reaches the service through a cluster address).""",
    ).tag(config=True)

    service_prefix = Unicode(
        help="""The path prefix the hub's proxy routes here (default:
        $JUPYTERHUB_SERVICE_PREFIX, else /services/<service_name>/); /metrics is served
        under it.""",
    ).tag(config=True)

    hub_api_url = Unicode(
        help="""The hub's API URL to check scrapers' tokens (default: $JUPYTERHUB_API_URL,
        else <hub_url>hub/api).""",
    ).tag(config=True)

    refresh_interval = Float(30.0, help="Seconds between two listings of the hub's servers.").tag(
        config=True
    )

    token_lifetime = Int(
        1800,
        help="""Seconds each per-server token lives; it is replaced between half and three
        quarters of that (spread out over the servers).""",
    ).tag(config=True)

    stale_after = Float(
        60.0,
        help="""Seconds after which a server's newest sample is no longer exported (its
        sysmon_hub_server_up becomes 0).""",
    ).tag(config=True)

    max_opening = Int(
        16, help="Streams opened (and per-server tokens minted) at once, at most."
    ).tag(config=True)

    max_series_per_server = Int(
        MAX_SERIES,
        help="""Series one server may add to a scrape; a server that sends more (what a
        server sends is its user's to shape) is left out, its sysmon_hub_server_up 0.""",
    ).tag(config=True)

    auth_cache_max_age = Int(
        60, help="Seconds the hub's answer about a scraper's token is cached."
    ).tag(config=True)

    @default("api_token")
    def _default_api_token(self) -> str:
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    @default("service_name")
    def _default_service_name(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_NAME") or "sysmon-exporter"

    @default("service_url")
    def _default_service_url(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_URL") or "http://127.0.0.1:9650"

    @default("ip")
    def _default_ip(self) -> str:
        return urlsplit(self.service_url).hostname or "127.0.0.1"

    @default("service_prefix")
    def _default_service_prefix(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX") or f"/services/{self.service_name}/"

    @default("hub_api_url")
    def _default_hub_api_url(self) -> str:
        return os.environ.get("JUPYTERHUB_API_URL") or self.hub_url.rstrip("/") + "/hub/api"

    def initialize(self, argv: Any = None) -> None:
        super().initialize(argv)
        if not self.hub_url:
            log.critical("sysmon: set HubExporter.hub_url (--hub-url)")
            self.exit(2)
        if not self.api_token:
            log.critical("sysmon: no hub token (HubExporter.api_token)")
            self.exit(2)
        from jupyterhub.services.auth import HubAuth

        self.hub_auth = HubAuth(
            api_token=self.api_token,
            api_url=self.hub_api_url,
            access_scopes={f"access:services!service={self.service_name}"},
            cache_max_age=self.auth_cache_max_age,
            allow_token_in_url=False,
        )
        self.fleet = FleetClient(
            self.hub_url,
            self.api_token,
            refresh_interval=self.refresh_interval,
            max_opening=self.max_opening,
            token_lifetime=self.token_lifetime,
            token_owner=self.token_owner or None,
            exclude=EXCLUDED,
            include=INCLUDED,
            keep_latest=True,
        )
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(
            HubCollector(self.fleet, self.stale_after, max_series=self.max_series_per_server)
        )

    def start(self) -> None:
        sys.exit(asyncio.run(self.serve()))

    async def serve(self) -> int:
        """Listen and watch until SIGTERM or SIGINT; 1 when the hub refuses the token."""
        where = urlsplit(self.service_url)
        prefix = (
            "/" + self.service_prefix.strip("/") + "/" if self.service_prefix.strip("/") else "/"
        )
        app = web.Application(
            [(f"{prefix}metrics", MetricsHandler, {"exporter": self})],
            log_function=_log_request,
        )
        server = app.listen(where.port or 80, self.ip)
        log.info("sysmon: serving %smetrics on %s", prefix, self.service_url)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        watching = loop.create_task(self.watch())
        stopped = loop.create_task(stopping.wait())
        try:
            await asyncio.wait({watching, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if watching.done():
                return 1 if watching.exception() is not None else 0
            return 0
        finally:
            server.stop()
            stopped.cancel()
            watching.cancel()  # every stream closes, every minted token is revoked
            with contextlib.suppress(asyncio.CancelledError, ClientError):
                await watching

    async def watch(self) -> None:
        """Wait for the hub (it may still be starting), then watch its servers."""
        delay = 1.0
        while True:
            try:
                await self.fleet.check()
                break
            except FleetRefusedError as err:
                log.critical("sysmon: the hub refused the exporter's token: %s", err.reason)
                raise
            except ClientError as err:
                log.warning("sysmon: cannot reach the hub yet (%s); retrying", err.reason)
                await asyncio.sleep(delay)
                delay = min(START_RETRY_MAX, delay * 2)
        try:
            await self.fleet.run()
        except FleetRefusedError as err:
            log.critical("sysmon: the hub refused the exporter's token: %s", err.reason)
            raise


def main(argv: list[str] | None = None) -> None:
    """``python -m jupyter_server_ext.hub_exporter --hub-url=... [--token-owner=...]``."""
    logging.basicConfig(
        level=logging.INFO, format="[%(levelname).1s %(asctime)s %(name)s] %(message)s"
    )
    app = HubExporter()
    app.initialize(argv)
    app.start()


if __name__ == "__main__":
    main()
