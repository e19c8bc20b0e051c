"""sysmon-nb: live system monitoring for Jupyter administrators.

The notebook side. ``import sysmon_nb`` stays cheap: nothing heavy is imported until
it is used. The wire contract is :mod:`sysmon_nb.protocol`; ``%load_ext sysmon_nb``
adds the ``%sysmon`` magic, and :func:`show` is its Python twin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .fleet_table import FleetView
    from .magic import Monitor

__all__ = ["__version__", "load_ipython_extension", "show", "show_fleet"]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext sysmon_nb``: register the ``%sysmon`` magic."""
    from .magic import SysmonMagics

    ipython.register_magics(SysmonMagics)


def show(*args: Any, **kwargs: Any) -> Monitor:
    """Show a live dashboard of this kernel's Jupyter server (see ``%sysmon``)."""
    from .magic import show as _show

    return _show(*args, **kwargs)


def show_fleet(*args: Any, **kwargs: Any) -> FleetView:
    """Show a live table of every server of a JupyterHub (see ``%sysmon --fleet``)."""
    from .fleet_table import show_fleet as _show_fleet

    return _show_fleet(*args, **kwargs)
