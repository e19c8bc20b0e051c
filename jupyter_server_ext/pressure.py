"""Pressure stall information (PSI): the share of time tasks waited for a resource.

The kernel exposes it for the whole host in ``/proc/pressure/{cpu,memory,io}`` and, on
cgroup v2, for each cgroup in ``<cgroup>/{cpu,memory,io}.pressure``. Each file reads::

    some avg10=1.23 avg60=0.50 avg300=0.10 total=12345
    full avg10=0.00 avg60=0.00 avg300=0.00 total=0

We report ``some avg10``: the percent of the last 10 s in which at least one task was
stalled on the resource. ``None`` means the kernel has no PSI there (an old kernel, a
kernel booted with ``psi=0``, which answers ``EOPNOTSUPP``, or cgroup v1).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import CollectorError
from .procfs import HeldFile, read_bytes

#: Where the host's PSI files live.
HOST_PRESSURE = Path("/proc/pressure")


def some_avg10(text: str | bytes) -> float | None:
    """The ``some avg10`` percent of a PSI file's text; ``None`` if it has none."""
    data = text.encode() if isinstance(text, str) else text
    for line in data.splitlines():
        kind, _, fields = line.partition(b" ")
        if kind != b"some":
            continue
        for item in fields.split():
            name, _, value = item.partition(b"=")
            if name == b"avg10":
                try:
                    return float(value)
                except ValueError:
                    return None
    return None


def read_some_avg10(path: str | os.PathLike[str] | HeldFile) -> float | None:
    """``some avg10`` of the PSI file at ``path`` (or of a :class:`~.procfs.HeldFile`);
    ``None`` where the kernel has none. A file that exists but cannot be read for
    another reason is a :class:`CollectorError`."""
    try:
        if isinstance(path, HeldFile):
            data = path.read()
            if data is None:
                return None
        else:
            data = read_bytes(os.fspath(path))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        if err.errno == errno.EOPNOTSUPP:  # PSI compiled in but switched off (psi=0)
            return None
        where = path.path if isinstance(path, HeldFile) else path
        raise CollectorError(f"cannot read {where}: {err.strerror or err}") from err
    return some_avg10(data)


class HostPressure:
    """Reads the host's PSI for one resource (``cpu``, ``memory`` or ``io``).

    Once the kernel answers that it has no PSI, the file is not tried again: that does
    not change while the machine runs."""

    def __init__(self, resource: str, root: str | os.PathLike[str] = HOST_PRESSURE) -> None:
        self._path = Path(root) / resource
        self._file = HeldFile(self._path)
        self._absent = False

    def read(self) -> float | None:
        if self._absent:
            return None
        value = read_some_avg10(self._file)
        if value is None and not self._path.exists():
            self._absent = True
            self._file.close()
        return value

    def close(self) -> None:
        """Close the file kept open between reads. Idempotent."""
        self._file.close()
