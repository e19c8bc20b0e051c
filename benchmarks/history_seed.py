"""A jupyter_server extension for the ``history`` benchmark only: it fills sysmon's
history ring with ``SYSMON_BENCH_HISTORY`` samples as soon as the first real one is
taken (copies of it with their own ``seq`` and ``time``: real sizes, without waiting an
hour), and with ``SYSMON_BENCH_HISTORY_CACHE=0`` turns the history-frame cache off (the
reference: every connect encodes its history anew)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Any

from tornado.ioloop import IOLoop


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "benchmarks.history_seed"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    IOLoop.current().add_callback(_seed, serverapp)


async def _seed(serverapp: Any) -> None:
    count = int(os.environ.get("SYSMON_BENCH_HISTORY", "0"))
    (sysmon,) = serverapp.extension_manager.extension_apps["jupyter_server_ext"]
    broadcaster = sysmon.broadcaster
    if os.environ.get("SYSMON_BENCH_HISTORY_CACHE", "1") == "0":
        broadcaster.history_frames_kept = 0
    for _ in range(1200):  # bounded: the first sample comes within a few seconds
        if broadcaster.latest is not None:
            break
        await asyncio.sleep(0.05)
    latest = broadcaster.latest
    if latest is None or count <= 0:
        return
    for i in range(count):
        broadcaster.publish(
            dataclasses.replace(latest, seq=latest.seq + 1 + i, time=latest.time + i * 1e-3)
        )
