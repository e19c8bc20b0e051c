"""What every part shares: results and goals, servers under test, and client processes.

A server under test is a real process (a jupyter_server with the extension, or a
reference tornado server): its cost is its own CPU time and RSS, read with psutil from
outside. Clients run in other processes (:mod:`benchmarks.clients`), spread so that no
single process holds more than ``CLIENTS_PER_PROCESS`` connections.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

TOKEN = secrets.token_hex(16)
AUTH = f"token {TOKEN}"
CLIENTS_PER_PROCESS = 500


@dataclass
class Settings:
    """Sizes for one run; ``quick`` ones keep the harness's own tests short."""

    interval: float = 1.0
    frames: int = 30
    sizes: tuple[int, ...] = (100, 1000, 2000)
    goal_size: int = 1000
    slow_clients: int = 100
    slow_stalled: int = 5
    stall_seconds: float = 60.0
    sampler_ticks: int = 60
    peers_clients: int = 100
    widget_measured: int = 300
    widget_long_run: int = 3000
    latency_samples: int = 120
    prometheus_scrapes: int = 200
    history_clients: int = 100
    history_samples: int = 720
    #: how long a server's CPU with no client is read, to subtract it (s)
    idle_seconds: float = 5.0
    #: frames arriving this long after their window closed count as lost (s)
    late_after: float = 2.0
    warm_up: bool = True
    #: also measure the fan-out with jupyter_server's keep-alive pings off
    without_pings: bool = True

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            interval=0.5,
            frames=4,
            sizes=(6,),
            goal_size=6,
            slow_clients=6,
            slow_stalled=2,
            stall_seconds=4.0,
            sampler_ticks=5,
            peers_clients=4,
            widget_measured=20,
            widget_long_run=200,
            latency_samples=6,
            prometheus_scrapes=6,
            history_clients=6,
            history_samples=30,
            idle_seconds=1.0,
            late_after=1.0,
            warm_up=False,
            without_pings=False,
        )


@dataclass
class Result:
    """One figure, its reference from the same run, and the goal it is held to."""

    part: str
    name: str
    value: float | None
    unit: str
    reference: float | None = None
    reference_name: str = ""
    goal: str = ""
    met: bool | None = None
    reason: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.reference:
            return None
        return self.value / self.reference

    def line(self) -> str:
        value = "n/a" if self.value is None else f"{self.value:,.4g} {self.unit}"
        out = f"  {self.name}: {value}"
        if self.reference is not None:
            out += f"  (reference {self.reference_name}: {self.reference:,.4g} {self.unit}"
            ratio = self.ratio
            out += f", ratio {ratio:.3g}x)" if ratio is not None else ")"
        if self.goal:
            verdict = {True: "MET", False: "MISSED", None: "NOT MEASURED"}[self.met]
            out += f"\n      goal {self.goal}: {verdict}"
            if self.reason:
                out += f" - {self.reason}"
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "part": self.part,
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "reference": self.reference,
            "reference_name": self.reference_name,
            "ratio": self.ratio,
            "goal": self.goal,
            "met": self.met,
            "reason": self.reason,
        }


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def raise_nofile() -> None:
    """Let this process open as many files as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 65536 if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def wait_http(url: str, headers: dict[str, str], timeout: float = 90.0) -> bytes:
    """GET ``url`` until it answers 200 (bounded)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(request, timeout=5) as reply:
                body: bytes = reply.read()
                return body
        except Exception as err:  # not up yet, or no sample yet (503)
            last = err
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout}s: {last}")


@dataclass
class Server:
    """A server process under test."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    ws_path: str
    log: Path
    proc: psutil.Process = field(init=False)

    def __post_init__(self) -> None:
        self.proc = psutil.Process(self.popen.pid)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.ws_path}"

    def cpu(self) -> float:
        return cpu_seconds(self.proc)

    def rss(self) -> int:
        return int(self.proc.memory_info().rss)

    def loop_cpu(self) -> float:
        """CPU seconds of the main thread alone: the event loop, where the fan-out runs
        (the sampler and other workers have threads of their own)."""
        for thread in self.proc.threads():
            if thread.id == self.proc.pid:
                return float(thread.user_time + thread.system_time)
        return 0.0

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after a grace period)."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def _preexec() -> None:
    raise_nofile()


def jupyter_server(
    workdir: Path,
    *,
    extensions: dict[str, bool],
    sysmon: dict[str, Any] | None = None,
    name: str = "sysmon-nb",
    server_app: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    extra_env: dict[str, str] | None = None,
) -> Server:
    """Start a real jupyter_server (as its own process) with the given extensions;
    ``extra`` adds config sections (e.g. ``LabApp``), ``extra_env`` is added to its
    environment (this checkout importable: its benchmark helpers may be loaded as
    extensions)."""
    port = free_port()
    root = workdir / f"server-{port}"
    root.mkdir(parents=True)
    config = {
        "ServerApp": {
            "ip": "127.0.0.1",
            "port": port,
            "port_retries": 0,
            "open_browser": False,
            "root_dir": str(root),
            "jpserver_extensions": extensions,
            "log_level": "WARN",
            **(server_app or {}),
        },
        "IdentityProvider": {"token": TOKEN},
        "SysmonExtension": {
            "interval": 1.0,
            "max_connections": 100_000,
            "max_connections_per_identity": 100_000,  # every client is the owner here
            **(sysmon or {}),
        },
        **(extra or {}),
    }
    config_file = root / "jupyter_server_config.json"
    config_file.write_text(json.dumps(config))
    env = dict(os.environ)
    env.update(
        JUPYTER_CONFIG_DIR=str(root),
        JUPYTER_RUNTIME_DIR=str(root / "runtime"),
        JUPYTER_DATA_DIR=str(root / "data"),
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(filter(None, [_repo_root(), os.environ.get("PYTHONPATH")])),
        **(extra_env or {}),
    )
    args = [sys.executable, "-m", "jupyter_server", f"--config={config_file}"]
    if os.geteuid() == 0:
        args.append("--allow-root")
    log = root / "server.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=_preexec
        )
    server = Server(name, popen, port, "/sysmon/ws", log)
    try:
        probe = "/sysmon/api/status" if extensions.get("jupyter_server_ext") else "/api/status"
        wait_http(f"http://127.0.0.1:{port}{probe}", {"Authorization": AUTH})
    except Exception:
        server.stop()
        raise RuntimeError(f"{name} did not start; log:\n{log.read_text()[-3000:]}") from None
    return server


def reference_server(
    workdir: Path, mode: str, template: Path, interval: float, compression: bool = False
) -> Server:
    """Start :mod:`benchmarks.floor_server` in ``mode`` (tornado | raw)."""
    port = free_port()
    log = workdir / f"floor-{mode}-{port}.log"
    args = [
        sys.executable,
        "-m",
        "benchmarks.floor_server",
        f"--port={port}",
        f"--mode={mode}",
        f"--template={template}",
        f"--interval={interval}",
    ]
    if compression:
        args.append("--compression")
    with log.open("wb") as out:
        popen = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_preexec, cwd=_repo_root()
        )
    name = f"tornado {'write_message' if mode == 'tornado' else 'socket.send'}"
    if compression:
        name += " + deflate"
    server = Server(name, popen, port, "/ws", log)
    try:
        wait_http(f"http://127.0.0.1:{port}/ready", {})
    except Exception:
        server.stop()
        raise
    return server


def _repo_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sysmon-bench-") as tmp:
        yield Path(tmp)


# -- client processes -----------------------------------------------------------------


class ClientGroup:
    """Client processes holding ``total`` connections to ``url`` between them.

    Each process speaks JSON lines: it prints ``ready`` once connected, and answers
    ``stop``/``stall``/``resume`` commands (see :mod:`benchmarks.clients`).
    """

    def __init__(
        self,
        url: str,
        total: int,
        *,
        mode: str = "ws",
        compression: bool = False,
        interval: float = 1.0,
        stalled: int = 0,
    ) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        counts = []
        remaining = total
        if stalled:
            counts.append((stalled, True))
            remaining -= stalled
        while remaining > 0:
            take = min(CLIENTS_PER_PROCESS, remaining)
            counts.append((take, False))
            remaining -= take
        for count, stallable in counts:
            args = [
                sys.executable,
                "-m",
                "benchmarks.clients",
                f"--url={url}",
                f"--count={count}",
                f"--mode={mode}",
                f"--interval={interval}",
            ]
            if compression:
                args.append("--compression")
            if stallable:
                args.append("--stallable")
            self.procs.append(
                subprocess.Popen(
                    args,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    preexec_fn=_preexec,
                    cwd=_repo_root(),
                    env={**os.environ, "SYSMON_BENCH_AUTH": AUTH},
                )
            )
        self.stallable = self.procs[0] if stalled else None
        self.ready = [self._read(p, timeout=180.0) for p in self.procs]
        self.connected = sum(r["connected"] for r in self.ready)
        self.failed = sum(r["failed"] for r in self.ready)

    @staticmethod
    def _read(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
        assert proc.stdout is not None
        import select

        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else ""
        if not line:
            proc.kill()
            raise RuntimeError(f"client process {proc.pid} gave no answer")
        obj: dict[str, Any] = json.loads(line)
        return obj

    def command(self, proc: subprocess.Popen[str], command: dict[str, Any]) -> dict[str, Any]:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(command) + "\n")
        proc.stdin.flush()
        return self._read(proc, timeout=120.0)

    def stop(self) -> list[dict[str, Any]]:
        """Stop every process; each reports every frame its connections received."""
        results = []
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"cmd": "stop"}) + "\n")
            proc.stdin.flush()
        for proc in self.procs:
            results.append(self._read(proc, timeout=120.0))
            proc.wait(30)
        return results

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@dataclass
class Delivery:
    """What clients saw of the frames timed inside a window."""

    connections: int
    frames: int
    received: int
    lost: int
    out_of_order: int
    latencies: list[float]
    wire_per_frame: float | None

    @property
    def p50_ms(self) -> float | None:
        p = percentile(self.latencies, 50)
        return None if p is None else 1000 * p

    @property
    def p99_ms(self) -> float | None:
        p = percentile(self.latencies, 99)
        return None if p is None else 1000 * p


def connections(reports: Sequence[dict[str, Any]], kind: str | None = None) -> list[Any]:
    return [c for r in reports for c in r["connections"] if kind is None or c["kind"] == kind]


def delivery(conns: Sequence[dict[str, Any]], start: float, end: float) -> Delivery:
    """What ``conns`` received of the frames timed in ``[start, end)``. Expected frames
    are every seq from the lowest to the highest any of them saw in the window; a
    connection that misses one has lost it."""
    inside = [[f for f in c["frames"] if start <= f[1] < end] for c in conns]
    seen = {f[0] for frames in inside for f in frames}
    expected = set(range(min(seen), max(seen) + 1)) if seen else set()
    lost = sum(len(expected - {f[0] for f in frames}) for frames in inside)
    per_frame = [
        (frames[-1][3] - frames[0][3]) / (len(frames) - 1) for frames in inside if len(frames) > 1
    ]
    return Delivery(
        connections=len(conns),
        frames=len(expected),
        received=sum(len(frames) for frames in inside),
        lost=lost,
        out_of_order=sum(c["out_of_order"] for c in conns),
        latencies=[f[2] - f[1] for frames in inside for f in frames],
        wire_per_frame=statistics.mean(per_frame) if per_frame else None,
    )


# -- one fan-out measurement -------------------------------------------------------------


@dataclass
class Measurement:
    """A server streaming to ``clients`` connections for a window of frames."""

    server: str
    clients: int
    compression: bool
    #: server CPU per client per frame, less what the server spends with no client (us)
    cpu_us: float | None
    #: the same for the event loop's thread alone (no sampler thread: steadier)
    loop_us: float | None
    rss_kib_per_connection: float | None
    delivery: Delivery
    idle_cpu_ms_per_s: float
    connect_failed: int

    def line(self) -> str:
        d = self.delivery
        return (
            f"  {self.server:<34} N={self.clients:<5} "
            f"cpu {_fmt(self.cpu_us, 'us/client/frame')} (loop {_fmt(self.loop_us, 'us')})  "
            f"p50 {_fmt(d.p50_ms, 'ms')}  p99 {_fmt(d.p99_ms, 'ms')}  "
            f"rss {_fmt(self.rss_kib_per_connection, 'KiB/conn')}  "
            f"wire {_fmt(d.wire_per_frame, 'B/frame')}  "
            f"frames {d.frames}  lost {d.lost}  out-of-order {d.out_of_order}"
            + (f"  connect-failed {self.connect_failed}" if self.connect_failed else "")
        )


def _fmt(value: float | None, unit: str) -> str:
    return "n/a" if value is None else f"{value:,.4g} {unit}"


class Bench:
    """One run: settings, a scratch directory, and measurements shared between parts
    (the uncompressed fan-out at N=1000 is both part 2's figure and part 3's reference)."""

    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self._cache: dict[tuple[str, int, bool], Measurement] = {}
        self._template: Path | None = None

    def sysmon_server(self, compression: bool = False, pings: bool = True) -> Server:
        """sysmon-nb in a jupyter server; ``pings=False`` turns jupyter_server's
        keep-alive pings off (``ws_ping_interval = 0``) to show what they cost."""
        return jupyter_server(
            self.workdir,
            extensions={"jupyter_server_ext": True, "jupyter_resource_usage": False},
            sysmon={"interval": self.settings.interval, "compression": compression},
            name="sysmon-nb"
            + (" + deflate" if compression else "")
            + ("" if pings else ", no keep-alive pings"),
            server_app=None if pings else {"tornado_settings": {"ws_ping_interval": 0}},
        )

    def template(self) -> Path:
        """A real status frame from this machine, for the reference servers to send."""
        if self._template is None:
            server = self.sysmon_server()
            try:
                time.sleep(2.5 * self.settings.interval)  # rates known, processes primed
                body = wait_http(
                    f"http://127.0.0.1:{server.port}/sysmon/api/status", {"Authorization": AUTH}
                )
            finally:
                server.stop()
            self._template = self.workdir / "template.json"
            self._template.write_bytes(body)
        return self._template

    def sysmon(self, clients: int, compression: bool = False, pings: bool = True) -> Measurement:
        key = ("sysmon" if pings else "sysmon-no-pings", clients, compression)
        if key not in self._cache:
            server = self.sysmon_server(compression, pings)
            try:
                self._cache[key] = self.measure(server, clients, compression)
            finally:
                server.stop()
        return self._cache[key]

    def floor(self, mode: str, clients: int, compression: bool = False) -> Measurement:
        key = (mode, clients, compression)
        if key not in self._cache:
            server = reference_server(
                self.workdir, mode, self.template(), self.settings.interval, compression
            )
            try:
                self._cache[key] = self.measure(server, clients, compression)
            finally:
                server.stop()
        return self._cache[key]

    def idle_rate(self, server: Server) -> float:
        """The server's CPU seconds per second with no client (its sampler, timers)."""
        return self.idle_rates(server)[0]

    def idle_rates(self, server: Server) -> tuple[float, float]:
        """CPU seconds per second with no client: the whole server, its loop thread."""
        seconds = self.settings.idle_seconds
        cpu, loop, start = server.cpu(), server.loop_cpu(), time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - start
        return (server.cpu() - cpu) / elapsed, (server.loop_cpu() - loop) / elapsed

    def warm_up(self, server: Server, compression: bool) -> None:
        """A few clients come and go first, so that what a server sets up once (imports,
        caches on the first request) is not counted per connection."""
        group = ClientGroup(server.ws_url, 4, compression=compression)
        try:
            time.sleep(1.5 * self.settings.interval)
            group.stop()
        finally:
            group.close()

    def measure(self, server: Server, clients: int, compression: bool) -> Measurement:
        s = self.settings
        if s.warm_up:
            self.warm_up(server, compression)
        idle, idle_loop = self.idle_rates(server)
        rss_before = server.rss()
        group = ClientGroup(server.ws_url, clients, compression=compression, interval=s.interval)
        try:
            time.sleep(2 * s.interval)  # every connection past its first frame
            start, cpu_start, mono_start = time.time(), server.cpu(), time.monotonic()
            loop_start = server.loop_cpu()
            time.sleep(s.frames * s.interval)
            end, cpu_end, mono_end = time.time(), server.cpu(), time.monotonic()
            loop_end = server.loop_cpu()
            rss_after = server.rss()
            time.sleep(s.late_after)
            reports = group.stop()
        finally:
            group.close()
        d = delivery(connections(reports), start, end)
        busy = (cpu_end - cpu_start) - idle * (mono_end - mono_start)
        busy_loop = (loop_end - loop_start) - idle_loop * (mono_end - mono_start)
        per = clients * d.frames
        return Measurement(
            server=server.name,
            clients=clients,
            compression=compression,
            cpu_us=1e6 * busy / per if per else None,
            loop_us=1e6 * busy_loop / per if per else None,
            rss_kib_per_connection=(rss_after - rss_before) / 1024 / clients,
            delivery=d,
            idle_cpu_ms_per_s=1000 * idle,
            connect_failed=group.failed,
        )
