"""Part 5: against the peers. Server CPU per delivered client update: N clients
polling jupyter-resource-usage's ``/api/metrics/v1`` (and a few polling Glances'
REST ``/api/4/all``, when installed) once per interval, against N sysmon-nb clients,
same machine, same run.

Goal: >= 100x less CPU per client update than jupyter-resource-usage, while
delivering the full system sample (theirs is the server's own memory).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .common import (
    AUTH,
    Bench,
    ClientGroup,
    Result,
    Server,
    _preexec,
    connections,
    free_port,
    jupyter_server,
    percentile,
    wait_http,
)

TITLE = "Against the peers: CPU per client update"
GOAL_TIMES = 100.0
#: Glances spends tens of ms per request: a few clients are enough to measure it.
GLANCES_CLIENTS = 10


@dataclass
class Polled:
    server: str
    clients: int
    updates: int
    cpu_us_per_update: float | None
    p99_ms: float | None
    payload_bytes: int

    def line(self) -> str:
        cpu = "n/a" if self.cpu_us_per_update is None else f"{self.cpu_us_per_update:,.4g}"
        p99 = "n/a" if self.p99_ms is None else f"{self.p99_ms:.4g}"
        return (
            f"  {self.server:<34} N={self.clients:<5} cpu {cpu} us/update  "
            f"p99 {p99} ms  updates {self.updates}  payload {self.payload_bytes} B"
        )


def poll(bench: Bench, server: Server, path: str, clients: int) -> Polled:
    s = bench.settings
    url = f"http://127.0.0.1:{server.port}{path}"
    payload = len(wait_http(url, {"Authorization": AUTH}))
    idle = bench.idle_rate(server)
    group = ClientGroup(url, clients, mode="poll", interval=s.interval)
    try:
        time.sleep(2 * s.interval)
        start, cpu_start, mono_start = time.time(), server.cpu(), time.monotonic()
        time.sleep(s.frames * s.interval)
        end, cpu_end, mono_end = time.time(), server.cpu(), time.monotonic()
        reports = group.stop()
    finally:
        group.close()
    inside = [f for c in connections(reports) for f in c["frames"] if start <= f[1] < end]
    busy = (cpu_end - cpu_start) - idle * (mono_end - mono_start)
    latencies = [f[2] - f[1] for f in inside]
    p99 = percentile(latencies, 99)
    return Polled(
        server=server.name,
        clients=clients,
        updates=len(inside),
        cpu_us_per_update=1e6 * busy / len(inside) if inside else None,
        p99_ms=None if p99 is None else 1000 * p99,
        payload_bytes=payload,
    )


def glances_server(workdir: Path, interval: float) -> Server | None:
    exe = shutil.which("glances", path=str(Path(sys.executable).parent))
    if exe is None:
        return None
    port = free_port()
    log = workdir / f"glances-{port}.log"
    args = [exe, "-w", "--disable-webui", "-B", "127.0.0.1", "-p", str(port)]
    args += ["-t", str(max(1, round(interval))), "--disable-autodiscover"]
    with log.open("wb") as out:
        popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_preexec)
    server = Server("Glances REST", popen, port, "", log)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/4/status", {})
    except Exception:
        server.stop()
        print(f"  Glances did not start: {log.read_text()[-500:]}", flush=True)
        return None
    return server


def run(bench: Bench) -> list[Result]:
    s = bench.settings
    n = s.peers_clients
    ours = bench.sysmon(n)
    print(ours.line(), flush=True)
    jru_server = jupyter_server(
        bench.workdir,
        extensions={"jupyter_resource_usage": True, "jupyter_server_ext": False},
        name="jupyter-resource-usage",
    )
    try:
        jru = poll(bench, jru_server, "/api/metrics/v1", n)
    finally:
        jru_server.stop()
    print(jru.line(), flush=True)
    results = [
        Result(
            "peers",
            f"server CPU per client update, N={n}",
            ours.cpu_us,
            "us",
            jru.cpu_us_per_update,
            "jupyter-resource-usage /api/metrics/v1",
            goal=f">= {GOAL_TIMES:g}x less than jupyter-resource-usage",
            met=None
            if ours.cpu_us is None or jru.cpu_us_per_update is None
            else ours.cpu_us * GOAL_TIMES <= jru.cpu_us_per_update,
            reason=f"their payload {jru.payload_bytes} B (the server's own memory); "
            f"ours {ours.delivery.wire_per_frame or 0:.0f} B (the whole system sample)",
        )
    ]
    glances = glances_server(bench.workdir, s.interval)
    if glances is None:
        results.append(
            Result("peers", "Glances REST", None, "us", reason="glances is not installed")
        )
        return results
    try:
        g = poll(bench, glances, "/api/4/all", min(n, GLANCES_CLIENTS))
    finally:
        glances.stop()
    print(g.line(), flush=True)
    results.append(
        Result(
            "peers",
            "server CPU per client update, Glances REST /api/4/all",
            g.cpu_us_per_update,
            "us",
            ours.cpu_us,
            "sysmon-nb",
        )
    )
    return results
