"""Asked for, answered: on-demand groups (the process walk) for callers that are not
connected, a REST poll and a Prometheus scrape.

First :class:`~jupyter_server_ext.demand.Demand` on a clock of our own (periods of a
minute and more, in no time), then a real in-process server at a 0.25 s interval whose
callers come back at four intervals and more, longer than the window a single call
keeps (three intervals).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from jupyter_server_ext.app import SysmonExtension
from jupyter_server_ext.demand import (
    FOLLOW_PERIODS,
    MAX_CALLERS,
    MAX_PERIOD_S,
    WANT_INTERVALS,
    Demand,
    sample_with,
)
from jupyter_server_ext.metrics import Exporter, families
from sysmon_nb.protocol import Status

from .conftest import TEST_INTERVAL, eventually


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def demand(interval: float = 5.0) -> tuple[Demand, Clock]:
    clock = Clock()
    return Demand(interval, clock), clock


def test_one_call_wants_for_three_intervals() -> None:
    d, clock = demand(interval=5.0)
    assert d.wanted() == set()  # nobody asked: nothing is walked
    d.want(["processes", "cpu"], "rest a")
    clock.now += WANT_INTERVALS * 5.0 - 0.1
    assert d.wanted() == {"processes", "cpu"}
    clock.now += 0.2
    assert d.wanted() == set()


def test_a_caller_that_comes_back_keeps_its_groups_for_as_long_as_it_comes() -> None:
    # a REST poll once a minute (the interval 5 s: a minute is 12 intervals)
    d, clock = demand(interval=5.0)
    d.want(["processes", "users", "cpu"], "poller")
    clock.now += 60.0  # cold again: one call's window (15 s) is long over
    assert d.wanted() == set()
    d.want(["processes", "users", "cpu"], "poller")
    for _ in range(20):  # from its second call on, never without them
        for _ in range(60):
            clock.now += 1.0
            assert d.wanted() == {"processes", "users", "cpu"}, clock.now
        d.want(["processes", "users", "cpu"], "poller")
    # it stops coming: wanted for two of its periods, then never again
    clock.now += FOLLOW_PERIODS * 60.0 - 0.5
    assert "processes" in d.wanted()
    clock.now += 1.0
    assert d.wanted() == set()


def test_other_callers_between_two_calls_do_not_make_a_caller_forget_its_period() -> None:
    # a REST poll once a minute beside a scrape every 30 s that wants other groups
    d, clock = demand(interval=5.0)
    for minute in range(4):
        d.want(["processes"], "poller")
        if minute >= 1:  # its period known from its second call on
            assert d.wanted() >= {"processes"}
        for _ in range(2):
            clock.now += 30.0
            if minute >= 1:
                assert "processes" in d.wanted(), clock.now
            d.want(["cpu"], "scrape", first_period=60.0)


def test_a_scrape_keeps_its_groups_from_its_first_call() -> None:
    # the exporter names no caller: a scrape, 30 s apart (the README's example)
    d, clock = demand(interval=5.0)
    until = d.want(["users", "processes"], "scrape", first_period=60.0)
    assert until == clock.now + 120.0
    for _ in range(16):
        clock.now += 30.0
        assert d.wanted() == {"users", "processes"}
        d.want(["users", "processes"], "scrape", first_period=60.0)


def test_two_scrapers_taking_turns_do_not_shorten_the_window() -> None:
    # two Prometheus replicas, 30 s each, 1 s apart: the gaps are 1 s and 29 s
    d, clock = demand(interval=1.0)
    for _ in range(40):
        d.want(["users"], "scrape")
        clock.now += 1.0
        assert d.wanted() == {"users"}
        d.want(["users"], "scrape")
        for _ in range(29):
            clock.now += 1.0
            if clock.now > 1000.0 + 120:  # once both gaps are known
                assert d.wanted() == {"users"}, clock.now


def test_a_long_gap_is_no_period() -> None:
    d, clock = demand(interval=5.0)
    d.want(["users"], "rest")
    clock.now += MAX_PERIOD_S + 1
    until = d.want(["users"], "rest")
    assert until == clock.now + WANT_INTERVALS * 5.0  # afresh: not 2 x 10 minutes


def test_callers_are_bounded_and_forgotten() -> None:
    d, clock = demand(interval=1.0)
    for i in range(3 * MAX_CALLERS):
        d.want(["users"], f"caller {i}")
    assert d.callers <= MAX_CALLERS
    clock.now += 60.0
    d.want(["cpu"], "last")
    assert d.wanted() == {"cpu"}  # the others' windows are over...
    clock.now += MAX_PERIOD_S
    d.want(["cpu"], "last")
    assert d.callers == 1  # ...and after a gap that is no period, they are forgotten


def test_a_scrape_without_a_wanted_group_says_it_is_down() -> None:
    status = Status(seq=1, time=100.0, host="h", interval=1.0, groups={"cpu": {"count": 2}})

    def up(wanted: tuple[str, ...]) -> dict[str, float]:
        (family,) = [f for f in families(status, 100.0, wanted) if f.name == "sysmon_collector_up"]
        return {s.labels["group"]: s.value for s in family.samples}

    assert up(()) == {"cpu": 1.0}
    assert up(("cpu", "users")) == {"cpu": 1.0, "users": 0.0}


async def test_an_answer_waits_for_a_late_group_not_for_a_failed_one() -> None:
    def status(seq: int, **kwargs: Any) -> Status:
        return Status(seq=seq, time=100.0 + seq, host="h", interval=1.0, **kwargs)

    late = status(1, groups={"cpu": {}}, errors={"users": "did not answer"}, stale={"users": 0.3})
    carried = status(2, groups={"cpu": {}, "users": {"count": 3}}, stale={"users": 1.3})
    failed = status(3, groups={"cpu": {}}, errors={"gpu": "NVML not found"})
    asked: list[int] = []

    async def next_sample() -> Status:
        asked.append(1)
        return carried

    got, missing = await sample_with(late, ("cpu", "users"), next_sample, 5.0)
    assert (got, missing, len(asked)) == (carried, [], 1)  # late, with no reading: waited
    got, missing = await sample_with(failed, ("cpu", "gpu"), next_sample, 5.0)
    assert (got, missing, len(asked)) == (failed, [], 1)  # failed: its error is the answer


# -- a real server ------------------------------------------------------------------------


async def rest(jp_fetch: Any, metrics: str) -> dict[str, Any]:
    reply = await jp_fetch("sysmon", "api", "status", params={"metrics": metrics})
    obj = json.loads(reply.body)
    assert isinstance(obj, dict)
    return obj


async def nobody_wants_the_walk(sysmon: SysmonExtension) -> None:
    await eventually(lambda: sysmon.broadcaster.published >= 2, timeout=30)
    latest = sysmon.broadcaster.latest
    assert latest is not None and "processes" not in latest.groups
    assert "users" not in latest.groups


@pytest.mark.timeout(60)
async def test_a_rest_call_gets_the_groups_it_asks_for(
    sysmon: SysmonExtension, jp_fetch: Any
) -> None:
    await nobody_wants_the_walk(sysmon)
    obj = await rest(jp_fetch, "processes,users,cpu")
    assert obj["processes"]["count"] > 0 and obj["users"]["count"] > 0
    assert "cpu" in obj
    # (a first walk slower than the tick's deadline on a loaded machine comes late: it
    # is then carried, and listed in stale and errors; nothing else may be)
    assert set(obj["errors"]) <= set(obj["stale"]), obj["errors"]


@pytest.mark.timeout(60)
async def test_a_rest_poller_keeps_the_walk_between_its_calls(
    sysmon: SysmonExtension, jp_fetch: Any
) -> None:
    await nobody_wants_the_walk(sysmon)
    period = 4 * TEST_INTERVAL  # longer than one call's window (3 intervals)
    await rest(jp_fetch, "processes,users,cpu")
    await asyncio.sleep(period)
    await rest(jp_fetch, "processes,users,cpu")  # its period is known from here on
    since = sysmon.broadcaster.published
    for _ in range(3):
        await asyncio.sleep(period)
        obj = await rest(jp_fetch, "processes,users,cpu")
        assert "processes" in obj and "users" in obj
        assert set(obj["errors"]) <= set(obj["stale"]), obj["errors"]
    # every sample between its calls had the walk (none paused it, so CPU is known)
    between = list(sysmon.broadcaster._history)[since - sysmon.broadcaster.published :]
    assert len(between) >= 3
    assert all("processes" in s.groups and "users" in s.groups for s in between), [
        sorted(s.groups) for s in between
    ]
    assert any(p["cpu_percent"] is not None for p in obj["processes"]["top_cpu"])


@pytest.mark.timeout(60)
async def test_a_group_that_cannot_come_is_said_to_be_missing_and_why(
    sysmon: SysmonExtension, jp_fetch: Any
) -> None:
    await nobody_wants_the_walk(sysmon)
    sysmon.sampler.stop()  # no next sample will come...
    sysmon._sampled_at = time.monotonic()  # ...though the newest is not stale yet
    bound = sysmon.answer_wait()
    assert bound == TEST_INTERVAL + TEST_INTERVAL + 1.0
    started = time.monotonic()
    obj = await rest(jp_fetch, "processes,cpu")
    waited = time.monotonic() - started
    assert bound <= waited < bound + 10  # it waited for one tick, bounded
    assert "processes" not in obj and "cpu" in obj
    assert obj["errors"] == {
        "processes": "not in the newest sample ('processes' is read only while someone "
        f"asks for it); no sample had it within {bound:g} s of this request"
    }
    # the sampler stuck as a whole: nothing to wait for, said at once
    sysmon._sampled_at = time.monotonic() - 10 * TEST_INTERVAL
    obj = await rest(jp_fetch, "users")
    assert obj["errors"]["users"].endswith("; the sampler is stuck")


def scrape(registry: CollectorRegistry) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = generate_latest(registry).decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


@pytest.mark.timeout(60)
async def test_a_scrape_that_keeps_coming_finds_the_walk(sysmon: SysmonExtension) -> None:
    await nobody_wants_the_walk(sysmon)
    registry = CollectorRegistry()
    exporter = Exporter(registry)
    exporter.attach(sysmon)
    try:
        first = scrape(registry)  # cold: said to be down, not silently absent
        assert "sysmon_users" not in first and "sysmon_processes" not in first
        up = first["sysmon_collector_up"]
        assert up[(("group", "users"),)] == 0 and up[(("group", "processes"),)] == 0
        fresh = 0
        for _ in range(3):  # scrapes 4 intervals apart, each longer than one call's window
            await asyncio.sleep(4 * TEST_INTERVAL)
            got = scrape(registry)
            assert "sysmon_users" in got and "sysmon_processes" in got, sorted(got)
            up = got["sysmon_collector_up"]
            fresh += up[(("group", "users"),)] == 1 and up[(("group", "processes"),)] == 1
        assert fresh >= 1  # (a first walk that came late is carried, with up 0, at most once)
    finally:
        exporter.detach(sysmon)
