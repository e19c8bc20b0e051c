"""Both notebooks, top to bottom, by nbclient against a real server, having received data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell

from .servers import ROOT, TOKEN, execute, isolated_env, outputs_text

CHECK_DEMO = """
import asyncio, sysmon_nb.magic as m
for _ in range(600):
    if len(m.running) == 2 and all(len(x.dashboard.samples) >= 3 for x in m.running):
        break
    await asyncio.sleep(0.05)
for x in m.running:
    print(x.client.state.phase, len(x.dashboard.samples), sorted(x.dashboard.charts))
"""


@pytest.mark.timeout(150)
def test_demo_notebook_runs_and_its_dashboards_receive_data(jupyter: Any, tmp_path: Path) -> None:
    server = jupyter(interval=0.3)
    nb = nbformat.read(ROOT / "notebooks" / "demo.ipynb", as_version=4)
    nb.cells.append(new_code_cell(CHECK_DEMO))
    execute(nb, tmp_path, isolated_env(tmp_path, SYSMON_URL=server.url, SYSMON_TOKEN=TOKEN))
    lines = outputs_text(nb.cells[-1]).splitlines()
    assert len(lines) == 2, lines
    full, small = (line.split(" ", 2) for line in lines)
    assert full[0] == small[0] == "connected"
    assert int(full[1]) >= 3 and int(small[1]) >= 3
    assert full[2] == "['cpu', 'disk', 'gpu', 'memory', 'network']"
    assert small[2] == "['cpu', 'memory']"
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert errors == []


@pytest.mark.timeout(150)
def test_admin_notebook_runs_with_status_client(jupyter: Any, tmp_path: Path) -> None:
    server = jupyter(interval=0.3)
    nb = nbformat.read(ROOT / "notebooks" / "admin-dashboard.ipynb", as_version=4)
    nb.cells.append(new_code_cell("print(len(samples), len(rows), client.state.phase)"))
    execute(nb, tmp_path, isolated_env(tmp_path, SYSMON_URL=server.url, SYSMON_TOKEN=TOKEN))
    count, rows, _ = outputs_text(nb.cells[-1]).split()
    assert int(count) == 10 and int(rows) == 10
    texts = [outputs_text(c) for c in nb.cells if c.cell_type == "code"]
    assert any("10 samples from" in t for t in texts)
    tables = [
        o
        for c in nb.cells
        for o in c.get("outputs", [])
        if "text/html" in o.get("data", {}) and "cpu %" in o["data"]["text/html"]
    ]
    assert tables, "the history table was not shown"
    charts = [
        o
        for c in nb.cells
        for o in c.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    assert len(charts) >= 2
