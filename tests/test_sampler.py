"""The sampler: containment of failures, rates, the tick schedule and skipped ticks,
deadlines (stale groups, stuck collectors and mounts, bounded threads), on-demand groups,
logs, stop."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import namedtuple
from typing import Any, ClassVar

import pytest

from jupyter_server_ext.collectors import DiskCollector
from jupyter_server_ext.errors import CollectorError
from jupyter_server_ext.sampler import (
    LOG_REPEAT_INTERVAL,
    Rates,
    Sampler,
    default_timeout,
    describe_failure,
    sum_known,
)
from sysmon_nb.protocol import Status


class Counter:
    name = "cpu"

    def __init__(self) -> None:
        self.calls = 0

    def collect(self, now: float) -> dict[str, Any]:
        self.calls += 1
        return {"calls": self.calls}


class Failing:
    def __init__(self, name: str, exc: BaseException) -> None:
        self.name = name
        self.exc = exc

    def collect(self, now: float) -> dict[str, Any]:
        raise self.exc


class Slow:
    name = "disk"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def collect(self, now: float) -> dict[str, Any]:
        time.sleep(self.seconds)
        return {}


def collect_samples(sampler_args: dict[str, Any], until: int, timeout: float = 10.0) -> list:
    samples: list[Status] = []
    done = threading.Event()

    def on_sample(status: Status) -> None:
        samples.append(status)
        if len(samples) >= until:
            done.set()

    sampler = Sampler(on_sample=on_sample, host="h", **sampler_args)
    sampler.start()
    try:
        assert done.wait(timeout), f"only {len(samples)} samples in {timeout}s"
    finally:
        sampler.stop()
    return samples


def test_rates_first_null_then_per_second_and_reset_null() -> None:
    rates = Rates()
    assert rates.update(0.0, {"a": 100}) == {"a": None}
    assert rates.update(2.0, {"a": 300}) == {"a": 100.0}
    assert rates.update(3.0, {"a": 50}) == {"a": None}  # reset: unknown, not negative
    assert rates.update(4.0, {"a": 60, "b": 1}) == {"a": 10.0, "b": None}
    assert rates.update(4.0, {"a": 70, "b": 2}) == {"a": None, "b": None}  # no time passed


def test_sum_known() -> None:
    assert sum_known([None, None]) is None
    assert sum_known([1.0, None, 2.0]) == 3.0


def test_one_failing_collector_leaves_the_others_publishing() -> None:
    counter = Counter()
    sampler = Sampler(
        [counter, Failing("gpu", CollectorError("NVML error on GPU: GPU is lost"))],
        interval=1.0,
        on_sample=lambda s: None,
        host="h",
    )
    first = sampler.sample_once()
    second = sampler.sample_once()
    assert first.groups == {"cpu": {"calls": 1}}
    assert second.groups == {"cpu": {"calls": 2}}
    assert second.errors == {"gpu": "NVML error on GPU: GPU is lost"}
    assert (first.seq, second.seq) == (1, 2)


@pytest.mark.parametrize(
    ("exc", "shown"),
    [
        (
            PermissionError(13, "Permission denied", "/sys/fs/cgroup/memory.max"),
            "PermissionError: Permission denied (/sys/fs/cgroup/memory.max)",
        ),
        (
            FileNotFoundError(2, "No such file or directory", "/proc/diskstats"),
            "FileNotFoundError: No such file or directory (/proc/diskstats)",
        ),
        (CollectorError("cannot read x"), "cannot read x"),
        (KeyError("total"), "unexpected error (KeyError: 'total'); see the server log"),
        (RuntimeError(), "unexpected error (RuntimeError); see the server log"),
    ],
)
def test_failure_descriptions_have_no_traceback(exc: BaseException, shown: str) -> None:
    assert describe_failure(exc) == shown


class Hung:
    """A collector whose ``collect`` blocks until ``release`` is set, from its
    ``good``-th call on (the calls before answer at once)."""

    def __init__(self, name: str = "container", good: int = 0) -> None:
        self.name = name
        self.good = good
        self.calls = 0
        self.closed = False
        self.release = threading.Event()

    def collect(self, now: float) -> dict[str, Any]:
        self.calls += 1
        if self.calls > self.good:
            assert self.release.wait(30), "never released"
        return {"call": self.calls}

    def close(self) -> None:
        self.closed = True


class FakeDisks:
    """psutil's disk functions for :class:`DiskCollector`; ``disk_usage`` on ``hung``
    blocks until ``release`` is set, as a call on a stale NFS mount does."""

    def __init__(self, hung: str) -> None:
        self.hung = hung
        self.release = threading.Event()
        self.usage_calls: dict[str, int] = {}

    def disk_partitions(self, all: bool = False) -> list[Any]:
        part = namedtuple("sdiskpart", "device mountpoint fstype opts")
        return [part("/dev/a", "/", "ext4", "rw"), part("srv:/x", "/nfs", "nfs4", "rw")]

    def disk_usage(self, path: str) -> Any:
        self.usage_calls[path] = self.usage_calls.get(path, 0) + 1
        if path == self.hung and self.usage_calls[path] > 1:
            assert self.release.wait(30), "never released"
        usage = namedtuple("sdiskusage", "total used free percent")
        return usage(1000, 250, 700, 25.0)

    def disk_io_counters(self, perdisk: bool = False) -> Any:
        return None


def recording_log(name: str) -> tuple[logging.Logger, list[logging.LogRecord]]:
    """A logger of our own (as the extension passes its ``self.log``) and its records."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    log = logging.getLogger(f"test.sampler.{name}")
    log.handlers[:] = [Keep()]
    log.setLevel(logging.DEBUG)
    log.propagate = False
    return log, records


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def messages(records: list[logging.LogRecord], level: int | None = None) -> list[str]:
    return [r.getMessage() for r in records if level is None or r.levelno == level]


def test_failures_are_logged_once_with_true_repeat_counts_and_recovery() -> None:
    clock = [1000.0]
    log, records = recording_log("failures")
    failing = Failing("container", PermissionError(13, "Permission denied", "/sys/x"))
    sampler = Sampler(
        [failing], interval=1.0, on_sample=lambda s: None, host="h", log=log,
        clock=lambda: clock[0],
    )  # fmt: skip
    for _ in range(5):
        sampler.sample_once()
    assert len(messages(records, logging.WARNING)) == 1
    assert "'container' failed: PermissionError" in messages(records)[0]
    clock[0] += LOG_REPEAT_INTERVAL
    sampler.sample_once()  # the 6th failure: a reminder counting the 5 since the first line
    reminder = messages(records, logging.WARNING)[-1]
    assert "still failing" in reminder and "failed 5 more times" in reminder, reminder
    sampler.sample_once()
    sampler.sample_once()
    failing.exc = CollectorError("cpu.max has a zero period")
    sampler.sample_once()  # a new message: the 2 repeats belong to the old one
    changed = messages(records, logging.WARNING)[-1]
    assert changed.startswith("sysmon: collector 'container' failed: cpu.max has a zero period")
    assert "before: PermissionError" in changed and "2 more times" in changed, changed
    assert len(messages(records, logging.WARNING)) == 3
    failing.collect = lambda now: {}  # type: ignore[method-assign]
    sampler.sample_once()
    sampler.sample_once()
    recovered = [m for m in messages(records, logging.INFO) if "recovered" in m]
    assert len(recovered) == 1 and "'container'" in recovered[0]
    sampler.stop()


def test_loop_runs_at_the_interval_on_a_worker_thread() -> None:
    main = threading.get_ident()
    threads: set[int] = set()

    class Where:
        name = "cpu"

        def collect(self, now: float) -> dict[str, Any]:
            threads.add(threading.get_ident())
            return {}

    interval = 0.05
    samples = collect_samples({"collectors": [Where()], "interval": interval}, until=10)
    assert main not in threads
    seqs = [s.seq for s in samples]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    span = samples[-1].time - samples[0].time
    ticks = len(samples) - 1 + samples[-1].skipped_ticks - samples[0].skipped_ticks
    # the ticks keep the schedule: neither faster than the interval nor much slower
    assert span >= 0.9 * interval * ticks, (span, ticks)
    assert span <= 3 * interval * (len(samples) - 1), span
    assert all(s.interval == interval for s in samples)


def test_loop_survives_collectors_and_consumers_that_raise() -> None:
    calls = {"n": 0}
    samples: list[Status] = []
    done = threading.Event()

    def flaky_consumer(status: Status) -> None:
        calls["n"] += 1
        if calls["n"] % 2:
            raise RuntimeError("consumer broke")
        samples.append(status)
        if len(samples) >= 3:
            done.set()

    sampler = Sampler(
        [Failing("cpu", ValueError("bad")), Counter()],
        interval=0.02,
        on_sample=flaky_consumer,
        host="h",
    )
    sampler.start()
    try:
        assert done.wait(10)
        assert sampler.running
    finally:
        sampler.stop()
    assert not sampler.running
    assert all(
        s.errors == {"cpu": "unexpected error (ValueError: bad); see the server log"}
        for s in samples
    )


def test_a_slow_collector_neither_stretches_ticks_nor_counts_as_skipped() -> None:
    interval = 0.1
    samples = collect_samples(
        {"collectors": [Counter(), Slow(3 * interval)], "interval": interval}, until=8
    )
    assert all(s.skipped_ticks == 0 for s in samples), [s.skipped_ticks for s in samples]
    assert all("cpu" in s.groups for s in samples)
    span = samples[-1].time - samples[0].time
    assert span <= 2 * interval * (len(samples) - 1), span  # a 0.3 s tick each would be 2.1 s
    late = [s for s in samples if "disk" in s.stale]
    assert late and all(s.errors["disk"].startswith("did not answer within 0.1 s") for s in late)


def test_ticks_the_scheduler_misses_are_skipped_not_piled_up() -> None:
    interval = 0.05
    samples: list[Status] = []
    arrived: list[float] = []
    done = threading.Event()

    def consumer(status: Status) -> None:
        samples.append(status)
        arrived.append(time.monotonic())
        if len(samples) == 2:
            time.sleep(4.5 * interval)  # the scheduler itself stalls for over 4 slots
        if len(samples) >= 6:
            done.set()

    sampler = Sampler([Counter()], interval=interval, on_sample=consumer, host="h")
    sampler.start()
    try:
        assert done.wait(10)
    finally:
        sampler.stop()
    assert samples[2].skipped_ticks >= 3, [s.skipped_ticks for s in samples]
    assert samples[1].skipped_ticks == 0
    # after the stall the next ticks keep the schedule: no burst of catch-up ticks (one
    # tick may run late within its slot, so the first gap can be short)
    gaps = [b - a for a, b in itertools.pairwise(arrived[2:])]
    assert sum(gaps) >= 1.5 * interval and all(g >= 0.5 * interval for g in gaps[1:]), gaps


class Clock:
    """The sampler's monotonic clock, moved by the test (deadlines still pass in real
    time: a tick waits ``timeout`` real seconds for a hung call)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_hung_collector_goes_stale_with_its_last_reading_and_others_go_on() -> None:
    log, records = recording_log("hung")
    hung = Hung(good=1)
    counter = Counter()
    clock = Clock()
    sampler = Sampler(
        [counter, hung], interval=0.5, on_sample=lambda s: None, host="h", log=log,
        timeout=0.05, clock=clock,
    )  # fmt: skip
    clock.now = 1001.0
    first = sampler.sample_once()  # its last good reading, taken at 1001.0
    assert first.groups["container"] == {"call": 1} and not first.stale
    clock.now = 1007.3
    started = time.monotonic()
    second = sampler.sample_once()
    assert time.monotonic() - started < 2.0  # the deadline, not the hang
    assert second.groups["cpu"] == {"calls": 2}
    assert second.groups["container"] == {"call": 1}  # its last good reading
    assert second.stale == {"container": 6.3}  # seconds since that reading
    clock.now = 1012.5
    third = sampler.sample_once()
    assert third.stale == {"container": 11.5}
    assert third.errors["container"] == "did not answer within 0.05 s; stuck for 5 s"
    assert second.errors["container"] == "did not answer within 0.05 s"
    stuck_lines = [m for m in messages(records) if "did not answer" in m]
    assert stuck_lines == [
        "sysmon: collector 'container' did not answer within 0.05 s; it is left running "
        "and reported stale until it returns"
    ]
    for _ in range(30):
        later = sampler.sample_once()
    assert hung.calls == 2  # never called again while its call is out
    assert later.groups["cpu"] == {"calls": 33} and "container" in later.stale
    assert len([m for m in messages(records) if "did not answer" in m]) == 1
    assert len(sampler.threads) <= 2  # one runner, one thread in the stuck call
    hung.release.set()
    wait_until(lambda: any("returned after" in m for m in messages(records)))
    again = sampler.sample_once()
    assert hung.calls == 3 and "container" not in again.stale
    assert again.groups["container"] == {"call": 3}
    sampler.stop()


class Gated:
    """A collector whose n-th call returns only once ``gates[n]`` is set (n from 0)."""

    name = "container"

    def __init__(self, calls: int) -> None:
        self.gates = [threading.Event() for _ in range(calls)]
        self.calls = 0

    def collect(self, now: float) -> dict[str, Any]:
        call = self.calls
        self.calls += 1
        assert self.gates[call].wait(30), "never released"
        return {"call": call, "read_at": now}


def test_a_late_reading_is_carried_with_the_age_of_its_own_tick() -> None:
    log, records = recording_log("late")
    gated = Gated(calls=3)
    gated.gates[0].set()
    clock = Clock(2000.0)
    sampler = Sampler([gated], interval=0.5, on_sample=lambda s: None, host="h", log=log,
                      timeout=0.05, clock=clock)  # fmt: skip
    assert sampler.sample_once().groups["container"] == {"call": 0, "read_at": 2000.0}
    clock.now = 2003.0
    late = sampler.sample_once()  # call 1 starts at 2003.0 and misses the deadline
    assert late.stale == {"container": 3.0} and late.groups["container"]["call"] == 0
    clock.now = 2004.5
    gated.gates[1].set()  # call 1 returns after its tick: a reading of 2003.0
    wait_until(lambda: any("returned after" in m for m in messages(records)))
    clock.now = 2009.0
    carried = sampler.sample_once()  # call 2 hangs; call 1's reading is the last good one
    assert carried.groups["container"] == {"call": 1, "read_at": 2003.0}
    assert carried.stale == {"container": 6.0}  # 2009.0 - 2003.0, not since 2000.0
    gated.gates[2].set()
    sampler.stop()


def test_a_group_that_never_answered_is_stale_and_absent() -> None:
    hung = Hung(good=0)
    sampler = Sampler([Counter(), hung], interval=0.5, on_sample=lambda s: None, host="h",
                      timeout=0.05)  # fmt: skip
    sample = sampler.sample_once()
    assert "container" not in sample.groups and "container" in sample.stale
    assert sample.errors["container"].startswith("did not answer")
    hung.release.set()
    sampler.stop()


def test_a_stuck_mount_keeps_its_last_numbers_and_the_disk_group_answers() -> None:
    log, records = recording_log("mount")
    ps = FakeDisks(hung="/nfs")
    disk = DiskCollector(ps)
    sampler = Sampler([disk, Counter()], interval=0.5, on_sample=lambda s: None, host="h",
                      log=log, timeout=0.05)  # fmt: skip
    first = sampler.sample_once()
    assert [m["stuck"] for m in first.groups["disk"]["mounts"]] == [False, False]
    assert first.groups["disk"]["mounts"][0]["free_bytes"] == 700
    for _ in range(20):
        sample = sampler.sample_once()
    assert "disk" not in sample.stale and "disk" not in sample.errors
    by_path = {m["path"]: m for m in sample.groups["disk"]["mounts"]}
    assert by_path["/nfs"] == {
        "path": "/nfs", "fstype": "nfs4", "total_bytes": 1000, "used_bytes": 250,
        "free_bytes": 700, "percent": 25.0, "home": False, "stuck": True,
    }  # fmt: skip
    assert by_path["/"]["stuck"] is False
    assert ps.usage_calls["/nfs"] == 2  # the stuck call is the only one outstanding
    assert ps.usage_calls["/"] == 22  # read again when the tick resumed without /nfs
    assert sample.groups["cpu"] == {"calls": 21}
    assert [m for m in messages(records) if "did not answer" in m] == [
        "sysmon: filesystem call on /nfs did not answer within 0.05 s; it is left running "
        "and reported stale until it returns"
    ]
    assert len(sampler.threads) <= 2
    ps.release.set()
    wait_until(lambda: any("/nfs returned after" in m for m in messages(records)))
    sample = sampler.sample_once()
    assert [m["stuck"] for m in sample.groups["disk"]["mounts"]] == [False, False]
    assert ps.usage_calls["/nfs"] == 3
    sampler.stop()


def test_threads_stay_bounded_whatever_hangs() -> None:
    ps = FakeDisks(hung="/nfs")
    hung = Hung(good=1)
    sampler = Sampler([DiskCollector(ps), hung, Counter()], interval=0.05,
                      on_sample=lambda s: None, host="h", timeout=0.02)  # fmt: skip
    before = threading.active_count()
    for _ in range(60):
        sample = sampler.sample_once()
    # the runner, one thread in the stuck collector, one in the stuck mount
    assert len(sampler.threads) <= 3, [t.name for t in sampler.threads]
    assert threading.active_count() <= before + 3
    assert sample.groups["cpu"] == {"calls": 60}
    ps.release.set()
    hung.release.set()
    sampler.stop()


def test_stop_never_waits_on_a_stuck_call_and_leaves_it_open() -> None:
    hung = Hung(good=0)
    got = threading.Event()

    def on_sample(status: Status) -> None:
        if "container" in status.stale:
            got.set()

    sampler = Sampler([hung, Closable()], interval=0.05, on_sample=on_sample, host="h")
    sampler.start()
    assert got.wait(10)
    started = time.monotonic()
    sampler.stop(timeout=1.0)
    assert time.monotonic() - started < 1.5
    assert not sampler.running
    assert not hung.closed  # its call is still out: closing under it could hang too
    assert Closable.closed == ["x"]
    hung.release.set()


class Closable(Counter):
    closed: ClassVar[list[str]] = []

    def close(self) -> None:
        Closable.closed.append("x")


def test_stop_is_idempotent_and_closes_collectors() -> None:
    Closable.closed = []
    sampler = Sampler([Closable()], interval=0.05, on_sample=lambda s: None, host="h")
    sampler.start()
    sampler.start()
    sampler.stop()
    sampler.stop()
    assert not sampler.running
    assert Closable.closed == ["x"]


def test_on_demand_groups_run_only_while_wanted() -> None:
    class Walk(Counter):
        name = "processes"
        on_demand = True
        paused = 0

        def pause(self) -> None:
            self.paused += 1

    walk = Walk()
    wanted: set[str] = {"cpu"}
    sampler = Sampler([Counter(), walk], interval=1.0, on_sample=lambda s: None, host="h",
                      wanted=lambda: wanted)  # fmt: skip
    first = sampler.sample_once()
    sampler.sample_once()
    assert "processes" not in first.groups and walk.calls == 0 and walk.paused == 1
    wanted.add("processes")
    assert sampler.sample_once().groups["processes"] == {"calls": 1}
    wanted.discard("processes")
    sampler.sample_once()
    assert walk.calls == 1 and walk.paused == 2
    sampler.stop()


def test_interval_and_timeout_must_be_positive_and_the_timeout_defaults() -> None:
    with pytest.raises(ValueError):
        Sampler([], interval=0, on_sample=lambda s: None, host="h")
    with pytest.raises(ValueError):
        Sampler([], interval=1, on_sample=lambda s: None, host="h", timeout=0)
    assert default_timeout(0.5) == 0.5 and default_timeout(5.0) == 2.0
    assert Sampler([], interval=5.0, on_sample=lambda s: None, host="h").timeout == 2.0
    capped = Sampler([], interval=0.5, on_sample=lambda s: None, host="h", timeout=9)
    assert capped.timeout == 0.5


def test_stuck_calls_are_reported_once_each_with_group_and_mount() -> None:
    log, records = recording_log("on_stuck")
    ps = FakeDisks(hung="/nfs")
    hung = Hung(good=1)
    reports: list[Any] = []

    def on_stuck(report: Any) -> None:
        reports.append(report)
        raise RuntimeError("a consumer bug must not stop the tick")

    sampler = Sampler([DiskCollector(ps), hung, Counter()], interval=0.5,
                      on_sample=lambda s: None, host="h", timeout=0.05, log=log,
                      on_stuck=on_stuck, wall_clock=lambda: 1234.5)  # fmt: skip
    for _ in range(10):
        sample = sampler.sample_once()
    assert sample.groups["cpu"] == {"calls": 10}
    assert [(r.key, r.group, r.mount) for r in reports] == [
        ("disk:/nfs", "disk", "/nfs"),
        ("container", "container", None),
    ]
    assert reports[0].message == "filesystem call on /nfs did not answer within 0.05 s"
    assert reports[1].message == "collector 'container' did not answer within 0.05 s"
    assert reports[0].time == 1234.5
    assert messages(records, logging.ERROR) == ["sysmon: reporting a stuck call failed"] * 2
    hung.release.set()
    ps.release.set()
    sampler.stop()
