"""What the docs say of the process walk: when it runs (``top_processes``, ``users``) and
what it reads on Linux (``/proc/<pid>/stat``, not psutil's per-process calls)."""

from __future__ import annotations

import functools
import sys
from typing import Any

import psutil
import pytest

from jupyter_server_ext import procfs
from jupyter_server_ext.processes import ProcessesCollector, ProcessWalk, UsersCollector
from jupyter_server_ext.sampler import Sampler


def walk_sampler(wanted: set[str], top_processes: int) -> tuple[Sampler, ProcessWalk]:
    walk = ProcessWalk()
    collectors = [
        ProcessesCollector(top_n=top_processes, walk=walk),
        UsersCollector(top_n=10, walk=walk),
    ]
    sampler = Sampler(collectors, interval=1.0, on_sample=lambda s: None, host="h",
                      wanted=lambda: wanted)  # fmt: skip
    return sampler, walk


def test_top_processes_0_reads_only_the_count_but_users_still_walks() -> None:
    wanted = {"processes"}
    sampler, walk = walk_sampler(wanted, top_processes=0)
    try:
        sample = sampler.sample_once()
        assert sample.groups["processes"]["count"] > 0
        assert sample.groups["processes"]["top_cpu"] == []
        assert walk.walks == 0 and walk.tracked == 0  # no per-process read at all
        wanted.add("users")  # a default subscription or a scrape wants users too
        sample = sampler.sample_once()
        assert walk.walks == 1 and walk.tracked > 0
        assert sample.groups["users"]["count"] > 0
    finally:
        sampler.stop()


@pytest.mark.skipif(sys.platform != "linux", reason="the /proc path is Linux's")
def test_linux_reads_each_process_from_its_stat_file_not_psutil(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: dict[str, int] = {"cpu_percent": 0, "memory_info": 0, "read_stat": 0}

    def counting(name: str, real: Any) -> Any:
        @functools.wraps(real)  # with psutil's oneshot() cache hooks
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return real(*args, **kwargs)

        return wrapper

    for name in ("cpu_percent", "memory_info"):
        monkeypatch.setattr(psutil.Process, name, counting(name, getattr(psutil.Process, name)))
    monkeypatch.setattr(procfs, "read_stat", counting("read_stat", procfs.read_stat))
    walk = ProcessWalk()
    try:
        first = walk.infos("users", 1.0)
        second = walk.infos("users", 2.0)
    finally:
        walk.close()
    assert calls["cpu_percent"] == 0 and calls["memory_info"] == 0
    assert calls["read_stat"] >= len(first) + len(second) > 0
    assert any(p.cpu_percent is not None for p in second)  # from the stat file's ticks
