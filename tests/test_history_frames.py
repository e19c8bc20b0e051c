"""History frames of any length: the same text as encoding the samples anew, compressed
from blocks kept between connects, at the cost of two blocks whatever the length; then
real clients (with and without permessage-deflate) asking a real server for many N."""

from __future__ import annotations

import dataclasses
import random
import struct
from collections.abc import Callable
from typing import Any

import pytest
from tornado.websocket import _PerMessageDeflateDecompressor

from jupyter_server_ext.app import SysmonExtension
from jupyter_server_ext.broadcaster import SystemStatusBroadcaster
from jupyter_server_ext.fanout import Deflate
from jupyter_server_ext.history_frames import BLOCK, SETS_KEPT
from sysmon_nb.protocol import History, Status, encode

from .conftest import eventually, recv_type

DEFLATE = Deflate(level=6, mem_level=8, wbits=15)


def sample(seq: int) -> Status:
    """Samples that differ from each other, as real ones do (sizes vary too)."""
    rng = random.Random(seq)
    return Status(
        seq=seq,
        time=1000.0 + seq,
        host="h",
        interval=1.0,
        groups={
            "cpu": {"percent": rng.random() * 100, "per_cpu": [rng.random() for _ in range(8)]},
            "memory": {"total_bytes": 1 << 34, "available_bytes": rng.randrange(1 << 34)},
            "users": {"users": [{"name": f"u{i}"} for i in range(rng.randrange(6))]},
        },
        errors={"gpu": "NVML not found"} if seq % 7 == 0 else {},
    )


def unwire(data: bytes) -> tuple[int, bytes]:
    """A server frame's first byte and payload."""
    length = data[1] & 0x7F
    offset = 2
    if length == 126:
        (length,) = struct.unpack("!H", data[2:4])
        offset = 4
    elif length == 127:
        (length,) = struct.unpack("!Q", data[2:10])
        offset = 10
    payload = data[offset:]
    assert len(payload) == length
    return data[0], payload


def inflate(payload: bytes) -> str:
    """What tornado's own client side makes of a compressed message."""
    decompressor = _PerMessageDeflateDecompressor(
        persistent=False, max_wbits=15, max_message_size=1 << 30
    )
    return decompressor.decompress(payload).decode()


def filled(count: int, kept: int) -> SystemStatusBroadcaster:
    b = SystemStatusBroadcaster(history=kept, buffer_size=3)
    for seq in range(1, count + 1):
        b.publish(sample(seq))
    return b


SETS = [("cpu",), ("cpu", "memory"), ("cpu", "memory", "users")]


@pytest.mark.parametrize("published", [0, 1, BLOCK - 1, BLOCK, 3 * BLOCK + 5, 200])
def test_any_length_is_the_same_text_plain_and_deflated(published: int) -> None:
    b = filled(published, kept=100)
    rng = random.Random(published)
    counts = {0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK, 99, 100, 1000}
    counts |= {rng.randrange(1, 120) for _ in range(20)}
    for count in sorted(counts):
        for metrics in SETS:
            frame = b.history_frame(count, metrics)
            expected = encode(History(samples=tuple(b.history(count, metrics))))
            assert frame.text == expected, (count, metrics)
            assert len(frame) == len(expected.encode())
            first, payload = unwire(frame.wire())
            assert first == 0x81 and payload == expected.encode()
            first, payload = unwire(frame.wire(DEFLATE))
            assert first == 0xC1  # FIN, RSV1 (compressed), text
            assert inflate(payload) == expected, (count, metrics)


def test_a_new_length_costs_two_blocks_not_the_whole_history() -> None:
    b = filled(720, kept=720)
    b.history_frame(720, ("cpu", "memory")).wire(DEFLATE)  # the first connect: all of it
    pieces = b.history_pieces
    encoded, compressed = pieces.encoded, pieces.compressed_bytes
    assert encoded == 720
    largest = max(len(encode(s)) for s in b.history(720, ("cpu", "memory")))
    rng = random.Random(17)
    for _ in range(100):  # 100 connects, each with a new N
        count = rng.randrange(1, 721)
        frame = b.history_frame(count, ("cpu", "memory"))
        assert frame.wire(DEFLATE)
    assert pieces.encoded == encoded  # no sample encoded again
    per_connect = (pieces.compressed_bytes - compressed) / 100
    # at most the oldest partial block (the newest one is kept until the next sample)
    assert per_connect <= (BLOCK + 1) * largest, (per_connect, largest)
    assert per_connect < 0.05 * len(b.history_frame(720, ("cpu", "memory")))


def test_a_subscribed_set_reuses_its_status_frames_and_pieces_stay_bounded() -> None:
    b = filled(30, kept=40)
    b.subscribe(lambda frame: None, ("cpu",))
    b.history_frame(5, ("cpu",))
    encoded = b.history_pieces.encoded
    for seq in range(31, 131):
        b.publish(sample(seq))  # each noted from the status frame its subscriber got
    frame = b.history_frame(40, ("cpu",))
    assert b.history_pieces.encoded == encoded
    assert frame.text == encode(History(samples=tuple(b.history(40, ("cpu",)))))
    kept = b.history_pieces._sets[("cpu",)]
    assert len(kept.pieces) == 40 and kept.end == b.published
    assert all(block * BLOCK >= kept.start for _, block in kept.blocks)
    # a set nobody subscribes to is caught up when asked: the samples since, no more
    b.history_frame(3, ("memory",))
    b.publish(sample(131))
    b.history_frame(3, ("memory",))
    assert b.history_pieces.encoded == encoded + 40 + 1


def test_the_sets_kept_are_bounded() -> None:
    b = filled(20, kept=20)
    groups = ["cpu", "memory", "users"]
    sets = [tuple(g for i, g in enumerate(groups) if mask >> i & 1) for mask in range(1, 8)]
    for metrics in sets:
        b.history_frame(10, metrics)
    assert len(b.history_pieces._sets) == SETS_KEPT


# -- real clients -------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_real_clients_get_exactly_the_samples_they_ask_for(
    sysmon: SysmonExtension, connect: Callable[..., Any]
) -> None:
    await eventually(lambda: sysmon.broadcaster.latest is not None, timeout=30)
    latest = sysmon.broadcaster.latest
    assert latest is not None
    for i in range(1, 45):  # fill the ring (50) without waiting: copies, in order
        sysmon.broadcaster.publish(dataclasses.replace(latest, seq=latest.seq + i))
    rng = random.Random(5)
    counts = [1, BLOCK, BLOCK + 3, *(rng.randrange(1, 50) for _ in range(4)), 1000]
    for compression in ("deflate", None):
        for count in counts:
            query = f"history={count}&metrics=cpu,memory"
            async with connect(query, compression=compression) as ws:
                await recv_type(ws, "hello")
                history = await recv_type(ws, "history")
                samples = history["samples"]
                seqs = [s["seq"] for s in samples]
                assert len(seqs) == min(count, len(sysmon.broadcaster._history))
                ring = [s.seq for s in sysmon.broadcaster._history]
                at = ring.index(seqs[0])  # the ring's newest when it connected, in order
                assert ring[at : at + len(seqs)] == seqs
                assert all(set(s) >= {"cpu", "memory"} and "disk" not in s for s in samples)
                await recv_type(ws, "status")  # and the stream goes on
