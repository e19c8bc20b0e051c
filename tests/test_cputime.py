"""CPU seconds of a changing set of processes as a counter (jupyter_server_ext/cputime.py):
what one tick adds as processes start, exit, are reaped, or leave the set."""

from __future__ import annotations

import pytest

from jupyter_server_ext.cputime import CpuCounter, CpuCounters

KERNEL, CHILD, OTHER = (10, 1.0), (11, 2.0), (12, 3.0)  # (pid, start)


def test_the_first_value_is_the_cpu_time_of_the_processes_alive_then() -> None:
    counter = CpuCounter()
    assert counter.update({KERNEL: (3.0, 1.0), CHILD: (2.0, 0.0)}) == 6.0
    assert counter.update({KERNEL: (4.0, 1.0), CHILD: (2.5, 0.0)}) == 7.5


def test_a_child_reaped_by_its_parent_adds_only_what_it_used_since_the_last_tick() -> None:
    counter = CpuCounter()
    counter.update({KERNEL: (1.0, 0.0), CHILD: (5.0, 0.0)})
    # the child used 0.5 s more, exited, and the kernel waited for it: its 5.5 s moved
    # into the kernel's reaped time; 5 of them were counted already
    assert counter.update({KERNEL: (1.0, 5.5)}) == pytest.approx(6.5)
    assert counter.update({KERNEL: (1.25, 5.5)}) == pytest.approx(6.75)


def test_a_zombie_is_a_member_until_reaped() -> None:
    counter = CpuCounter()
    counter.update({KERNEL: (1.0, 0.0), CHILD: (5.0, 0.0)})
    assert counter.update({KERNEL: (1.0, 0.0), CHILD: (5.5, 0.0)}) == 6.5  # a zombie now
    assert counter.update({KERNEL: (1.0, 5.5)}) == 6.5  # reaped: nothing counted twice


def test_a_child_born_and_reaped_between_two_ticks_counts_through_its_parent() -> None:
    counter = CpuCounter()
    counter.update({KERNEL: (1.0, 0.0)})
    assert counter.update({KERNEL: (1.0, 0.75)}) == 1.75


def test_a_reap_seen_a_tick_late_is_not_counted_twice() -> None:
    """The kernel was read before the child exited and the child after it was reaped:
    the take-back waits one tick."""
    counter = CpuCounter()
    counter.update({KERNEL: (1.0, 0.0), CHILD: (5.0, 0.0)})
    assert counter.update({KERNEL: (1.0, 0.0)}) == 6.0
    assert counter.update({KERNEL: (1.0, 5.0)}) == 6.0
    # owed CPU is taken back at most one tick later: later reaped time counts in full
    assert counter.update({KERNEL: (1.0, 6.0)}) == 7.0


def test_a_process_that_leaves_without_being_reaped_never_lowers_the_counter() -> None:
    counter = CpuCounter()
    counter.update({KERNEL: (1.0, 0.0), CHILD: (5.0, 0.0)})
    assert counter.update({KERNEL: (2.0, 0.0)}) == 7.0  # a daemon: gone from the tree
    assert counter.update({KERNEL: (3.0, 0.0)}) == 8.0
    assert counter.update({KERNEL: (3.0, 4.0)}) == 12.0  # the debt expired


def test_a_reused_pid_is_another_process() -> None:
    counter = CpuCounter()
    counter.update({(11, 2.0): (5.0, 0.0)})
    assert counter.update({(11, 9.0): (0.5, 0.0)}) == 5.5


def test_a_kernel_restart_continues_the_counter() -> None:
    counter = CpuCounter()
    counter.update({KERNEL: (4.0, 0.0), CHILD: (1.0, 0.0)})
    assert counter.update({OTHER: (0.5, 0.0)}) == 5.5  # a new kernel process, same id
    assert counter.update({}) == 5.5


def test_counters_by_name_report_growth_and_keep_names_without_processes() -> None:
    counters = CpuCounters(keep=2)
    assert counters.update({"ann": {KERNEL: (1.0, 0.0)}, "bob": {CHILD: (2.0, 0.0)}}) == {
        "ann": 1.0,
        "bob": 2.0,
    }
    assert counters.update({"ann": {KERNEL: (1.5, 0.0)}}) == {"ann": 0.5, "bob": 0.0}
    assert counters.seconds("bob") == 2.0  # no process now: the counter stays
    counters.update({"ann": {KERNEL: (1.5, 0.0)}, "cy": {OTHER: (1.0, 0.0)}})
    assert len(counters) == 2 and counters.seconds("bob") is None  # past keep: oldest idle
    counters.forget_except(["cy"])
    assert counters.seconds("ann") is None and counters.seconds("cy") == 1.0
