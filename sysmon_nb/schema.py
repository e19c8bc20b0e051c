"""The fields of protocol 1, type by type: what :func:`sysmon_nb.protocol.decode` checks.

Everything a server sends is untrusted input to the client (a user's own server in the
fleet view, or any ``--url``). :func:`check_group` takes one group of a status frame as
``json.loads`` gave it and returns it with only the fields this client knows, each of
its contract's type:

- numbers are finite JSON numbers (never a bool) of magnitude at most
  :data:`MAX_MAGNITUDE`; a rate or reading that cannot be known yet may be ``null``;
- counts (``count``, ``pid``, ``kernels``, ...) are integers;
- times (unix seconds) lie between 0 and :data:`MAX_UNIX_TIME`;
- strings are at most :data:`MAX_TEXT_CHARS` characters, lists at most
  :data:`MAX_ITEMS` items, and lists of objects hold objects whose fields are checked
  the same way.

A field or group this client does not know (a newer server's: the protocol is additive)
is dropped here, whatever it holds, so it never reaches a renderer. A known field of the
wrong type raises :class:`FieldError`, which ``decode`` turns into a
:class:`~sysmon_nb.protocol.ProtocolError`: the whole frame is dropped, never a part of
it. Every field is optional (older servers send fewer).

The checks are written for speed (one pass, no copy unless a field was dropped): a
dashboard update decodes one frame, a fleet view hundreds per interval.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Longest string accepted in any field (Linux's PATH_MAX: a notebook path fits).
MAX_TEXT_CHARS = 4096
#: Most items in any list (per-core CPU readings, mounts, kernels, ...) or map.
MAX_ITEMS = 8192
#: Largest magnitude of any number (bytes of any machine fit; 64-bit integers do too).
MAX_MAGNITUDE = float(2**63)
#: Latest unix time accepted (year 5138): a time far beyond breaks date axes and clocks.
MAX_UNIX_TIME = 1e11
#: Shortest and longest sampling interval accepted (s).
MIN_INTERVAL = 1e-6
MAX_INTERVAL = 1e9

# A rule is (kind, nullable, detail, low, high, wanted): detail is the rule of a list's
# items or the fields of an object; numbers lie in [low, high]; ``wanted`` says what the
# field must be, for the error message.
NUMBER, INTEGER, TEXT, BOOL, LIST, OBJECT = range(6)  # ``kind <= INTEGER``: numeric

Rule = tuple[int, bool, Any, float, float, str]
Fields = Mapping[str, Rule]


class FieldError(ValueError):
    """A known field whose value breaks its rule; ``where`` is its path in the frame,
    ``got`` the JSON type found (never the value: it may be large or hostile)."""

    def __init__(self, where: str, wanted: str, got: str) -> None:
        self.where = where
        self.wanted = wanted
        self.got = got
        super().__init__(f"{where} must be {wanted}, not {got}")

    def inside(self, outer: str) -> FieldError:
        """The same error, one level further out."""
        if not self.where:
            return FieldError(outer, self.wanted, self.got)
        sep = "" if self.where.startswith("[") else "."
        return FieldError(f"{outer}{sep}{self.where}", self.wanted, self.got)


def type_name(value: object) -> str:
    """What ``value`` is, in JSON's words, for an error message (a short number is
    shown; a string or list only by its type and length)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float):
        return f"the number {value:g}"
    if isinstance(value, int):
        if abs(value) >= 10**20:
            return f"an integer of {value.bit_length()} bits"
        return f"the integer {value}"
    if isinstance(value, (str, list)):
        return f"{_JSON_NAMES[type(value)]} of length {len(value)}"
    return _JSON_NAMES.get(type(value), type(value).__name__)


_JSON_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               list: "a list", dict: "an object"}  # fmt: skip


def _rule(kind: int, null: bool, wanted: str, detail: Any = None,
          low: float = -MAX_MAGNITUDE, high: float = MAX_MAGNITUDE) -> Rule:  # fmt: skip
    return (kind, null, detail, low, high, wanted + (" or null" if null else ""))


def num(*, null: bool = True) -> Rule:
    """A finite number (a reading, bytes, a rate); ``null`` where it may be unknown."""
    return _rule(NUMBER, null, "a finite number")


def count(*, null: bool = True) -> Rule:
    """An integer (a count, a pid, an index)."""
    return _rule(INTEGER, null, "an integer")


def natural(*, null: bool = True) -> Rule:
    """An integer >= 0 (a sequence number, a count of ticks)."""
    return _rule(INTEGER, null, "a non-negative integer", low=0)


def between(low: float, high: float, *, null: bool = True) -> Rule:
    """A number in ``[low, high]``."""
    return _rule(NUMBER, null, f"a number from {low:g} to {high:g}", low=low, high=high)


def unix_time(*, null: bool = True) -> Rule:
    """Unix seconds, from 0 to :data:`MAX_UNIX_TIME`."""
    return between(0.0, MAX_UNIX_TIME, null=null)


def text(*, null: bool = True) -> Rule:
    """A string of at most :data:`MAX_TEXT_CHARS` characters."""
    return _rule(TEXT, null, f"a string of at most {MAX_TEXT_CHARS} characters")


def flag(*, null: bool = True) -> Rule:
    """``true`` or ``false``."""
    return _rule(BOOL, null, "true or false")


def list_of(item: Rule, *, null: bool = True) -> Rule:
    """A list of at most :data:`MAX_ITEMS` items, each following ``item``."""
    return _rule(LIST, null, f"a list of at most {MAX_ITEMS} items", item)


def fields(spec: Fields, *, null: bool = True) -> Rule:
    """An object whose fields named in ``spec`` follow their rules (others dropped)."""
    return _rule(OBJECT, null, "an object", dict(spec))


# -- the contract (docs/protocol.md and the README's wire contract) ----------------------

_PROCESS = fields({"pid": count(), "name": text(), "user": text(),
                   "cpu_percent": num(), "rss_bytes": num()})  # fmt: skip
_MOUNT = fields(
    {"path": text(), "fstype": text(), "total_bytes": num(), "used_bytes": num(),
     "free_bytes": num(), "percent": num(), "home": flag(), "stuck": flag()}
)  # fmt: skip
_USER_SUM = {
    "processes": count(),
    "cpu_percent": num(),
    "rss_bytes": num(),
    "cpu_seconds_total": num(),
}
_KERNEL = fields(
    {"id": text(), "name": text(), "pid": count(), "path": text(), "execution_state": text(),
     "last_activity": unix_time(), "connections": count(), "cpu_percent": num(),
     "rss_bytes": num(), "computing": flag(), "cpu_seconds_total": num()}
)  # fmt: skip
_GPU_PROCESS = fields({"pid": count(), "user": text(), "used_memory_bytes": num(),
                       "kernel_id": text()})  # fmt: skip
_MIG = fields(
    {"index": count(), "uuid": text(), "name": text(), "profile": text(),
     "gpu_instance_id": count(), "compute_instance_id": count(),
     "memory_used_bytes": num(), "memory_total_bytes": num()}
)  # fmt: skip
_DEVICE = fields(
    {"index": count(), "name": text(), "uuid": text(), "utilization_percent": num(),
     "memory_used_bytes": num(), "memory_total_bytes": num(), "temperature_c": num(),
     "power_w": num(), "power_limit_w": num(), "processes": list_of(_GPU_PROCESS),
     "mig": list_of(_MIG)}
)  # fmt: skip
_ALERT = fields({"name": text(), "group": text(), "value": num(), "threshold": num(),
                 "since": unix_time()})  # fmt: skip
_EVENT = fields(
    {"time": unix_time(), "kind": text(), "message": text(), "kernel_id": text(),
     "path": text(), "pid": count(), "exit_code": count(), "name": text(), "group": text()}
)  # fmt: skip
#: ``counters``: each CPU's seconds per mode, each interface's counts (cumulative).
_CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_CPU_TIMES = fields({"cpu": count(), **{mode: num() for mode in _CPU_MODES}})
_INTERFACE = fields({"device": text(), "receive_bytes": num(), "transmit_bytes": num(),
                     "receive_packets": num(), "transmit_packets": num()})  # fmt: skip
_ORPHAN = fields({"pid": count(), "user": text(), "rss_bytes": num(), "cpu_percent": num(),
                  "gpu_memory_bytes": num(), "kernel_id": text(), "path": text()})  # fmt: skip

#: Every group this client knows, and its fields.
GROUP_FIELDS: dict[str, Fields] = {
    "cpu": {"percent": num(), "per_cpu": list_of(num()), "count": count(), "load_1m": num(),
            "load_5m": num(), "load_15m": num(), "pressure": num()},
    "memory": {"total_bytes": num(), "available_bytes": num(), "used_bytes": num(),
               "percent": num(), "swap_total_bytes": num(), "swap_used_bytes": num(),
               "swap_percent": num(), "pressure": num()},
    "disk": {"read_bytes_per_s": num(), "write_bytes_per_s": num(), "read_ops_per_s": num(),
             "write_ops_per_s": num(), "mounts": list_of(_MOUNT), "read_bytes_total": num(),
             "write_bytes_total": num(), "read_ops_total": num(), "write_ops_total": num()},
    "network": {"recv_bytes_per_s": num(), "sent_bytes_per_s": num(),
                "recv_packets_per_s": num(), "sent_packets_per_s": num()},
    "processes": {"count": count(), "top_cpu": list_of(_PROCESS),
                  "top_memory": list_of(_PROCESS)},
    "users": {"users": list_of(fields({"name": text(), **_USER_SUM})), "count": count(),
              "others": fields({"users": count(), **_USER_SUM})},
    "container": {"cgroup": count(), "memory_limit_bytes": num(), "memory_used_bytes": num(),
                  "cpu_limit_cores": num(), "cpu_usage_cores": num(),
                  "cpu_throttled_percent": num(), "oom_kills": count(),
                  "memory_pressure": num(), "cpu_pressure": num(), "io_pressure": num(),
                  "cpu_usage_seconds_total": num(), "cpu_periods_total": num(),
                  "cpu_throttled_periods_total": num(), "cpu_throttled_seconds_total": num()},
    "gpu": {"devices": list_of(_DEVICE)},
    "jupyter": {"kernels": count(), "terminals": count(), "sessions": count(),
                "kernel_usage": list_of(_KERNEL),
                "server_usage": fields({"cpu_percent": num(), "rss_bytes": num(),
                                        "gpu_memory_bytes": num()})},
    "alerts": {"active": list_of(_ALERT), "events": list_of(_EVENT)},
    "orphans": {"processes": list_of(_ORPHAN), "rss_bytes": num()},
    "counters": {"cpu": list_of(_CPU_TIMES), "network": list_of(_INTERFACE),
                 "network_devices_left_out": count()},
}  # fmt: skip


#: The fields of the frames themselves (``hello``, ``status``, ...).
SEQ = natural(null=False)
COUNT = count(null=False)
TIME = unix_time(null=False)
EXPIRES = unix_time()
INTERVAL = between(MIN_INTERVAL, MAX_INTERVAL, null=False)
SECONDS = between(0.0, MAX_MAGNITUDE, null=False)
NAME = text(null=False)
OPTIONAL_NAME = text()
NAMES = list_of(NAME, null=False)


# -- the checks ---------------------------------------------------------------------------


def check_group(name: str, value: object) -> dict[str, Any] | None:
    """``value`` (a status frame's ``name``) with only its known, well-typed fields;
    None for a group this client does not know. Raises :class:`FieldError`."""
    spec = GROUP_FIELDS.get(name)
    if spec is None:
        return None
    if not isinstance(value, dict):
        raise FieldError(name, "an object", type_name(value))
    try:
        return _object(value, spec)
    except FieldError as err:
        raise err.inside(name) from None


def check(where: str, value: object, rule: Rule) -> Any:
    """``value`` if it follows ``rule`` (objects in it cut to their known fields);
    raises :class:`FieldError` naming ``where`` otherwise."""
    try:
        return _value(value, rule)
    except FieldError as err:
        raise err.inside(where) from None


def check_map(where: str, value: object, rule: Rule) -> dict[str, Any]:
    """A ``{name: value}`` object (``errors``, ``stale``): at most :data:`MAX_ITEMS`
    short names, each value following ``rule``."""
    if not isinstance(value, dict) or len(value) > MAX_ITEMS:
        raise FieldError(where, f"an object of at most {MAX_ITEMS} fields", type_name(value))
    for key, item in value.items():
        if len(key) > MAX_TEXT_CHARS:
            raise FieldError(
                where, f"keyed by names of at most {MAX_TEXT_CHARS} characters", "longer"
            )
        check(where, item, rule)
    return value


def _value(value: Any, rule: Rule) -> Any:
    """``value`` checked against ``rule`` (a copy where unknown fields were dropped)."""
    t = type(value)
    kind = rule[0]
    if t is float:
        if kind == NUMBER and rule[3] <= value <= rule[4]:
            return value
    elif t is int:
        if kind <= INTEGER and rule[3] <= value <= rule[4]:
            return value
    elif t is str:
        if kind == TEXT and len(value) <= MAX_TEXT_CHARS:
            return value
    elif value is None:
        if rule[1]:
            return value
    elif t is bool:
        if kind == BOOL:
            return value
    elif t is list:
        if kind == LIST and len(value) <= MAX_ITEMS:
            return _list(value, rule[2])
    elif t is dict and kind == OBJECT:
        return _object(value, rule[2])
    raise FieldError("", rule[5], type_name(value))


def _list(items: list[Any], rule: Rule) -> list[Any]:
    changed: dict[int, Any] | None = None
    kind = rule[0]
    if kind == OBJECT:  # rows (processes, kernels, mounts, ...): straight to their fields
        spec = rule[2]
        for index, item in enumerate(items):
            if type(item) is dict:
                try:
                    checked = _object(item, spec)
                except FieldError as err:
                    raise err.inside(f"[{index}]") from None
                if checked is not item:
                    if changed is None:
                        changed = {}
                    changed[index] = checked
            elif item is not None or not rule[1]:
                raise FieldError(f"[{index}]", rule[5], type_name(item))
    else:
        for index, item in enumerate(items):
            t = type(item)
            # Numbers (per-core readings: the longest lists) without a call per item.
            if t is float:
                if kind == NUMBER and rule[3] <= item <= rule[4]:
                    continue
            elif t is int:
                if kind <= INTEGER and rule[3] <= item <= rule[4]:
                    continue
            elif item is None and rule[1]:
                continue
            try:
                checked = _value(item, rule)
            except FieldError as err:
                raise err.inside(f"[{index}]") from None
            if checked is not item:
                if changed is None:
                    changed = {}
                changed[index] = checked
    if changed is None:
        return items
    return [changed.get(i, item) for i, item in enumerate(items)]


def _object(obj: dict[str, Any], spec: Fields) -> dict[str, Any]:
    """``obj`` itself when every field is known and fits; a copy without the unknown
    ones (and with checked copies of nested objects) otherwise."""
    unknown = False
    changed: dict[str, Any] | None = None
    for key, value in obj.items():
        rule = spec.get(key)
        if rule is None:
            unknown = True
            continue
        # The scalar cases inline (nearly every field is one): no call per field.
        t = type(value)
        if t is float:
            if rule[0] == NUMBER and rule[3] <= value <= rule[4]:
                continue
        elif t is int:
            kind = rule[0]
            if kind <= INTEGER and rule[3] <= value <= rule[4]:
                continue
        elif t is str:
            if rule[0] == TEXT and len(value) <= MAX_TEXT_CHARS:
                continue
        elif value is None:
            if rule[1]:
                continue
        elif t is bool and rule[0] == BOOL:
            continue
        checked: Any
        try:
            if t is list and rule[0] == LIST and len(value) <= MAX_ITEMS:
                checked = _list(value, rule[2])
            elif t is dict and rule[0] == OBJECT:
                checked = _object(value, rule[2])
            else:
                checked = _value(value, rule)
        except FieldError as err:
            raise err.inside(key) from None
        if checked is not value:
            if changed is None:
                changed = {}
            changed[key] = checked
    if not unknown and changed is None:
        return obj
    out = {key: value for key, value in obj.items() if key in spec}
    if changed:
        out.update(changed)
    return out
