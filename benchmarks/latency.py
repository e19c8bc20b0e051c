"""Part 7: sample-to-pixel latency, in Chromium, at interval = 1 s.

A real ``jupyter server`` with the extension and JupyterLab (interval 1 s); a notebook
running ``%sysmon`` (the whole dashboard, default window) opened in Debian's
``/usr/bin/chromium`` through Playwright. In the page, a ``MutationObserver`` watches the
``d`` attribute of the CPU chart's bqplot line paths; for each change it records the
time of the next animation frame (the frame that paints it), as Unix milliseconds
(``performance.timeOrigin + performance.now()``, the machine's clock, as the sample's
``time`` is). A ``websockets`` client of the same server records every sample's ``seq``
and ``time`` and when the frame reached it.

A sample's latency is the first painted change at or after its ``time`` and before the
next sample's; a sample with none is counted as missed. Figures: p50 and p99 over the
samples (a missed one counts as never drawn); reference: the same samples' arrival at a
``websockets`` client (the server's part of the path).

Goal: p99 <= 250 ms on this machine, none missed.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from pathlib import Path
from typing import Any

from .common import AUTH, TOKEN, Bench, Result, jupyter_server, median, percentile

TITLE = "Sample-to-pixel latency in Chromium (interval 1 s)"
INTERVAL = 1.0
GOAL_MS = 250.0
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]

NOTEBOOK = {
    "cells": [
        {
            "cell_type": "code",
            "execution_count": None,
            "metadata": {},
            "outputs": [],
            "source": [source],
        }
        for source in ("%load_ext sysmon_nb", "%sysmon")
    ],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
    "nbformat": 4,
    "nbformat_minor": 5,
}

#: Installed in the page once the dashboard draws: records when each change is painted.
OBSERVE = """() => {
    const figure = document.querySelector('.jp-OutputArea-output .bqplot');
    window.__sysmonDraws = [];
    const now = () => performance.timeOrigin + performance.now();
    const observer = new MutationObserver((records) => {
        if (!records.some(r => r.target.classList && r.target.classList.contains('line'))) {
            return;
        }
        const changed = now();
        requestAnimationFrame(() => window.__sysmonDraws.push([changed, now()]));
    });
    observer.observe(figure, {subtree: true, attributes: true, attributeFilter: ['d']});
    return true;
}"""


class SampleClock:
    """A ``websockets`` client in a thread: each status frame's seq, time and arrival."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[tuple[int, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sample-clock", daemon=True)

    def __enter__(self) -> SampleClock:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        from websockets.sync.client import connect

        with connect(self.url + "?metrics=cpu", additional_headers={"Authorization": AUTH}) as ws:
            while not self._stop.is_set():
                try:
                    text = ws.recv(timeout=0.5)
                except TimeoutError:
                    continue
                arrived = time.time()
                frame = json.loads(text)
                if frame.get("type") == "status":
                    self.samples.append((int(frame["seq"]), float(frame["time"]), arrived))


def _wait(page: Any, predicate: Any, what: str, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        page.wait_for_timeout(250)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")


def latencies(
    samples: list[tuple[int, float, float]], draws: list[list[float]]
) -> tuple[list[float], int]:
    """Per sample (but the last), ms from its time to the first paint before the next
    sample's time; a sample with no paint in that span is missed (math.inf)."""
    painted = sorted(frame for _, frame in draws)
    ordered = sorted(samples, key=lambda s: s[0])
    out: list[float] = []
    for (_, at, _), (_, following, _) in itertools.pairwise(ordered):
        start_ms, end_ms = at * 1000.0, following * 1000.0
        first = next((p for p in painted if start_ms <= p < end_ms), None)
        out.append(math.inf if first is None else first - start_ms)
    return out, sum(1 for v in out if math.isinf(v))


def not_measured(why: str) -> list[Result]:
    return [
        Result(
            "latency",
            "sample-to-pixel latency p99",
            None,
            "ms",
            goal=f"<= {GOAL_MS:g} ms",
            met=None,
            reason=why,
        )
    ]


def run(bench: Bench) -> list[Result]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return not_measured("playwright is not installed (pip install -e '.[bench]')")
    if not CHROMIUM.exists():
        return not_measured(f"{CHROMIUM} is missing (apt-get install chromium)")
    count = bench.settings.latency_samples
    server = jupyter_server(
        bench.workdir,
        extensions={"jupyter_server_ext": True, "jupyterlab": True},
        sysmon={"interval": INTERVAL},
        extra={"LabApp": {"expose_app_in_browser": True}},
    )
    try:
        (server.log.parent / "latency.ipynb").write_text(json.dumps(NOTEBOOK))
        url = f"http://127.0.0.1:{server.port}/lab/tree/latency.ipynb?token={TOKEN}"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1300})
                page.goto(url, wait_until="domcontentloaded", timeout=90_000)
                _wait(page, lambda: page.evaluate("() => !!window.jupyterapp"), "JupyterLab")

                def kernel_idle() -> bool:
                    button = page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept")
                    if button.count():
                        button.first.click()
                    return bool(
                        page.evaluate(
                            """() => {
                            const w = window.jupyterapp.shell.currentWidget;
                            const k = w && w.sessionContext && w.sessionContext.session
                                && w.sessionContext.session.kernel;
                            return !!k && k.connectionStatus === 'connected'
                                && k.status === 'idle';
                            }"""
                        )
                    )

                _wait(page, kernel_idle, "an idle kernel")
                page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
                _wait(
                    page,
                    lambda: page.evaluate(
                        "() => !!document.querySelector('.jp-OutputArea-output .bqplot path.line')"
                    ),
                    "the dashboard",
                )
                page.evaluate(OBSERVE)
                page.wait_for_timeout(2000)  # settle: the history redraw is not a sample
                with SampleClock(server.ws_url) as clock:
                    page.evaluate("() => { window.__sysmonDraws = []; }")
                    deadline = time.monotonic() + count * INTERVAL + 30
                    while len(clock.samples) < count + 1 and time.monotonic() < deadline:
                        page.wait_for_timeout(200)
                    page.wait_for_timeout(int(INTERVAL * 1000))
                    draws = page.evaluate("() => window.__sysmonDraws")
                    samples = list(clock.samples)
            finally:
                browser.close()
    finally:
        server.stop()
    values, missed = latencies(samples, draws)
    if not values:
        return not_measured("no sample arrived")
    wire = [1000.0 * (arrived - at) for _, at, arrived in samples]
    p50, p99 = percentile(values, 50), percentile(values, 99)
    note = f"{len(values)} samples, {missed} not drawn before the next"
    return [
        Result(
            "latency",
            "sample-to-pixel latency p50",
            p50,
            "ms",
            reference=median(wire),
            reference_name="arrival at a websockets client, p50",
        ),
        Result(
            "latency",
            "sample-to-pixel latency p99",
            p99,
            "ms",
            reference=percentile(wire, 99),
            reference_name="arrival at a websockets client, p99",
            goal=f"<= {GOAL_MS:g} ms, none missed",
            met=p99 is not None and p99 <= GOAL_MS and missed == 0,
            reason=note,
        ),
    ]
