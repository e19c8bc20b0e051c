"""The sampler loop: containment of failures, rates, skipped ticks, stop."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import Any

import pytest

from jupyter_server_ext.errors import CollectorError
from jupyter_server_ext.sampler import Rates, Sampler, describe_failure, sum_known
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
        (KeyError("total"), "KeyError: 'total'"),
        (RuntimeError(), "RuntimeError"),
    ],
)
def test_failure_descriptions_have_no_traceback(exc: BaseException, shown: str) -> None:
    assert describe_failure(exc) == shown


def test_failures_are_logged_once_not_every_tick(caplog: pytest.LogCaptureFixture) -> None:
    failing = Failing("container", PermissionError(13, "Permission denied", "/sys/x"))
    sampler = Sampler([failing], interval=1.0, on_sample=lambda s: None, host="h")
    with caplog.at_level(logging.INFO, logger="sysmon_nb.sampler"):
        for _ in range(50):
            sampler.sample_once()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "container" in warnings[0].getMessage()
        failing.collect = lambda now: {}  # type: ignore[method-assign]
        sampler.sample_once()
        assert any("recovered" in r.getMessage() for r in caplog.records)


def test_loop_runs_at_the_interval_on_a_worker_thread() -> None:
    main = threading.get_ident()
    threads: set[int] = set()

    class Where:
        name = "cpu"

        def collect(self, now: float) -> dict[str, Any]:
            threads.add(threading.get_ident())
            return {}

    samples = collect_samples({"collectors": [Where()], "interval": 0.05}, until=5)
    assert main not in threads
    seqs = [s.seq for s in samples]
    assert seqs == sorted(seqs)


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
    assert all(s.errors == {"cpu": "ValueError: bad"} for s in samples)


def test_slow_ticks_are_skipped_not_piled_up() -> None:
    interval = 0.05
    samples = collect_samples({"collectors": [Slow(0.17)], "interval": interval}, until=4)
    gaps = [b.time - a.time for a, b in itertools.pairwise(samples)]
    # each tick waits for the next slot after the slow one: no burst of catch-up ticks
    assert all(gap >= 0.17 for gap in gaps), gaps


def test_stop_is_idempotent_and_closes_collectors() -> None:
    closed: list[str] = []

    class Closable(Counter):
        def close(self) -> None:
            closed.append("x")

    sampler = Sampler([Closable()], interval=0.05, on_sample=lambda s: None, host="h")
    sampler.start()
    sampler.start()
    sampler.stop()
    sampler.stop()
    assert not sampler.running
    assert closed == ["x"]


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Sampler([], interval=0, on_sample=lambda s: None, host="h")
