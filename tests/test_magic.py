"""%sysmon in a real kernel (nbclient) against a real server process."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from websockets.asyncio.server import serve

from sysmon_nb.discovery import Target
from sysmon_nb.magic import Monitor

from . import jwt_tools
from .conftest import eventually
from .servers import TOKEN, execute, free_port, isolated_env, outputs_text

WAIT_FOR = """
import asyncio, json, psutil, sysmon_nb.magic as m

async def wait_for(condition, timeout=30.0):
    for _ in range(int(timeout / 0.05)):
        if condition():
            return True
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")

def sysmon_tasks():
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("sysmon ")]

def sockets_to(port):
    proc = psutil.Process()
    connections = getattr(proc, "net_connections", None) or proc.connections  # psutil < 6
    return [c for c in connections(kind="tcp")
            if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED]
"""


def notebook(*sources: str) -> Any:
    return new_notebook(cells=[new_code_cell(s) for s in sources])


@pytest.mark.timeout(150)
def test_sysmon_runs_between_cells_and_stop_leaves_nothing_behind(
    jupyter: Any, tmp_path: Path
) -> None:
    server = jupyter(interval=0.3)
    env = isolated_env(tmp_path, SYSMON_URL=server.url, SYSMON_TOKEN=TOKEN)
    nb = notebook(
        "%load_ext sysmon_nb",
        WAIT_FOR,
        "%sysmon --metrics cpu,memory --window 1m",
        # the task runs while the kernel is idle between cells
        "await wait_for(lambda: m.running and len(m.running[0].dashboard.samples) >= 3)\n"
        f"print(len(sysmon_tasks()), len(sockets_to({server.port})))",
        "%sysmon status",
        "%sysmon stop",
        f"await wait_for(lambda: not sysmon_tasks() and not sockets_to({server.port}))\n"
        "print(json.dumps({'tasks': len(sysmon_tasks()), 'running': len(m.running)}))",
    )
    execute(nb, tmp_path, env)
    cells = nb.cells
    assert outputs_text(cells[3]).split() == ["1", "1"]
    assert "(SYSMON_URL): connected" in outputs_text(cells[4])
    assert "stopped 1 dashboard(s)" in outputs_text(cells[5])
    assert json.loads(outputs_text(cells[6])) == {"tasks": 0, "running": 0}
    # the widget was displayed, with its charts
    shown = cells[2].outputs[0]["data"]
    assert "application/vnd.jupyter.widget-view+json" in shown
    # the server saw the client leave and serves on
    assert server.get("sysmon/api/status")[0] == 200


@pytest.mark.timeout(150)
def test_refused_dashboard_says_why_and_a_good_one_still_works(
    jupyter: Any, tmp_path: Path
) -> None:
    server = jupyter(interval=0.3)
    env = isolated_env(tmp_path, SYSMON_URL=server.url, SYSMON_TOKEN="wrong", GOOD_TOKEN=TOKEN)
    nb = notebook(
        "%load_ext sysmon_nb",
        WAIT_FOR,
        "%sysmon\nbad = m.running[-1]",
        "await wait_for(lambda: bad.task.done())\n"
        "print(bad.client.state.describe()); print(bad.dashboard.header.value)",
        "%sysmon --token-env GOOD_TOKEN --metrics cpu\ngood = m.running[-1]",
        "await wait_for(lambda: len(good.dashboard.samples) >= 2)\nprint(good.client.state.phase)",
        "%sysmon status",
        "%sysmon stop",
    )
    execute(nb, tmp_path, env)
    refused = outputs_text(nb.cells[3])
    assert refused.startswith("refused: HTTP 403")
    assert "refused: HTTP 403" in refused.splitlines()[1]  # shown in the header
    assert outputs_text(nb.cells[5]).strip() == "connected"
    status = outputs_text(nb.cells[6]).splitlines()
    assert "refused: HTTP 403" in status[0] and "connected" in status[1]
    assert "stopped 2 dashboard(s)" in outputs_text(nb.cells[7])


USAGE_ERRORS = [
    ("%sysmon --metrics cpu,bogus", "unknown metric group(s) 'bogus'"),
    ("%sysmon --window soon", "window must be seconds"),
    ("%sysmon --history -3", "history must be >= 0"),
    ("%sysmon --token-env MISSING_VAR", "MISSING_VAR is not set"),
    ("%sysmon restart", "invalid choice"),
    ("%sysmon", "cannot find the sysmon server"),
]


@pytest.mark.timeout(120)
def test_usage_errors_are_messages_not_tracebacks(tmp_path: Path) -> None:
    nb = notebook("%load_ext sysmon_nb", *(line for line, _ in USAGE_ERRORS), "print('alive')")
    execute(nb, tmp_path, isolated_env(tmp_path), allow_errors=True)
    for cell, (line, message) in zip(nb.cells[1:], USAGE_ERRORS):
        text = outputs_text(cell)
        assert "UsageError" in text, (line, cell.outputs)
        assert message in text, (line, text)
        assert "Traceback" not in text
    assert outputs_text(nb.cells[-1]).strip() == "alive"


def test_the_notebook_format_is_valid() -> None:
    root = Path(__file__).resolve().parent.parent / "notebooks"
    for path in root.glob("*.ipynb"):
        nbformat.validate(nbformat.read(path, as_version=4))


# -- why a monitor stopped, in process ----------------------------------------------------


async def test_any_exception_ends_in_a_visible_stopped_reason_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not only ClientError: whatever ends the client task (here a broken backoff, raised
    while retrying a refused connection) is shown and logged once with its traceback."""
    caplog.set_level(logging.INFO, "sysmon_nb")
    monitor = Monitor(Target(f"http://127.0.0.1:{free_port()}/", "t", "test"), metrics=["cpu"])
    monitor.client.backoff = lambda attempt: 1 / 0
    monitor.start()
    try:
        await eventually(lambda: monitor.task is not None and monitor.task.done())
    finally:
        monitor.stop()
    reason = "stopped: ZeroDivisionError: division by zero"
    assert reason in monitor.dashboard.header.value
    assert reason in repr(monitor)  # what %sysmon status prints
    logged = [r for r in caplog.records if r.name == "sysmon_nb.magic"]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR
    assert logged[0].exc_info is not None and logged[0].exc_info[0] is ZeroDivisionError


async def test_a_client_error_is_shown_and_logged_with_its_cause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An endpoint that answers the upgrade with a plain 200 cannot be a sysmon server."""

    def plain_page(connection: Any, request: Any) -> Any:
        return connection.respond(200, "just a page\n")

    caplog.set_level(logging.INFO, "sysmon_nb")
    async with serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0, process_request=plain_page) as s:
        port = next(iter(s.sockets)).getsockname()[1]
        monitor = Monitor(Target(f"http://127.0.0.1:{port}/", "t", "test"), metrics=["cpu"])
        monitor.start()
        try:
            await eventually(lambda: monitor.task is not None and monitor.task.done())
        finally:
            monitor.stop()
    assert "stopped: cannot connect to" in monitor.dashboard.header.value
    assert "HTTP 200" in repr(monitor)
    logged = [r for r in caplog.records if r.name == "sysmon_nb.magic"]
    assert len(logged) == 1 and logged[0].exc_info is not None


# -- JWTs from a real kernel -------------------------------------------------------------


@pytest.mark.timeout(150)
def test_a_jwt_admin_gets_samples_and_an_expired_jwt_is_refused_for_good(
    jupyter: Any, tmp_path: Path
) -> None:
    config = tmp_path / "jwt_config.json"
    config.write_text(
        json.dumps(
            {
                "ServerApp": {
                    "identity_provider_class": "jupyter_server_ext.auth.JWTIdentityProvider"
                },
                "JWTIdentityProvider": jwt_tools.provider_config(),
            }
        )
    )
    server = jupyter(f"--config={config}", interval=0.3)
    valid = jwt_tools.token()
    env = isolated_env(
        tmp_path,
        SYSMON_URL=server.url,
        SYSMON_TOKEN=valid,
        VALID_JWT=valid,
        EXPIRED_JWT=jwt_tools.token(exp=int(time.time()) - 120),
    )
    nb = notebook(
        "%load_ext sysmon_nb",
        WAIT_FOR,
        "%sysmon --metrics cpu\ngood = m.running[-1]",
        "await wait_for(lambda: len(good.dashboard.samples) >= 2)\n"
        "print(good.client.state.describe())",
        "%sysmon --token-env EXPIRED_JWT --metrics cpu\nexpired = m.running[-1]",
        "await wait_for(lambda: expired.task.done())\n"
        "print(expired.client.state.describe()); print(expired.dashboard.header.value)",
        "%sysmon --token-env VALID_JWT --scheme token --metrics cpu\nforced = m.running[-1]",
        "await wait_for(lambda: forced.task.done())\nprint(forced.client.state.describe())",
        "%sysmon status",
        "%sysmon stop",
    )
    execute(nb, tmp_path, env)
    assert outputs_text(nb.cells[3]).strip() == "connected"  # sent as Bearer: admitted
    expired = outputs_text(nb.cells[5]).splitlines()
    assert expired[0].startswith("refused: credentials expired (HTTP 403")
    assert "refused: credentials expired" in expired[1]  # in the header
    # --scheme token sends the JWT as a Jupyter token: not the server's, so refused.
    assert outputs_text(nb.cells[7]).strip().startswith("refused: HTTP 403")
    status = outputs_text(nb.cells[8]).splitlines()
    assert "connected" in status[0] and "refused: credentials expired" in status[1]
    assert "stopped 3 dashboard(s)" in outputs_text(nb.cells[9])
    # The expired JWT was tried once, never again.
    assert server.log_path.read_text().count("refused a bearer JWT") == 1


FLEET_USAGE_ERRORS = [
    ("%sysmon --fleet", "the fleet view needs the hub's public URL and a token"),
    ("%sysmon --fleet --url http://127.0.0.1:9/", "set SYSMON_HUB_URL and SYSMON_HUB_TOKEN"),
    ("%sysmon --fleet --url ftp://hub/ --token-env HUB_TOKEN", "not a hub URL: 'ftp://hub/'"),
]


@pytest.mark.timeout(120)
def test_fleet_usage_errors_are_messages_and_start_nothing(tmp_path: Path) -> None:
    nb = notebook(
        "%load_ext sysmon_nb",
        *(line for line, _ in FLEET_USAGE_ERRORS),
        "import asyncio, sysmon_nb.fleet_table as ft\n"
        "print(len(ft.running_fleets),"
        " len([t for t in asyncio.all_tasks() if t.get_name().startswith('sysmon')]))",
        "%sysmon status",
    )
    execute(nb, tmp_path, isolated_env(tmp_path, HUB_TOKEN="t"), allow_errors=True)
    for cell, (line, message) in zip(nb.cells[1:], FLEET_USAGE_ERRORS):
        text = outputs_text(cell)
        assert "UsageError" in text and message in text, (line, text)
        assert "Traceback" not in text
        assert all(o["output_type"] != "display_data" for o in cell.outputs), line
    assert outputs_text(nb.cells[-2]).split() == ["0", "0"]
    assert outputs_text(nb.cells[-1]).strip() == "sysmon: no dashboard running"
