"""The sysmon wire contract, protocol 1: message types and pure encode/decode.

Both halves import this module: the server extension to build frames, the kernel-side
client to read them. It does no I/O and imports nothing beyond the standard library
(and :mod:`sysmon_nb.schema`, the fields of the contract).

What a server sends is untrusted: :func:`decode` checks the type of every field this
client knows (:mod:`sysmon_nb.schema`), refuses NaN and infinities, bounds strings and
lists, and drops the fields and groups it does not know, so that only checked data
reaches a renderer. :class:`LogLimiter` is the one rate-limited logger of both halves.

Server -> client frames are :class:`Hello`, :class:`History`, :class:`Status`,
:class:`Subscribed` and :class:`Error`; the one client -> server message is
:class:`Subscribe`. Every frame is a JSON object with a ``type`` field.

Errors::

    ProtocolError          a frame that does not follow the contract
                           (``code`` says which rule; ``message`` is safe to show a peer)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from . import schema

#: The protocol version a server announces in its ``hello``.
PROTOCOL_VERSION = 1

#: Every metric group the protocol knows, in display order.
GROUPS: tuple[str, ...] = (
    "cpu",
    "memory",
    "disk",
    "network",
    "processes",
    "users",
    "container",
    "gpu",
    "jupyter",
    "alerts",
    "counters",
)

#: Groups sent only to whoever names them (their size grows with the machine): a
#: subscription or a REST call that names no group gets every offered group but these.
BY_NAME_ONLY: tuple[str, ...] = ("counters",)

#: Client messages larger than this close the connection with 1009.
MAX_MESSAGE_BYTES = 64 * 1024

#: At most this many characters of a peer's input are quoted back in an error message.
MAX_QUOTED_CHARS = 100
#: At most this many characters of any one argument reach a log line (:class:`LogLimiter`).
MAX_LOGGED_CHARS = 200

# Close codes used by the server.
CLOSE_GOING_AWAY = 1001
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_CREDENTIALS_EXPIRED = 4401
CLOSE_NOT_ADMIN = 4403

# Codes carried by ``error`` frames.
ERR_BAD_JSON = "bad_json"
ERR_BINARY = "binary_frame"
ERR_NOT_OBJECT = "not_an_object"
ERR_UNKNOWN_TYPE = "unknown_type"
ERR_BAD_FIELD = "bad_field"
ERR_UNKNOWN_METRIC = "unknown_metric"

JSON = Any
Group = dict[str, JSON]

_STATUS_HEADER = frozenset(
    ("type", "seq", "time", "host", "interval", "errors", "stale", "skipped_ticks")
)


class ProtocolError(ValueError):
    """A frame or parameter that breaks the contract.

    ``code`` is one of the ``ERR_*`` constants; ``message`` is fit to send to the peer.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def quote(text: str, limit: int = MAX_QUOTED_CHARS) -> str:
    """``text`` (a peer's input, already repr'd or joined) cut to ``limit`` characters,
    marked with an ellipsis when cut: an error never echoes a large input back."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


class LogLimiter:
    """The one way to log a fault that may repeat (a peer's bad input, above all): the
    first line goes out at once, those in the next ``every`` seconds are only counted,
    and the count rides on the next line that goes out. Every string argument is cut to
    :data:`MAX_LOGGED_CHARS`, its control characters shown as ``?``: a peer never
    floods the log or forges lines in it. :meth:`reset` when the fault is over (after
    logging that it is): the next one is logged at once.
    """

    def __init__(
        self,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.every = every
        self.clock = clock
        #: Lines counted, not logged, since the last one that was.
        self.held = 0
        self._logged_at: float | None = None

    def log(self, level: int, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless a line went out less than ``every`` s ago; True if
        it was logged."""
        now = self.clock()
        if self._logged_at is not None and now - self._logged_at < self.every:
            self.held += 1
            return False
        held, self.held, self._logged_at = self.held, 0, now
        cut = tuple(_loggable(a) if isinstance(a, str) else a for a in args)
        if held:
            msg = f"{msg} (and {held} more since the last such line)"
        self.logger.log(level, msg, *cut, stacklevel=2)
        return True

    def reset(self) -> None:
        """Forget the lines held and when the last went out."""
        self.held = 0
        self._logged_at = None


def _loggable(text: str) -> str:
    if not text.isprintable():
        text = "".join(c if c.isprintable() else "?" for c in text[: MAX_LOGGED_CHARS * 2])
    return quote(text, MAX_LOGGED_CHARS)


def dumps(obj: JSON) -> str:
    """Compact, strict JSON: NaN and infinities are refused, not written."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def parse_metrics(
    value: str | Iterable[object], offered: Sequence[str] = GROUPS
) -> tuple[str, ...]:
    """Turn ``"cpu,memory"`` or ``["cpu", "memory"]`` into a tuple of known groups.

    The result keeps the order of ``offered`` and has no duplicates. An empty value
    means every offered group but those in :data:`BY_NAME_ONLY`. Unknown or unoffered
    names raise :class:`ProtocolError`.
    """
    if isinstance(value, str):
        names: list[object] = [part.strip() for part in value.split(",") if part.strip()]
    else:
        names = list(value)
    if not names:
        return tuple(g for g in offered if g not in BY_NAME_ONLY)
    unknown = [n for n in names if not isinstance(n, str) or n not in offered]
    if unknown:
        shown = quote(", ".join(quote(repr(n)) for n in unknown[:5]))
        raise ProtocolError(
            ERR_UNKNOWN_METRIC,
            f"unknown metric group(s) {shown}; this server offers: {', '.join(offered)}",
        )
    wanted = set(names)
    return tuple(g for g in offered if g in wanted)


def parse_history(value: str, limit: int) -> int:
    """Parse the ``history`` query parameter: a non-negative integer, capped at ``limit``."""
    try:
        count = int(value)
    except ValueError:
        raise ProtocolError(ERR_BAD_FIELD, "history must be a non-negative integer") from None
    if count < 0:
        raise ProtocolError(ERR_BAD_FIELD, "history must be a non-negative integer")
    return min(count, limit)


@dataclass(frozen=True)
class Status:
    """One sample of the machine: a group object per metric group that was sampled.

    ``groups`` maps group name to its fields; ``errors`` maps a group name to the reason
    it failed this tick. A group whose collector missed this tick's deadline is in
    ``stale`` with the seconds since its last good reading, and carries that reading in
    ``groups`` (or is absent if it never had one). ``skipped_ticks`` counts the ticks
    the sampler skipped since it started.
    """

    TYPE: ClassVar[str] = "status"

    seq: int
    time: float
    host: str
    interval: float
    groups: Mapping[str, Group] = field(default_factory=dict)
    errors: Mapping[str, str] = field(default_factory=dict)
    stale: Mapping[str, float] = field(default_factory=dict)
    skipped_ticks: int = 0

    def subset(self, metrics: Iterable[str]) -> Status:
        """The same sample restricted to ``metrics`` (groups, errors and staleness)."""
        wanted = set(metrics)
        return Status(
            seq=self.seq,
            time=self.time,
            host=self.host,
            interval=self.interval,
            groups={k: v for k, v in self.groups.items() if k in wanted},
            errors={k: v for k, v in self.errors.items() if k in wanted},
            stale={k: v for k, v in self.stale.items() if k in wanted},
            skipped_ticks=self.skipped_ticks,
        )

    def to_json(self) -> dict[str, JSON]:
        obj: dict[str, JSON] = {
            "type": self.TYPE,
            "seq": self.seq,
            "time": self.time,
            "host": self.host,
            "interval": self.interval,
        }
        obj.update(self.groups)
        obj["errors"] = dict(self.errors)
        obj["stale"] = dict(self.stale)
        obj["skipped_ticks"] = self.skipped_ticks
        return obj

    @classmethod
    def from_json(cls, obj: Mapping[str, JSON], drop: Collection[str] = ()) -> Status:
        """Parse and check a status object (see :mod:`sysmon_nb.schema`): groups this
        client does not know, and unknown fields, are dropped, and so are the groups in
        ``drop`` (unchecked: the caller does not want them); a known field of the wrong
        type raises :class:`ProtocolError`."""
        try:
            groups: dict[str, Group] = {}
            for key, value in obj.items():
                if key in _STATUS_HEADER or key in drop:
                    continue
                group = schema.check_group(key, value)
                if group is not None:
                    groups[key] = group
            return cls(
                seq=schema.check("seq", obj.get("seq"), schema.SEQ),
                time=float(schema.check("time", obj.get("time"), schema.TIME)),
                host=schema.check("host", obj.get("host"), schema.NAME),
                interval=float(schema.check("interval", obj.get("interval"), schema.INTERVAL)),
                groups=groups,
                errors=schema.check_map("errors", obj.get("errors", {}), schema.NAME),
                stale={
                    k: float(v)
                    for k, v in schema.check_map(
                        "stale", obj.get("stale", {}), schema.SECONDS
                    ).items()
                },
                skipped_ticks=schema.check(
                    "skipped_ticks", obj.get("skipped_ticks", 0), schema.SEQ
                ),
            )
        except schema.FieldError as err:
            raise ProtocolError(ERR_BAD_FIELD, f"status: {err}") from None


@dataclass(frozen=True)
class Hello:
    """The first frame on every connection: what the server offers and what was granted."""

    TYPE: ClassVar[str] = "hello"

    server: str
    host: str
    interval: float
    metrics: tuple[str, ...]
    subscribed: tuple[str, ...]
    expires_at: float | None = None
    #: Random for each server process's life: samples are told apart by
    #: (server_id, seq), never by time (a clock may step back).
    server_id: str | None = None
    protocol: int = PROTOCOL_VERSION

    def to_json(self) -> dict[str, JSON]:
        return {
            "type": self.TYPE,
            "protocol": self.protocol,
            "server": self.server,
            "host": self.host,
            "interval": self.interval,
            "metrics": list(self.metrics),
            "subscribed": list(self.subscribed),
            "expires_at": self.expires_at,
            "server_id": self.server_id,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, JSON]) -> Hello:
        try:
            expires_at = schema.check("expires_at", obj.get("expires_at"), schema.EXPIRES)
            return cls(
                protocol=schema.check("protocol", obj.get("protocol"), schema.COUNT),
                server=schema.check("server", obj.get("server"), schema.NAME),
                host=schema.check("host", obj.get("host"), schema.NAME),
                interval=float(schema.check("interval", obj.get("interval"), schema.INTERVAL)),
                metrics=tuple(schema.check("metrics", obj.get("metrics"), schema.NAMES)),
                subscribed=tuple(schema.check("subscribed", obj.get("subscribed"), schema.NAMES)),
                expires_at=None if expires_at is None else float(expires_at),
                server_id=schema.check("server_id", obj.get("server_id"), schema.OPTIONAL_NAME),
            )
        except schema.FieldError as err:
            raise ProtocolError(ERR_BAD_FIELD, f"hello: {err}") from None


@dataclass(frozen=True)
class History:
    """Past samples, oldest first, sent after ``hello`` when the client asked for them."""

    TYPE: ClassVar[str] = "history"

    samples: tuple[Status, ...]

    def to_json(self) -> dict[str, JSON]:
        return {"type": self.TYPE, "samples": [s.to_json() for s in self.samples]}

    @classmethod
    def from_json(cls, obj: Mapping[str, JSON], drop: Collection[str] = ()) -> History:
        samples = obj.get("samples")
        if (
            type(samples) is not list
            or len(samples) > schema.MAX_ITEMS
            or not all(type(s) is dict for s in samples)
        ):
            raise ProtocolError(
                ERR_BAD_FIELD,
                f"samples must be a list of at most {schema.MAX_ITEMS} status objects",
            )
        return cls(samples=tuple(Status.from_json(s, drop) for s in samples))


@dataclass(frozen=True)
class Subscribed:
    """The server's answer to :class:`Subscribe`: the groups now streamed."""

    TYPE: ClassVar[str] = "subscribed"

    metrics: tuple[str, ...]

    def to_json(self) -> dict[str, JSON]:
        return {"type": self.TYPE, "metrics": list(self.metrics)}

    @classmethod
    def from_json(cls, obj: Mapping[str, JSON]) -> Subscribed:
        try:
            return cls(metrics=tuple(schema.check("metrics", obj.get("metrics"), schema.NAMES)))
        except schema.FieldError as err:
            raise ProtocolError(ERR_BAD_FIELD, f"subscribed: {err}") from None


@dataclass(frozen=True)
class Error:
    """The answer to a client message the server ignored."""

    TYPE: ClassVar[str] = "error"

    code: str
    message: str

    def to_json(self) -> dict[str, JSON]:
        return {"type": self.TYPE, "code": self.code, "message": self.message}

    @classmethod
    def from_json(cls, obj: Mapping[str, JSON]) -> Error:
        try:
            return cls(
                code=schema.check("code", obj.get("code"), schema.NAME),
                message=schema.check("message", obj.get("message"), schema.NAME),
            )
        except schema.FieldError as err:
            raise ProtocolError(ERR_BAD_FIELD, f"error: {err}") from None


@dataclass(frozen=True)
class Subscribe:
    """Client -> server: change the groups streamed on this connection."""

    TYPE: ClassVar[str] = "subscribe"

    metrics: tuple[str, ...]

    def to_json(self) -> dict[str, JSON]:
        return {"type": self.TYPE, "metrics": list(self.metrics)}


ServerMessage = Hello | History | Status | Subscribed | Error
Message = ServerMessage | Subscribe

_SERVER_TYPES: dict[str, Any] = {
    cls.TYPE: cls for cls in (Hello, History, Status, Subscribed, Error)
}


def encode(message: Message) -> str:
    """Serialize any message to the text of one frame."""
    return dumps(message.to_json())


def _refuse_constant(name: str) -> Any:
    """``NaN``, ``Infinity`` and ``-Infinity`` are not JSON, though Python's parser takes
    them: a frame holding one is refused, wherever it is."""
    raise ValueError(f"{name} is not JSON")


def _load_object(text: str | bytes) -> dict[str, JSON]:
    if isinstance(text, bytes):
        raise ProtocolError(
            ERR_BINARY, "binary frames are not part of the protocol; send JSON text"
        )
    try:
        obj = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise ProtocolError(ERR_BAD_JSON, "frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ERR_NOT_OBJECT, "frame must be a JSON object with a 'type' field")
    return obj


def decode(text: str | bytes, drop: Collection[str] = ()) -> ServerMessage:
    """Parse a server frame (what a client receives). Raises :class:`ProtocolError`.

    Groups in ``drop`` (those a client excluded: a server should not send them) are
    dropped from samples without being checked."""
    obj = _load_object(text)
    kind = obj.get("type")
    cls = _SERVER_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(ERR_UNKNOWN_TYPE, f"unknown frame type {quote(repr(kind))}")
    if cls is Status or cls is History:
        return cls.from_json(obj, drop)
    result: ServerMessage = cls.from_json(obj)
    return result


def decode_client(text: str | bytes, offered: Sequence[str] = GROUPS) -> Subscribe:
    """Parse a client message (what the server receives). Raises :class:`ProtocolError`.

    ``offered`` is the set of groups this server streams; naming any other is refused.
    """
    obj = _load_object(text)
    kind = obj.get("type")
    if kind != Subscribe.TYPE:
        raise ProtocolError(
            ERR_UNKNOWN_TYPE,
            f"unknown message type {quote(repr(kind))}; the only one accepted is 'subscribe'",
        )
    extra = set(obj) - {"type", "metrics"}
    if extra:
        shown = quote(", ".join(quote(repr(name)) for name in sorted(extra)[:5]))
        raise ProtocolError(ERR_BAD_FIELD, f"unexpected field(s): {shown}")
    metrics = obj.get("metrics")
    if not isinstance(metrics, list):
        raise ProtocolError(ERR_BAD_FIELD, "'metrics' must be a list of group names")
    return Subscribe(metrics=parse_metrics(metrics, offered))
