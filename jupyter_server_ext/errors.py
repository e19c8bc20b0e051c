"""The server extension's exceptions.

::

    SysmonError                 base of everything raised on purpose here
    ├── ConfigError             a configuration the extension refuses to start with
    ├── CollectorError          a collector could not read its source this tick;
    │                           the message is shown to admins in ``errors``
    └── InvalidCredentials      a bearer JWT that does not verify (refused with 403)
"""

from __future__ import annotations

from traitlets import TraitError


class SysmonError(Exception):
    """Base class of the extension's own errors."""


class ConfigError(SysmonError, TraitError):
    """A configuration value the extension cannot start with."""


class CollectorError(SysmonError):
    """A collector failed this tick; ``str(err)`` is safe to send to administrators."""


class InvalidCredentials(SysmonError):
    """A bearer JWT that does not verify; ``str(err)`` says why (for the server log)."""
