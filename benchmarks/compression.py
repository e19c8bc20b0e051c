"""Part 3: the fan-out with permessage-deflate.

Goal: per-connection CPU and RSS within 1.5x of the uncompressed path in the same run,
by compressing each frame once for every client (``server_no_context_takeover``).
Bytes on the wire per frame, both ways, are reported.
"""

from __future__ import annotations

from .common import Bench, Result

TITLE = "Compression at scale: permessage-deflate"
WITHIN = 1.5


def run(bench: Bench) -> list[Result]:
    n = bench.settings.goal_size
    plain = bench.sysmon(n)
    deflated = bench.sysmon(n, compression=True)
    tornado = bench.floor("tornado", n, compression=True)
    for m in (plain, deflated, tornado):
        print(m.line(), flush=True)
    results = []
    for name, ours, ref, unit in (
        ("server CPU per client per frame", deflated.cpu_us, plain.cpu_us, "us"),
        (
            "server RSS per connection",
            deflated.rss_kib_per_connection,
            plain.rss_kib_per_connection,
            "KiB",
        ),
    ):
        met = None if ours is None or ref is None else ours <= WITHIN * max(ref, 1e-9)
        results.append(
            Result(
                "compression",
                f"{name} with deflate, N={n}",
                ours,
                unit,
                ref,
                "sysmon-nb uncompressed",
                goal=f"<= {WITHIN}x uncompressed",
                met=met,
            )
        )
    results.append(
        Result(
            "compression",
            f"tornado per-connection deflate, CPU per client per frame, N={n}",
            tornado.cpu_us,
            "us",
            deflated.cpu_us,
            "sysmon-nb + deflate",
        )
    )
    results.append(
        Result(
            "compression",
            f"tornado per-connection deflate, RSS per connection, N={n}",
            tornado.rss_kib_per_connection,
            "KiB",
            deflated.rss_kib_per_connection,
            "sysmon-nb + deflate",
        )
    )
    results.append(
        Result(
            "compression",
            "bytes on the wire per status frame, deflated",
            deflated.delivery.wire_per_frame,
            "B",
            plain.delivery.wire_per_frame,
            "uncompressed",
        )
    )
    lost = deflated.delivery.lost + deflated.delivery.out_of_order
    results.append(
        Result(
            "compression",
            f"lost + out-of-order frames with deflate, N={n}",
            float(lost),
            "frames",
            goal="0",
            met=lost == 0 and deflated.delivery.frames > 0,
        )
    )
    return results
