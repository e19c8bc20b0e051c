"""Start jupyter_server with faults patched in, as an operator's bad day brings them.

``SYSMON_FAULTS`` holds comma-separated faults:

- ``statvfs:<path>``: ``os.statvfs(<path>)`` blocks forever, as on a stale NFS mount;
- ``statvfs-after:<path>:<trigger>``: the same, once the file ``<trigger>`` exists (a
  mount that answered, then its server died);
- ``hang:<group>``: that group's collector never returns from ``collect``;
- ``slow:<group>:<seconds>``: that group's collector takes ``<seconds>`` each call.

Used by tests/test_faults.py through ``JupyterProcess(app="tests.fault_launcher")``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from jupyter_server_ext import app as sysmon_app

NEVER = threading.Event()


def patch_statvfs(path: str, trigger: str | None = None) -> None:
    real = os.statvfs

    def statvfs(target: Any) -> os.statvfs_result:
        if os.fspath(target) == path and (trigger is None or os.path.exists(trigger)):
            NEVER.wait()
        return real(target)

    os.statvfs = statvfs  # type: ignore[assignment]


def patch_collector(group: str, seconds: float | None) -> None:
    original = sysmon_app.SysmonExtension.make_collectors

    def make_collectors(self: Any) -> list[Any]:
        collectors = original(self)
        for collector in collectors:
            if collector.name == group:
                real = collector.collect

                def collect(now: float, real: Any = real) -> dict[str, Any]:
                    if seconds is None:
                        NEVER.wait()
                    time.sleep(seconds or 0.0)
                    result: dict[str, Any] = real(now)
                    return result

                collector.collect = collect
        return collectors

    sysmon_app.SysmonExtension.make_collectors = make_collectors  # type: ignore[method-assign]


def main() -> None:
    for fault in filter(None, os.environ.get("SYSMON_FAULTS", "").split(",")):
        kind, _, rest = fault.partition(":")
        if kind == "statvfs":
            patch_statvfs(rest)
        elif kind == "statvfs-after":
            path, _, trigger = rest.partition(":")
            patch_statvfs(path, trigger)
        elif kind == "hang":
            patch_collector(rest, None)
        elif kind == "slow":
            group, _, seconds = rest.partition(":")
            patch_collector(group, float(seconds))
        else:
            raise SystemExit(f"unknown fault {fault!r}")
    from jupyter_server.serverapp import main as serve

    sys.exit(serve())


if __name__ == "__main__":
    main()
