"""A real server process whose wall clock steps back 20 s, then forward 1 h, mid-stream
(tests/clock_server.py), with the link dropped after each step: the client receives
every sample exactly once, catch-up included, and the dashboard draws every one."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from sysmon_nb.client import StatusClient
from sysmon_nb.dashboard import SysmonDashboard
from sysmon_nb.protocol import Hello, History, Status

from .conftest import eventually
from .servers import ROOT, TOKEN, JupyterProcess, isolated_env
from .test_client import Relay

INTERVAL_S = 0.3


def set_offset(path: Path, seconds: float) -> None:
    """Step the server's clock: it reads this file every 50 ms."""
    scratch = path.with_suffix(".new")
    scratch.write_text(str(seconds))
    os.replace(scratch, path)


@pytest.mark.timeout(180)
async def test_clock_steps_lose_no_sample_and_catch_up_shows_none_twice(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    offset = tmp_path / "clock-offset"
    set_offset(offset, 0.0)
    env = isolated_env(tmp_path, PYTHONPATH=str(ROOT), SYSMON_TEST_CLOCK_OFFSET=str(offset))
    server = await loop.run_in_executor(
        None,
        lambda: JupyterProcess(tmp_path, app="tests.clock_server", env=env, interval=INTERVAL_S),
    )
    relay = Relay()
    dashboard = SysmonDashboard(metrics=["cpu"], window=600)
    samples: list[Status] = []
    hellos: list[Hello] = []
    histories: list[History] = []
    client = StatusClient(
        f"http://127.0.0.1:{relay.port}/", TOKEN, metrics=["cpu"], backoff=lambda n: 0.1
    )

    async def read() -> None:
        async for message in client.messages():
            dashboard.update(message)
            if isinstance(message, Hello):
                hellos.append(message)
            elif isinstance(message, History):
                histories.append(message)
                samples.extend(message.samples)
            elif isinstance(message, Status):
                samples.append(message)

    def server_seq() -> int:
        code, body = server.get("sysmon/api/status")
        assert code == 200
        seq = json.loads(body)["seq"]
        assert isinstance(seq, int)
        return seq

    async def more(count: int, condition: Callable[[], bool] = lambda: True) -> None:
        """Until ``count`` more samples arrived after ``condition`` held."""
        await eventually(condition, 30)
        start = len(samples)
        await eventually(lambda: len(samples) >= start + count, 30)

    async def drop_link_while_the_server_samples() -> None:
        """Cut the link; reopen it once the server took three samples the client missed."""
        connections = client.connections
        await relay.close()
        await eventually(lambda: client.state.phase != "connected", 10)
        missed_from = samples[-1].seq
        for _ in range(200):
            if await loop.run_in_executor(None, server_seq) >= missed_from + 3:
                break
            await asyncio.sleep(INTERVAL_S / 3)
        await relay.open(server.port)
        await eventually(lambda: client.connections == connections + 1, 30)

    reader: asyncio.Future[None] | None = None
    try:
        await relay.open(server.port)
        reader = asyncio.ensure_future(read())
        await more(3)
        before_back = samples[-1].time

        set_offset(offset, -20.0)
        await more(3, lambda: samples[-1].time < before_back - 10)
        await drop_link_while_the_server_samples()
        await more(3)
        before_forward = samples[-1].time

        set_offset(offset, 3600.0)
        await more(3, lambda: samples[-1].time > before_forward + 3000)
        await drop_link_while_the_server_samples()
        await more(3)
    finally:
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        await relay.close()
        await loop.run_in_executor(None, server.stop)

    seqs = [s.seq for s in samples]
    # Every sample of the run, in order, once: none lost to a step, none shown twice.
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert len(hellos) == 3 and len({h.server_id for h in hellos}) == 1
    # Each catch-up brought what was missed while the link was down, and overlapped what
    # had been seen (asked one spare at least): the overlap was dropped.
    assert [len(h.samples) >= 3 for h in histories] == [True, True]
    assert client.repeats >= 2
    # The dashboard drew every sample, in arrival order, on an axis that never goes back;
    # the two steps were seen for what they are.
    assert [s.seq for s in dashboard.samples] == seqs
    xs = list(dashboard.x_times)
    assert all(b > a for a, b in itertools.pairwise(xs))
    assert xs[-1] == samples[-1].time  # the axis reads the server's clock as it is now
    assert len(dashboard.clock_steps) == 2
    back, forward = dashboard.clock_steps  # the offset went 0 -> -20 s -> +3600 s
    assert -21.0 < back < -19.0 and 3619.0 < forward < 3621.0
    assert dashboard.charts["cpu"].lines.x.shape == (len(seqs),)
