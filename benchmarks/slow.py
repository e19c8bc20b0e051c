"""Part 4: slow consumers. ``slow_clients`` clients, of which ``slow_stalled`` stop
reading for ``stall_seconds`` (tiny socket buffers, so the server feels it at once).

Goal: the others lose nothing and keep their p99 (compared with the same clients
before the stall); the server's RSS grows by < 2 MiB; the stalled ones then catch up
on the newest data (or are closed with a clear code).
"""

from __future__ import annotations

import time

from .common import Bench, ClientGroup, Result, connections, delivery

TITLE = "Slow consumers: some clients stop reading"
RSS_GOAL_MIB = 2.0


def run(bench: Bench) -> list[Result]:
    s = bench.settings
    server = bench.sysmon_server()
    try:
        group = ClientGroup(
            server.ws_url, s.slow_clients, interval=s.interval, stalled=s.slow_stalled
        )
        assert group.stallable is not None
        try:
            time.sleep(2 * s.interval)
            before_start = time.time()
            time.sleep(max(3, s.frames // 3) * s.interval)
            group.command(group.stallable, {"cmd": "stall"})
            stall_start = time.time()
            rss_start = server.rss()
            time.sleep(s.stall_seconds)
            rss_end = server.rss()
            stall_end = time.time()
            group.command(group.stallable, {"cmd": "resume"})
            time.sleep(s.late_after + 2 * s.interval)
            reports = group.stop()
        finally:
            group.close()
    finally:
        server.stop()
    others = connections(reports, "normal")
    stalled = connections(reports, "stalled")
    before = delivery(others, before_start, stall_start)
    during = delivery(others, stall_start, stall_end)
    newest = max((f[0] for c in others for f in c["frames"] if f[1] < stall_end), default=0)
    closed = [c["close_code"] for c in stalled if c["close_code"] is not None]
    caught_up = sum(
        1
        for c in stalled
        if c["close_code"] is None and c["frames"] and c["frames"][-1][0] >= newest
    )
    dropped = sum(
        len({f[0] for c2 in others for f in c2["frames"] if stall_start <= f[1] < stall_end})
        - len({f[0] for f in c["frames"] if stall_start <= f[1] < stall_end})
        for c in stalled
    )
    growth_mib = (rss_end - rss_start) / 2**20
    print(
        f"  {len(others)} reading clients: before the stall p99 {before.p99_ms:.4g} ms, "
        f"during p99 {during.p99_ms:.4g} ms, lost {during.lost}, "
        f"out-of-order {during.out_of_order}; {len(stalled)} stalled for "
        f"{s.stall_seconds:g} s: {dropped} frames dropped for them (newest kept), "
        f"{caught_up} caught up, closed {closed or 'none'}; RSS growth {growth_mib:.3f} MiB",
        flush=True,
    )
    return [
        Result(
            "slow",
            "lost + out-of-order frames of the reading clients during the stall",
            float(during.lost + during.out_of_order),
            "frames",
            goal="0",
            met=during.lost + during.out_of_order == 0 and during.frames > 0,
        ),
        Result(
            "slow",
            "p99 of the reading clients during the stall",
            during.p99_ms,
            "ms",
            before.p99_ms,
            "same clients before the stall",
            goal="unchanged: <= 1.5x the p99 before the stall (or within 5 ms of it)",
            met=None
            if during.p99_ms is None or before.p99_ms is None
            else during.p99_ms <= max(1.5 * before.p99_ms, before.p99_ms + 5.0),
        ),
        Result(
            "slow",
            "server RSS growth during the stall",
            growth_mib,
            "MiB",
            goal=f"< {RSS_GOAL_MIB:g} MiB",
            met=growth_mib < RSS_GOAL_MIB,
        ),
        Result(
            "slow",
            "stalled clients that caught up on the newest sample (or were closed)",
            float(caught_up + len(closed)),
            "clients",
            float(len(stalled)),
            "stalled clients",
            goal="all",
            met=caught_up + len(closed) == len(stalled) and bool(stalled),
        ),
    ]
