"""Part 7: what a Prometheus scrape of the server costs, against node_exporter.

A real jupyter server with the extension (default settings, ``interval=1``) and Debian's
``prometheus-node-exporter`` (its default collectors) run side by side and are scraped
the same way: one keep-alive connection each, the headers Prometheus 2.42 sends (its
``Accept`` and ``Accept-Encoding: gzip``), a pause between scrapes, the servers taking
turns block by block. A scrape's cost is CPU (user + system) over each block, less the
same CPU's rate with no scrape (read just before), per scrape:

- our scrape: the jupyter server's event-loop thread, where ``/metrics`` is served from
  start to end (the sampler's thread is left out, so its ticks add no noise); the whole
  ``/metrics``, jupyter_server's own metrics and ours, and the same for a server with
  ``prometheus = False`` (jupyter_server's alone), so that what sysmon adds shows, and
  for a server without the extension at all (what the goal's 2 ms leaves to sysmon:
  jupyter_server's own ``/metrics`` takes most of it);
- node_exporter's scrape: its whole process (Go: the work spreads over threads);
- the sampler tick that feeds it, in this process (median CPU, as part 1), with the
  collectors a server makes by default (``processes`` with its top-5 lists and
  ``users`` from one process walk, and the on-demand ``counters``: each CPU's time per
  mode, each interface's traffic): the tick a scrape causes, where the sampler is
  told the groups a scrape wants (``metrics.WANTED_GROUPS``: every exported group;
  ``users`` needs the walk, ``processes``'s top lists are never exported so its group
  is not sampled; ``counters`` is); the goal is on this tick. Beside it, the tick
  while someone watches every group (both top lists and ``users`` from the walk), and
  a tick without the walk at all (``top_processes = 0``, no ``users``; ``counters``
  still read). A tick is the sampler's: its
  collectors, the hand-off to its runner thread and the sample; not the server's own
  handling of the sample on its loop (alerts, the broadcast);
- our collector alone: ``generate_latest`` of the sysmon families of a real sample, in
  this process (no HTTP, no jupyter_server metrics).

Goals: our scrape <= 2 ms; the tick a scrape causes + scrape <= 0.5x node_exporter's scrape.
"""

from __future__ import annotations

import http.client
import random
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest

from jupyter_server_ext.counters import CountersCollector
from jupyter_server_ext.metrics import WANTED_GROUPS, Exporter
from jupyter_server_ext.sampler import Sampler

from .common import (
    AUTH,
    Bench,
    Result,
    Server,
    _preexec,
    free_port,
    jupyter_server,
    median,
    wait_http,
)
from .sampler import alternate_all, cpu_ms, default_sampler, server_sampler

TITLE = "Prometheus scrape cost, against node_exporter"
SCRAPE_GOAL_MS = 2.0
NODE_GOAL = 0.5
NODE_EXPORTER = "prometheus-node-exporter"
#: What Prometheus 2.42 (Debian's) sends with each scrape.
SCRAPE_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
    "User-Agent": "Prometheus/2.42.0",
    "X-Prometheus-Scrape-Timeout-Seconds": "10",
}
#: Scrapes per block; the servers take turns block by block.
BLOCK = 10
#: Pause between two scrapes of one server (s): separate scrapes, not a hot loop.
PAUSE = 0.05


class Scraper:
    """One keep-alive HTTP connection to a server's metrics path."""

    def __init__(self, server: Server, path: str, auth: str | None) -> None:
        self.server = server
        self.path = path
        self.headers = dict(SCRAPE_HEADERS)
        if auth:
            self.headers["Authorization"] = auth
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        self.bytes = 0

    def scrape(self) -> None:
        self.conn.request("GET", self.path, headers=self.headers)
        reply = self.conn.getresponse()
        body = reply.read()
        if reply.status != 200:
            raise RuntimeError(f"{self.server.name}: {self.path} answered {reply.status}")
        self.bytes = len(body)

    def close(self) -> None:
        self.conn.close()


def node_exporter(workdir: Path) -> Server | None:
    """Debian's node_exporter on 127.0.0.1 with its default collectors, or ``None``
    where it is not installed."""
    binary = shutil.which(NODE_EXPORTER)
    if binary is None:
        return None
    port = free_port()
    log = workdir / f"node-exporter-{port}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [binary, f"--web.listen-address=127.0.0.1:{port}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_preexec,
        )
    server = Server("node_exporter", popen, port, "", log)
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics", {})
    except Exception:
        server.stop()
        raise
    return server


class Tally:
    """CPU spent by a server on scrapes: per block, less its idle rate."""

    def __init__(self, scraper: Scraper, cpu: Callable[[], float], seconds: float) -> None:
        self.scraper = scraper
        self.cpu = cpu
        before, start = cpu(), time.monotonic()
        time.sleep(seconds)
        self.idle_rate = (cpu() - before) / (time.monotonic() - start)
        self.busy = 0.0
        self.scrapes = 0

    def block(self, count: int) -> None:
        cpu, start = self.cpu(), time.monotonic()
        for _ in range(count):
            self.scraper.scrape()
            time.sleep(PAUSE)
        elapsed = time.monotonic() - start
        self.busy += (self.cpu() - cpu) - self.idle_rate * elapsed
        self.scrapes += count

    @property
    def ms_per_scrape(self) -> float:
        return 1000 * self.busy / self.scrapes


@dataclass
class Ticks:
    """Median CPU ms of sampler ticks and of the collector alone (see :func:`in_process`)."""

    scrape_fed: float  # the groups a scrape wants: the walk feeds users only
    watched: float  # every group wanted: top lists and users from the walk
    lean: float  # no walk at all
    collector: float  # generate_latest of the sysmon families


def with_counters(sampler: Sampler) -> Sampler:
    """``sampler`` with the ``counters`` collector a server also makes (on demand: it
    runs while the sampler's ``wanted`` names it, or always where that is ``None``)."""
    sampler.collectors.append(CountersCollector())
    return sampler


def in_process(rounds: int) -> Ticks:
    """Median CPU ms, in this process, of a sampler tick of a server's default
    collectors when a scrape is all that wants groups (``WANTED_GROUPS``), of the same
    when every group is wanted, of a tick without the walk (``top_processes = 0``),
    and of ``generate_latest`` over the sysmon families of a real sample."""
    fed = with_counters(server_sampler(wanted=WANTED_GROUPS))
    watched = with_counters(server_sampler(wanted=None))
    lean = with_counters(default_sampler(top_processes=0))
    samplers = (fed, watched, lean)
    for _ in range(2):  # prime: rates, the process table
        for sampler in samplers:
            sampler.sample_once()
        time.sleep(0.1)
    fed_ticks, watched_ticks, lean_ticks = alternate_all([s.sample_once for s in samplers], rounds)
    status = watched.sample_once()
    for sampler in samplers:
        sampler.stop()
    registry = CollectorRegistry()
    source = SimpleNamespace(broadcaster=SimpleNamespace(latest=status), log=None)
    Exporter(registry).attach(source)
    generate_latest(registry)
    scrapes = [cpu_ms(lambda: generate_latest(registry)) for _ in range(rounds)]
    return Ticks(
        median(fed_ticks) or 0.0,
        median(watched_ticks) or 0.0,
        median(lean_ticks) or 0.0,
        median(scrapes) or 0.0,
    )


def run(bench: Bench) -> list[Result]:
    s = bench.settings
    scrapes = s.prometheus_scrapes
    ticks = in_process(s.sampler_ticks)
    ours = bench.sysmon_server()
    servers = [ours]
    try:
        bare = jupyter_server(
            bench.workdir,
            extensions={"jupyter_server_ext": True, "jupyter_resource_usage": False},
            sysmon={"interval": s.interval, "prometheus": False},
            name="jupyter_server without sysmon's metrics",
        )
        servers.append(bare)
        plain = jupyter_server(
            bench.workdir,
            extensions={"jupyter_server_ext": False, "jupyter_resource_usage": False},
            name="jupyter_server without sysmon",
        )
        servers.append(plain)
        theirs = node_exporter(bench.workdir)
        if theirs is not None:
            servers.append(theirs)
        scrapers = []
        for server in servers:
            scraper = Scraper(server, "/metrics", None if server is theirs else AUTH)
            for _ in range(3):  # first scrapes: imports, caches, connection set-up
                scraper.scrape()
            scrapers.append(scraper)
        tallies = [
            Tally(scraper, server.cpu if server is theirs else server.loop_cpu, s.idle_seconds)
            for scraper, server in zip(scrapers, servers)
        ]
        done = 0
        while done < scrapes:
            count = min(BLOCK, scrapes - done)
            for tally in random.sample(tallies, len(tallies)):
                tally.block(count)
            done += count
        for scraper in scrapers:
            scraper.close()
    finally:
        for server in servers:
            server.stop()
    ours_ms, bare_ms = tallies[0].ms_per_scrape, tallies[1].ms_per_scrape
    plain_ms = tallies[2].ms_per_scrape
    node_ms = tallies[3].ms_per_scrape if theirs is not None else None
    print(
        f"  {scrapes} scrapes each: sysmon-nb /metrics {ours_ms:.3g} ms "
        f"({scrapers[0].bytes} B), the same server without sysmon's metrics {bare_ms:.3g} ms "
        f"({scrapers[1].bytes} B), jupyter_server without the extension {plain_ms:.3g} ms "
        f"({scrapers[2].bytes} B); sampler tick a scrape causes (users from the walk, no "
        f"top lists) {ticks.scrape_fed:.3g} ms, with every group watched {ticks.watched:.3g} "
        f"ms, without the walk {ticks.lean:.3g} ms; collector alone {ticks.collector:.3g} ms; "
        + (
            f"node_exporter {node_ms:.3g} ms ({scrapers[3].bytes} B gzip)"
            if node_ms is not None
            else f"node_exporter not measured ({NODE_EXPORTER} is not installed)"
        ),
        flush=True,
    )
    fed = ticks.scrape_fed + ours_ms
    missing = "" if node_ms is not None else f"; {NODE_EXPORTER} is not installed"
    return [
        Result(
            "prometheus",
            "server CPU per /metrics scrape",
            ours_ms,
            "ms",
            node_ms,
            "node_exporter scrape",
            goal=f"<= {SCRAPE_GOAL_MS:g} ms",
            met=ours_ms <= SCRAPE_GOAL_MS,
        ),
        Result(
            "prometheus",
            "of which sysmon's metrics (the scrape less the same server's without them)",
            ours_ms - bare_ms,
            "ms",
            bare_ms,
            "/metrics without sysmon",
        ),
        Result(
            "prometheus",
            "jupyter_server's own /metrics, without the sysmon extension",
            plain_ms,
            "ms",
            node_ms,
            "node_exporter scrape",
        ),
        Result(
            "prometheus",
            "sampler tick a scrape causes (the walk for users; no top lists) + scrape",
            fed,
            "ms",
            node_ms,
            "node_exporter scrape",
            goal=f"<= {NODE_GOAL}x node_exporter's scrape",
            met=None if node_ms is None else fed <= NODE_GOAL * node_ms,
            reason=f"tick {ticks.scrape_fed:.3g} ms + scrape {ours_ms:.3g} ms" + missing,
        ),
        Result(
            "prometheus",
            "sampler tick with every group watched (top-5 lists and users) + scrape",
            ticks.watched + ours_ms,
            "ms",
            node_ms,
            "node_exporter scrape",
            reason=f"tick {ticks.watched:.3g} ms + scrape {ours_ms:.3g} ms" + missing,
        ),
        Result(
            "prometheus",
            "sampler tick without the process walk (no users group) + scrape",
            ticks.lean + ours_ms,
            "ms",
            node_ms,
            "node_exporter scrape",
        ),
        Result(
            "prometheus",
            "sysmon collector alone (generate_latest, in process, median)",
            ticks.collector,
            "ms",
        ),
    ]
