"""sysmon-nb's Jupyter server extension: samples the machine and streams it to admins.

Enabled by ``jupyter-config/jupyter_server_config.d/sysmon_nb.json`` on install;
configured through ``c.SysmonExtension``.
"""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .app import SysmonExtension

    return [{"module": "jupyter_server_ext", "app": SysmonExtension}]
