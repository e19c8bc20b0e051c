"""What users see: demo.ipynb run in JupyterLab and Notebook 7, in a real Chromium.

The test starts the server, opens the notebook in Debian's ``/usr/bin/chromium``
through Playwright (no browser download), runs every cell, and watches bqplot redraw
its lines between two samples. Screenshots go to ``build/screenshots/``.

The server also loads :mod:`tests.event_seam`, a documented test seam that adds one
``oom_kill`` event (naming the demo notebook's kernel) to the stream, so the test can
see the widget show it; the kernels table's notebook path is the server's own
``jupyter.kernel_usage[].path``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from .servers import ROOT, TOKEN, isolated_env

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
SHOTS = ROOT / "build" / "screenshots"

LINES_D = """() => Array.from(document.querySelectorAll('.bqplot path.line'))
    .map(p => p.getAttribute('d') || '')"""


def need_chromium() -> None:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: CI must install Debian's chromium")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")


def wait(page: Any, predicate: Any, what: str, timeout: float = 60.0) -> Any:
    """Poll ``predicate()`` (bounded) while the page keeps running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        page.wait_for_timeout(250)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def _accept_dialogs(page: Any) -> None:
    """Accept the kernel chooser (a fresh JupyterLab asks) and any other dialog."""
    button = page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept")
    if button.count():
        button.first.click()


def wait_kernel_idle(page: Any) -> None:
    """Wait (bounded) until the application (exposed in the browser) shows a notebook
    whose kernel is connected and idle, accepting the kernel chooser on the way."""
    wait(
        page,
        lambda: page.evaluate("() => !!(window.jupyterapp && window.jupyterapp.shell)"),
        "the application to load",
    )

    def kernel_ready() -> bool:
        _accept_dialogs(page)
        return bool(page.locator(".jp-Notebook .jp-Cell").count()) and bool(
            page.evaluate(
                """() => {
                const w = window.jupyterapp.shell.currentWidget;
                const k = w && w.sessionContext && w.sessionContext.session
                    && w.sessionContext.session.kernel;
                return !!k && k.connectionStatus === 'connected' && k.status === 'idle';
                }"""
            )
        )

    wait(page, kernel_ready, "the notebook and an idle kernel", 90)


def _text(page: Any, selector: str) -> str:
    """The text of the first element matching ``selector``, or ""."""
    found = page.locator(selector)
    return str(found.first.inner_text()) if found.count() else ""


def run_demo_in_browser(url: str, shot: Path) -> tuple[list[str], list[str]]:
    """Open ``url`` (demo.ipynb), run all cells, return bqplot lines before/after a sample."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1900})
            page.goto(url, wait_until="domcontentloaded", timeout=90_000)
            wait_kernel_idle(page)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            wait(
                page,
                lambda: page.evaluate(LINES_D) and all(page.evaluate(LINES_D)[:1]),
                "bqplot lines with data",
                90,
            )
            page.add_style_tag(content=".Toastify { display: none !important; }")
            # The kernels table names the demo notebook (the server's kernel_usage[].path).
            kernels = wait(
                page,
                lambda: "demo.ipynb" in (t := _text(page, ".sysmon-kernels")) and t,
                "the kernels table to show demo.ipynb (needs kernel_usage[].path)",
                60,
            )
            assert "idle" in kernels or "busy" in kernels, kernels
            # The seam's oom_kill event, as the widget words it.
            wait(
                page,
                lambda: (
                    "kernel of demo.ipynb killed: out of memory" in _text(page, ".sysmon-alerts")
                ),
                "the OOM event in the widget",
                60,
            )
            first = page.evaluate(LINES_D)
            second = wait(
                page,
                lambda: (d := page.evaluate(LINES_D)) != first and d,
                "the lines to change with a new sample",
                60,
            )
            # The first dashboard, in view, for the picture.
            dashboard = page.locator(".jp-OutputArea-output:has(.bqplot)").first
            dashboard.scroll_into_view_if_needed()
            page.wait_for_timeout(1500)
            shot.parent.mkdir(parents=True, exist_ok=True)
            dashboard.screenshot(path=str(shot))
            page.screenshot(path=str(shot.with_name(shot.stem + "-page.png")))
            errors = page.locator(".jp-OutputArea-output[data-mime-type*='error']").count()
            assert errors == 0, "a cell failed in the browser"
            # %sysmon status: the kernel found its own server through the runtime files.
            status = page.locator(".jp-OutputArea-output:has-text('<sysmon monitor')").first
            assert "(running server (pid" in status.inner_text()
            return first, second
        finally:
            browser.close()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("app", ["jupyterlab", "notebook"])
def test_demo_notebook_draws_moving_charts_in_chromium(
    app: str, jupyter: Any, tmp_path: Path
) -> None:
    need_chromium()
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(ROOT / "notebooks" / "demo.ipynb", root / "demo.ipynb")
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    server = jupyter(
        "--LabApp.expose_app_in_browser=True" if app == "jupyterlab" else "--expose-app-in-browser",
        "--ServerApp.jpserver_extensions={'tests.event_seam': True}",
        app=app,
        root_dir=root,
        interval=0.5,
        env=isolated_env(tmp_path, PYTHONPATH=pythonpath),
    )
    path = "lab/tree/demo.ipynb" if app == "jupyterlab" else "notebooks/demo.ipynb"
    shot = SHOTS / f"{app}.png"
    first, second = run_demo_in_browser(f"{server.url}{path}?token={TOKEN}", shot)
    assert len(first) >= 4  # CPU, memory, network, disk at least
    assert first != second
    assert shot.stat().st_size > 10_000
