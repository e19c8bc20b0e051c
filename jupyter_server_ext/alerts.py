"""The ``alerts`` group: threshold rules evaluated on the server each tick, and events.

Rules (``c.SysmonExtension.alert_rules``) compare one field of one group of the sample
with a threshold; they are evaluated on the sampler thread against every sample, so
they fire while no notebook is open. An alert starts when its rule first holds and ends
when it first does not; both are events, logged once each. A value that is unknown
this tick (``null``, a failed group) keeps the last verdict.

Besides the groups' own fields, rules may name two derived ones:

- ``container.memory_percent``: memory used as percent of the container's limit, or of
  the host's memory where the container has none;
- ``disk.home_percent``: the fullest mount marked ``home`` (none yet: no value).

Op ``rises`` holds in a sample where the field grew by more than ``threshold`` since the
previous sample (a counter such as ``container.oom_kills``).

Kernel deaths (:mod:`.kernels`) become ``oom_kill`` events when the container's OOM
kill count rose within ``match_window_s`` of the death (the restarter and the counter
are read at different moments), else ``kernel_died`` with the exit status. An OOM kill
that no kernel death explains is an ``oom_kill`` event without a kernel.
"""

from __future__ import annotations

import logging
import operator
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .kernels import KernelDeath

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}
RISES = "rises"


def _rule(name: str, group: str, field: str, op: str, threshold: float) -> dict[str, Any]:
    return {"name": name, "group": group, "field": field, "op": op, "threshold": threshold}


DEFAULT_RULES: list[dict[str, Any]] = [
    _rule("memory", "container", "memory_percent", ">=", 90),
    _rule("home volume", "disk", "home_percent", ">=", 90),
    _rule("cpu throttled", "container", "cpu_throttled_percent", ">=", 25),
    _rule("oom kill", "container", "oom_kills", RISES, 0),
]

#: How long a kernel death and an OOM kill may lie apart and still be one event (s).
MATCH_WINDOW_S = 10.0


@dataclass(frozen=True)
class AlertRule:
    name: str
    group: str
    field: str
    op: str
    threshold: float


def parse_rules(raw: Iterable[Mapping[str, Any]]) -> list[AlertRule]:
    """Rules from configuration; a malformed one is a :class:`ConfigError`."""
    rules = []
    for index, item in enumerate(raw):
        where = f"SysmonExtension.alert_rules[{index}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where} must be a dict")
        missing = {"name", "group", "field", "op", "threshold"} - set(item)
        if missing:
            raise ConfigError(f"{where} lacks {', '.join(sorted(missing))}")
        op, threshold = item["op"], item["threshold"]
        if op not in _OPS and op != RISES:
            raise ConfigError(f"{where}: op must be one of {', '.join([*_OPS, RISES])}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ConfigError(f"{where}: threshold must be a number")
        if not all(isinstance(item[k], str) and item[k] for k in ("name", "group", "field")):
            raise ConfigError(f"{where}: name, group and field must be non-empty strings")
        rules.append(AlertRule(item["name"], item["group"], item["field"], op, float(threshold)))
    if len({r.name for r in rules}) != len(rules):
        raise ConfigError("SysmonExtension.alert_rules: rule names must be unique")
    return rules


def field_value(groups: Mapping[str, Any], group: str, field: str) -> float | None:
    """A rule's value in a sample: the group's field or a derived one; ``None``
    when unknown."""
    if (group, field) == ("container", "memory_percent"):
        container, memory = groups.get("container") or {}, groups.get("memory") or {}
        used, limit = container.get("memory_used_bytes"), container.get("memory_limit_bytes")
        if used is not None and limit:
            return round(100.0 * used / limit, 1)
        return _number(memory.get("percent"))
    if (group, field) == ("disk", "home_percent"):
        mounts = (groups.get("disk") or {}).get("mounts") or []
        home = [m["percent"] for m in mounts if m.get("home") and m.get("percent") is not None]
        return max(home) if home else None
    return _number((groups.get(group) or {}).get(field))


def _number(value: Any) -> float | None:
    return None if isinstance(value, bool) or not isinstance(value, (int, float)) else value


def describe_exit(exit_code: int | None) -> str:
    if exit_code is None:
        return "exit status unknown"
    if exit_code < 0:
        try:
            return f"killed by {signal.Signals(-exit_code).name}"
        except ValueError:
            return f"killed by signal {-exit_code}"
    return f"exited with status {exit_code}"


def human_bytes(count: float) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.0f} MiB"


def _kernel_label(death: KernelDeath) -> str:
    return death.path or f"{death.kernel_id[:8]} ({death.name})"


class AlertEngine:
    """Turns each sample's groups (and the kernel deaths since the last one) into the
    ``alerts`` group. Not thread-safe: the sampler thread alone calls :meth:`update`;
    :meth:`add_event` queues an event from that same thread."""

    def __init__(
        self,
        rules: Sequence[AlertRule],
        log: logging.Logger | logging.LoggerAdapter[Any],
        match_window_s: float = MATCH_WINDOW_S,
    ) -> None:
        self.rules = list(rules)
        self._log = log
        self._window_s = match_window_s
        self._active: dict[str, dict[str, Any]] = {}
        self._previous: dict[str, float] = {}  # rule name -> last value, for "rises"
        self._events: list[dict[str, Any]] = []
        self._last_oom_kills: int | None = None
        self._unexplained_ooms: list[tuple[float, float]] = []  # (monotonic, unix time)
        self._unexplained_deaths: list[KernelDeath] = []

    def add_event(self, event: dict[str, Any]) -> None:
        """Queue an event for the next sample (it must carry ``time``, ``kind``,
        ``message``)."""
        self._events.append(event)

    def update(
        self,
        groups: Mapping[str, Any],
        deaths: Sequence[KernelDeath],
        now: float,
        wall: float,
    ) -> dict[str, Any]:
        """The ``alerts`` group for this sample. ``now`` is monotonic s, ``wall`` unix s."""
        self._kernel_events(groups, deaths, now, wall)
        for rule in self.rules:
            self._evaluate(rule, groups, wall)
        events, self._events = self._events, []
        return {"active": [dict(a) for a in self._active.values()], "events": events}

    # -- threshold rules --------------------------------------------------------------

    def _evaluate(self, rule: AlertRule, groups: Mapping[str, Any], wall: float) -> None:
        value = field_value(groups, rule.group, rule.field)
        if value is None:
            return
        if rule.op == RISES:
            before = self._previous.get(rule.name)
            self._previous[rule.name] = value
            holds = before is not None and value - before > rule.threshold
        else:
            holds = _OPS[rule.op](value, rule.threshold)
        active = self._active.get(rule.name)
        if holds and active is None:
            self._active[rule.name] = {
                "name": rule.name,
                "group": rule.group,
                "value": value,
                "threshold": rule.threshold,
                "since": wall,
            }
            message = (
                f"{rule.name}: {rule.group}.{rule.field} {value:g} {rule.op} {rule.threshold:g}"
            )
            self._log.warning("sysmon alert started: %s", message)
            self._emit(wall, "alert_started", message, name=rule.name)
        elif holds and active is not None:
            active["value"] = value
        elif not holds and active is not None:
            del self._active[rule.name]
            message = f"{rule.name}: {rule.group}.{rule.field} back to {value:g}"
            self._log.info("sysmon alert ended: %s", message)
            self._emit(wall, "alert_ended", message, name=rule.name)

    # -- kernel deaths and OOM kills --------------------------------------------------

    def _kernel_events(
        self, groups: Mapping[str, Any], deaths: Sequence[KernelDeath], now: float, wall: float
    ) -> None:
        container = groups.get("container") or {}
        count = container.get("oom_kills")
        if isinstance(count, int):
            if self._last_oom_kills is not None and count > self._last_oom_kills:
                self._unexplained_ooms.extend([(now, wall)] * (count - self._last_oom_kills))
            self._last_oom_kills = count
        limit = container.get("memory_limit_bytes")
        for death in deaths:
            if death.exit_code is None or death.exit_code == -signal.SIGKILL:
                self._unexplained_deaths.append(death)  # the OOM killer sends SIGKILL
            else:
                self._died(death)
        for death in sorted(self._unexplained_deaths, key=lambda d: d.monotonic):
            match = next(
                (
                    oom
                    for oom in self._unexplained_ooms
                    if abs(oom[0] - death.monotonic) <= self._window_s
                ),
                None,
            )
            if match is not None:
                self._unexplained_ooms.remove(match)
                self._unexplained_deaths.remove(death)
                self._oom_killed(death, limit)
        expired = now - self._window_s
        while self._unexplained_deaths and self._unexplained_deaths[0].monotonic < expired:
            self._died(self._unexplained_deaths.pop(0))
        while self._unexplained_ooms and self._unexplained_ooms[0][0] < expired:
            _, at = self._unexplained_ooms.pop(0)
            message = f"a process of this container was killed: out of memory{_at(limit)}"
            self._log.warning("sysmon: %s", message)
            self._emit(at, "oom_kill", message)

    def _oom_killed(self, death: KernelDeath, limit: Any) -> None:
        message = f"kernel of {_kernel_label(death)} killed: out of memory{_at(limit)}"
        self._log.warning("sysmon: %s (kernel %s, pid %s)", message, death.kernel_id, death.pid)
        self._emit(
            death.time,
            "oom_kill",
            message,
            kernel_id=death.kernel_id,
            path=death.path,
            pid=death.pid,
        )

    def _died(self, death: KernelDeath) -> None:
        message = f"kernel of {_kernel_label(death)} died: {describe_exit(death.exit_code)}"
        self._log.warning("sysmon: %s (kernel %s, pid %s)", message, death.kernel_id, death.pid)
        self._emit(
            death.time,
            "kernel_died",
            message,
            kernel_id=death.kernel_id,
            path=death.path,
            pid=death.pid,
            exit_code=death.exit_code,
        )

    def _emit(self, time: float, kind: str, message: str, **extra: Any) -> None:
        self._events.append({"time": time, "kind": kind, "message": message, **extra})


def _at(limit: Any) -> str:
    return f" at {human_bytes(limit)} limit" if isinstance(limit, int) and limit > 0 else ""
