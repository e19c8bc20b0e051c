"""sysmon-nb: live system monitoring for Jupyter administrators.

The notebook side. ``import sysmon_nb`` stays cheap: nothing heavy is imported until
it is used. The wire contract is :mod:`sysmon_nb.protocol`.
"""

from __future__ import annotations

from ._version import __version__

__all__ = ["__version__"]
