"""Fan-out, history and slow subscribers, with recording senders (no server)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from jupyter_server_ext.broadcaster import SystemStatusBroadcaster
from sysmon_nb.protocol import Status


def sample(seq: int) -> Status:
    return Status(
        seq=seq,
        time=1000.0 + seq,
        host="h",
        interval=1.0,
        groups={"cpu": {"percent": float(seq)}, "memory": {"total_bytes": seq}},
    )


class Recorder:
    """A connection that takes every frame at once."""

    def __init__(self) -> None:
        self.frames: list[str] = []

    def __call__(self, frame: str) -> None:
        self.frames.append(frame)

    @property
    def seqs(self) -> list[int]:
        return [json.loads(f)["seq"] for f in self.frames]


class Stalled:
    """A connection whose writes never complete until ``release`` (a client not reading)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.frames: list[str] = []
        self.futures: list[asyncio.Future[None]] = []

    def __call__(self, frame: str) -> asyncio.Future[None]:
        self.frames.append(frame)
        future = self.loop.create_future()
        self.futures.append(future)
        return future

    def release(self) -> None:
        for future in self.futures:
            if not future.done():
                future.set_result(None)


def test_same_subscription_shares_one_encoded_frame() -> None:
    b = SystemStatusBroadcaster(history=10, buffer_size=4)
    clients = [Recorder() for _ in range(3)]
    for c in clients:
        b.subscribe(c, ("cpu",))
    other = Recorder()
    b.subscribe(other, ("memory",))
    b.publish(sample(1))
    assert all(len(c.frames) == 1 for c in clients)
    # the very same string object: encoded once for the set, not once per client
    assert clients[0].frames[0] is clients[1].frames[0] is clients[2].frames[0]
    assert set(json.loads(clients[0].frames[0])) >= {"cpu"}
    assert "memory" not in json.loads(clients[0].frames[0])
    assert "cpu" not in json.loads(other.frames[0])


def test_history_is_bounded_oldest_first_and_subset() -> None:
    b = SystemStatusBroadcaster(history=5, buffer_size=4)
    for seq in range(1, 21):
        b.publish(sample(seq))
    past = b.history(3, ("memory",))
    assert [s.seq for s in past] == [18, 19, 20]
    assert all(set(s.groups) == {"memory"} for s in past)
    assert [s.seq for s in b.history(100, ("cpu",))] == [16, 17, 18, 19, 20]
    assert b.history(0, ("cpu",)) == []
    assert b.latest is not None and b.latest.seq == 20


def test_history_zero_keeps_nothing_but_latest() -> None:
    b = SystemStatusBroadcaster(history=0, buffer_size=4)
    b.publish(sample(1))
    assert b.history(10, ("cpu",)) == []
    assert b.latest is not None


def test_unsubscribe_and_change() -> None:
    b = SystemStatusBroadcaster(history=0, buffer_size=4)
    rec = Recorder()
    sub = b.subscribe(rec, ("cpu",))
    b.publish(sample(1))
    b.change(sub, ("memory",))
    b.publish(sample(2))
    assert "memory" in json.loads(rec.frames[-1]) and "cpu" not in json.loads(rec.frames[-1])
    b.unsubscribe(sub)
    b.unsubscribe(sub)  # idempotent
    b.publish(sample(3))
    assert rec.seqs == [1, 2]
    assert len(b) == 0


async def test_a_stalled_client_delays_nobody_and_holds_a_bounded_buffer() -> None:
    loop = asyncio.get_running_loop()
    b = SystemStatusBroadcaster(history=0, buffer_size=3)
    stalled = Stalled(loop)
    slow = b.subscribe(stalled, ("cpu",))
    fast = Recorder()
    b.subscribe(fast, ("cpu",))
    for seq in range(1, 101):
        b.publish(sample(seq))
    assert fast.seqs == list(range(1, 101))  # every frame, in order, none lost
    assert len(stalled.frames) == 1  # one write in flight, never acknowledged
    assert slow.pending == 3  # bounded: 3 queued, whatever the backlog
    assert slow.lagged == 96  # 100 published - 1 in flight - 3 queued
    # the client resumes: it gets the newest queued frames, in order
    for _ in range(10):
        stalled.release()
        await asyncio.sleep(0)
    assert [json.loads(f)["seq"] for f in stalled.frames] == [1, 98, 99, 100]
    assert slow.pending == 0


async def test_failed_write_drops_the_subscriber() -> None:
    loop = asyncio.get_running_loop()
    b = SystemStatusBroadcaster(history=0, buffer_size=3)
    stalled = Stalled(loop)
    sub = b.subscribe(stalled, ("cpu",))
    b.publish(sample(1))
    stalled.futures[0].set_exception(ConnectionResetError("gone"))
    await asyncio.sleep(0)
    assert sub.closed
    b.publish(sample(2))
    assert len(b) == 0
    assert len(stalled.frames) == 1


def test_send_that_raises_drops_only_that_subscriber() -> None:
    b = SystemStatusBroadcaster(history=0, buffer_size=3)

    def broken(frame: str) -> Any:
        raise RuntimeError("socket closed")

    b.subscribe(broken, ("cpu",))
    ok = Recorder()
    b.subscribe(ok, ("cpu",))
    b.publish(sample(1))
    b.publish(sample(2))
    assert ok.seqs == [1, 2]
    assert len(b) == 1
