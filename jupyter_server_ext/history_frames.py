"""History frames of any length, built from pieces kept between connects.

A ``history`` frame holds the last N samples, N chosen by each client. Encoding up to
720 samples for each new N (about 16 ms on the event loop, and as much again to deflate
a megabyte) is what this module avoids:

- each kept sample is encoded once per subscription set, as the very bytes of its
  status frame (the broadcaster hands over the ones it already encoded for its
  subscribers), so any N is a join of N pieces;
- for connections with permessage-deflate, the samples are compressed in blocks of
  ``BLOCK`` samples aligned on their publication order, each block once. A frame is the
  concatenation of its blocks' deflate streams, each ended with a sync flush, so a
  decoder reads them as one stream; each block refers only to itself (a fresh
  compressor), so blocks are independent (RFC 1951 allows any number of blocks, and a
  sync-flushed stream is byte-aligned). Only the oldest partial block (up to ``BLOCK``
  samples, with the frame's opening) and the newest one (with its closing, kept until
  the next sample) are compressed per frame.

The frame's text is the same as ``encode(History(samples))``; its compressed bytes
differ from tornado's (blocks instead of one stream), its content does not.

Memory: the pieces of at most ``SETS_KEPT`` subscription sets (least recently used
dropped), each as many as the ring holds; their compressed blocks, for each framing in
use. Everything runs on the server's event loop.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict, deque
from collections.abc import Sequence

from sysmon_nb.protocol import Status, dumps

from .fanout import _FIN, _RSV1, _TEXT, Deflate, Frame, _header

#: Samples per compressed block: the most compressed per frame at each end.
BLOCK = 16
#: Subscription sets whose encoded samples are kept.
SETS_KEPT = 4

_OPEN = b'{"type":"history","samples":['
_CLOSE = b"]}"
_SYNC_TAIL = b"\x00\x00\xff\xff"


def _deflate(data: bytes, deflate: Deflate) -> bytes:
    """``data`` as a raw deflate stream of its own, ended with a sync flush."""
    compressor = zlib.compressobj(deflate.level, zlib.DEFLATED, -deflate.wbits, deflate.mem_level)
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


class _SetPieces:
    """One subscription set's encoded samples (``pieces[i]`` is sample ``start + i`` in
    publication order) and compressed blocks."""

    __slots__ = ("blocks", "metrics", "pieces", "start", "tails")

    def __init__(self, metrics: tuple[str, ...], start: int) -> None:
        self.metrics = metrics
        self.start = start
        self.pieces: deque[bytes] = deque()
        self.blocks: dict[tuple[Deflate, int], bytes] = {}
        self.tails: dict[Deflate, tuple[int, int, bytes]] = {}  # (from, end, bytes)

    @property
    def end(self) -> int:
        return self.start + len(self.pieces)


class HistoryFrame(Frame):
    """A ``history`` frame whose text and plain payload are joined only when a
    connection needs them (a deflate connection on the direct path never does), and
    whose compressed payload is put together from blocks (see the module docstring)."""

    __slots__ = ("_cache", "_first", "_pieces", "_set")

    def __init__(self, cache: HistoryFrames, entry: _SetPieces, first: int) -> None:
        # no Frame.__init__: ``text`` and ``payload`` are built on first use
        self._wire = {}
        self._cache = cache
        self._set = entry
        self._first = first
        self._pieces = list(entry.pieces)[first - entry.start :]

    def __getattr__(self, name: str) -> object:
        if name == "payload":
            self.payload = _OPEN + b",".join(self._pieces) + _CLOSE
            return self.payload
        if name == "text":
            self.text = self.payload.decode()
            return self.text
        raise AttributeError(name)

    def wire(self, deflate: Deflate | None = None) -> bytes:
        data = self._wire.get(deflate)
        if data is None:
            if deflate is None:
                data = _header(_FIN | _TEXT, len(self.payload)) + self.payload
            else:
                body = self._cache.compressed(self._set, self._first, self._pieces, deflate)
                data = _header(_FIN | _RSV1 | _TEXT, len(body)) + body
            self._wire[deflate] = data
        return data

    def __len__(self) -> int:
        commas = max(0, len(self._pieces) - 1)
        return len(_OPEN) + sum(map(len, self._pieces)) + commas + len(_CLOSE)


class HistoryFrames:
    """Builds history frames from kept pieces. ``encoded`` and ``compressed_bytes``
    count the samples encoded and the bytes compressed so far (for tests and the
    benchmark)."""

    def __init__(self, kept: int) -> None:
        self._kept = kept  # the ring's length: no more pieces than samples kept
        self._sets: OrderedDict[tuple[str, ...], _SetPieces] = OrderedDict()
        self.encoded = 0
        self.compressed_bytes = 0

    def note(self, metrics: tuple[str, ...], index: int, payload: bytes) -> None:
        """The broadcaster encoded sample ``index`` for ``metrics`` (its status frame's
        ``payload``): keep it if that set's pieces are kept and this is the next one."""
        entry = self._sets.get(metrics)
        if entry is not None and entry.end == index:
            entry.pieces.append(payload)
            if len(entry.pieces) > self._kept:
                entry.pieces.popleft()
                entry.start += 1

    def frame(
        self, ring: Sequence[Status], end: int, count: int, metrics: tuple[str, ...]
    ) -> HistoryFrame:
        """The frame of the last ``count`` samples of ``ring`` (which holds the samples
        published before index ``end``), restricted to ``metrics``."""
        start = end - len(ring)
        entry = self._sets.get(metrics)
        if entry is None or entry.end < start or entry.end > end:
            entry = _SetPieces(metrics, start)
            self._sets[metrics] = entry
            if len(self._sets) > SETS_KEPT:
                self._sets.popitem(last=False)
        self._sets.move_to_end(metrics)
        while entry.start < start and entry.pieces:  # left the ring
            entry.pieces.popleft()
            entry.start += 1
        entry.start = max(entry.start, start)
        for index in range(entry.end, end):
            sample = ring[index - start].subset(metrics)
            entry.pieces.append(dumps(sample.to_json()).encode())
            self.encoded += 1
        for key in [key for key in entry.blocks if key[1] * BLOCK < entry.start]:
            del entry.blocks[key]
        return HistoryFrame(self, entry, end - min(count, len(entry.pieces)))

    def compressed(
        self, entry: _SetPieces, first: int, pieces: list[bytes], deflate: Deflate
    ) -> bytes:
        """The permessage-deflate payload of the frame of ``pieces`` (samples ``first``
        on): opening and oldest partial block, whole blocks (each compressed once), newest
        partial block and closing (kept until the next sample)."""
        end = first + len(pieces)
        head_end = min(end, (first // BLOCK + 1) * BLOCK)
        tail_from = max(head_end, (end // BLOCK) * BLOCK)

        def piece(index: int) -> bytes:
            return pieces[index - first]

        parts = [self._pack(_OPEN + b",".join(map(piece, range(first, head_end))), deflate)]
        for block in range(head_end // BLOCK, tail_from // BLOCK):
            key = (deflate, block)
            data = entry.blocks.get(key)
            if data is None:
                span = range(block * BLOCK, (block + 1) * BLOCK)
                data = self._pack(b"".join(b"," + piece(i) for i in span), deflate)
                if entry.start <= block * BLOCK and (block + 1) * BLOCK <= entry.end:
                    entry.blocks[key] = data
            parts.append(data)
        kept = entry.tails.get(deflate)
        if kept is not None and kept[:2] == (tail_from, end):
            tail = kept[2]
        else:
            tail = self._pack(
                b"".join(b"," + piece(i) for i in range(tail_from, end)) + _CLOSE, deflate
            )
            if end == entry.end:
                entry.tails[deflate] = (tail_from, end, tail)
        parts.append(tail)
        body = b"".join(parts)
        assert body.endswith(_SYNC_TAIL)
        return body[: -len(_SYNC_TAIL)]  # RFC 7692 7.2.1

    def _pack(self, data: bytes, deflate: Deflate) -> bytes:
        self.compressed_bytes += len(data)
        return _deflate(data, deflate)
