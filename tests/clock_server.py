"""``python -m tests.clock_server [jupyter_server args]``: jupyter_server with a wall clock
that a test can step.

``time.time`` becomes the real clock plus an offset in seconds, read from the file named
by ``$SYSMON_TEST_CLOCK_OFFSET`` (polled every 50 ms; missing or empty means 0). It is
replaced before jupyter_server or the extension is imported, so the whole process sees
the step, as it would see an administrator or NTP stepping the system clock; monotonic
clocks (the event loop's, the sampler's ticks) go on undisturbed, as they do then.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

POLL_S = 0.05

_real_time = time.time
_offset_s = 0.0


def _read_offset(path: Path) -> float:
    try:
        return float(path.read_text().strip() or 0.0)
    except (OSError, ValueError):
        return _offset_s


def _follow(path: Path) -> None:
    global _offset_s
    while True:
        _offset_s = _read_offset(path)
        time.sleep(POLL_S)


def stepped_time() -> float:
    """The real wall clock plus the offset the test set."""
    return _real_time() + _offset_s


def main() -> None:
    global _offset_s
    path = Path(os.environ["SYSMON_TEST_CLOCK_OFFSET"])
    _offset_s = _read_offset(path)
    time.time = stepped_time
    threading.Thread(target=_follow, args=(path,), name="clock-offset", daemon=True).start()

    from jupyter_server.serverapp import main as serve

    sys.exit(serve())


if __name__ == "__main__":
    main()
