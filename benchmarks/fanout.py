"""Part 2: fan-out to N WebSocket clients, against tornado's own floors in the same run.

Goal at N = goal size (1000): <= 25 us server CPU per client per frame, <= 20 KiB RSS
per connection, p99 no worse than the ``write_message`` floor's p99, no frame lost or
out of order.
"""

from __future__ import annotations

from .common import Bench, Measurement, Result

TITLE = "Fan-out: one sample to N WebSocket clients"
CPU_GOAL_US = 25.0
RSS_GOAL_KIB = 20.0


def run(bench: Bench) -> list[Result]:
    s = bench.settings
    for n in s.sizes:
        print(bench.sysmon(n).line(), flush=True)
    n = s.goal_size
    tornado = bench.floor("tornado", n)
    print(tornado.line(), flush=True)
    raw = bench.floor("raw", n)
    print(raw.line(), flush=True)
    quiet = bench.sysmon(n, pings=False) if s.without_pings else None
    if quiet is not None:
        print(quiet.line(), flush=True)
    return judge(bench.sysmon(n), tornado, raw, "fanout", quiet)


def judge(
    ours: Measurement,
    tornado: Measurement,
    raw: Measurement,
    part: str,
    quiet: Measurement | None = None,
) -> list[Result]:
    n = ours.clients
    d = ours.delivery
    results = [
        Result(
            part,
            f"server CPU per client per frame, N={n}",
            ours.cpu_us,
            "us",
            tornado.cpu_us,
            tornado.server,
            goal=f"<= {CPU_GOAL_US:g} us",
            met=None if ours.cpu_us is None else ours.cpu_us <= CPU_GOAL_US,
            reason=_cpu_reason(ours, tornado, quiet),
        ),
        Result(
            part,
            f"server RSS per connection, N={n}",
            ours.rss_kib_per_connection,
            "KiB",
            tornado.rss_kib_per_connection,
            tornado.server,
            goal=f"<= {RSS_GOAL_KIB:g} KiB",
            met=(ours.rss_kib_per_connection or 0) <= RSS_GOAL_KIB,
            reason="the handler, its request and tornado's stream per connection"
            if (ours.rss_kib_per_connection or 0) > RSS_GOAL_KIB
            else "",
        ),
        Result(
            part,
            f"p99 delivery latency, N={n}",
            d.p99_ms,
            "ms",
            tornado.delivery.p99_ms,
            tornado.server,
            goal="<= the write_message floor's p99",
            met=None
            if d.p99_ms is None or tornado.delivery.p99_ms is None
            else d.p99_ms <= tornado.delivery.p99_ms,
        ),
        Result(
            part,
            f"lost + out-of-order frames, N={n}",
            float(d.lost + d.out_of_order),
            "frames",
            goal="0",
            met=d.lost + d.out_of_order == 0 and d.frames > 0,
            reason="" if d.frames else "no frame was received",
        ),
        Result(
            part,
            f"raw socket.send floor vs ours, N={n}",
            raw.cpu_us,
            "us",
            ours.cpu_us,
            "sysmon-nb",
        ),
    ]
    if quiet is not None:
        results.append(
            Result(
                part,
                f"server CPU per client per frame without keep-alive pings, N={n}",
                quiet.cpu_us,
                "us",
                ours.cpu_us,
                "sysmon-nb with keep-alive pings (every 30 s)",
            )
        )
    return results


def _cpu_reason(ours: Measurement, tornado: Measurement, quiet: Measurement | None) -> str:
    if ours.cpu_us is None:
        return "no frame measured"
    if ours.cpu_us <= CPU_GOAL_US:
        return ""
    if quiet is not None and quiet.cpu_us is not None and quiet.cpu_us <= CPU_GOAL_US:
        return (
            f"the keep-alive ping and pong (every 30 s per connection) cost "
            f"{ours.cpu_us - quiet.cpu_us:.3g} us/client/frame here; without them "
            f"{quiet.cpu_us:.3g} us. The references send no pings"
        )
    if tornado.cpu_us and ours.cpu_us < tornado.cpu_us:
        return (
            "below tornado's per-message path but above the absolute figure; "
            "on a busy machine every syscall costs more (compare the ratios)"
        )
    return "no cheaper than tornado's write_message here"
