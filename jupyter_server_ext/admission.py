"""Admission to sysmon's routes: the checks every sysmon handler shares.

jupyter_server has authenticated the request (its identity provider; under JupyterHub
wrapped to admit ``custom:sysmon:read`` readers, :mod:`.hub_scopes`; a bearer JWT only
here, :class:`.jwt_auth.MonitoringRoute`). Then, in order: the server's authorizer for
``read`` on ``sysmon`` (not for a hub reader, whom the hub itself vouched for), and the
admin policy (:mod:`.auth`). Refusals are JSON, before any upgrade; the WebSocket route
then takes a connection slot (:mod:`.slots`).

Refusals and failures are logged with the request's URI (tornado's ``log_exception``
and ``_request_summary``): here with every credential in its query (``token=`` and its
kin) replaced by ``[secret]``, and never the raw request.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from jupyter_core.utils import ensure_async
from tornado import web
from tornado.log import app_log, gen_log

from .hub_scopes import HubReader, with_readers
from .jwt_auth import MonitoringRoute

if TYPE_CHECKING:
    from .app import SysmonExtension

__all__ = ["ADMIN", "AUTH_RESOURCE", "READER", "SysmonRoute", "scrub_uri"]

AUTH_RESOURCE = "sysmon"

#: How a request was admitted: as an administrator, or as a read-only hub reader.
ADMIN = "admin"
READER = "reader"

#: Query parameters whose names contain one of these are credentials (jupyter_server's
#: and JupyterHub's list: ``token``, ``auth``, OAuth's ``code`` and ``state``...).
SECRET_PARAMS = ("token", "auth", "key", "code", "state", "xsrf", "secret", "password")


def scrub_uri(uri: str, extra: tuple[str, ...] = ()) -> str:
    """``uri`` with the value of every credential-like query parameter replaced by
    ``[secret]`` (also ``extra`` names: jupyter_server's ``extra_log_scrub_param_keys``)."""
    parts = urlsplit(uri)
    if not parts.query:
        return uri
    names = (*SECRET_PARAMS, *extra)
    fields = []
    for field in parts.query.split("&"):
        key, sep, _value = field.partition("=")
        if sep and any(name in key.lower() for name in names):
            field = f"{key}=[secret]"
        fields.append(field)
    return urlunsplit(parts._replace(query="&".join(fields)))


class SysmonRoute(MonitoringRoute):
    """Mixin of every sysmon handler: admission, and scrubbed request summaries."""

    extension: SysmonExtension

    def initialize(self, extension: SysmonExtension) -> None:
        self.extension = extension

    @property
    def identity_provider(self) -> Any:
        """The server's, admitting ``custom:sysmon:read`` hub tokens here only."""
        return with_readers(super().identity_provider, self.extension.readers)  # type: ignore[misc]

    def _request_summary(self) -> str:
        """What tornado logs of a request it answers 4xx/5xx with a message (and of an
        uncaught exception): the URI without the credentials a client put in it."""
        handler: Any = self
        request = handler.request
        extra = tuple(handler.settings.get("extra_log_scrub_param_keys") or ())
        return f"{request.method} {scrub_uri(request.uri or '', extra)} ({request.remote_ip})"

    def log_exception(
        self,
        typ: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """tornado's, less the raw request it adds to an uncaught exception's line."""
        if isinstance(value, web.HTTPError):
            if value.log_message:
                gen_log.warning(
                    "%d %s: " + value.log_message,
                    value.status_code,
                    self._request_summary(),
                    *value.args,
                )
        else:
            app_log.error("Uncaught exception %s", self._request_summary(), exc_info=value)

    async def _authorize_admin(self) -> str:
        """:data:`ADMIN` or :data:`READER`; raises 403 with the reason otherwise."""
        handler: Any = self
        user = handler.current_user
        if isinstance(user, HubReader):
            return READER  # the hub granted custom:sysmon:read for this server (hub_scopes)
        allowed = await ensure_async(
            handler.authorizer.is_authorized(handler, user, "read", AUTH_RESOURCE)
        )
        if not allowed:
            raise web.HTTPError(403, "not authorized to read system status")
        decision = self.extension.policy.check(user)
        if not decision.allowed:
            handler.log.warning(
                "sysmon: refused %s: %s", handler.request.remote_ip, decision.reason
            )
            raise web.HTTPError(403, decision.reason)
        return ADMIN
