"""A real Prometheus for the tests: Debian's ``prometheus`` binary on a free port of
127.0.0.1, with the scrape config a test gives, stopped by its pid. CI installs the
package (.ci/run); without it a test fails under ``CI`` and skips elsewhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .hub import free_port


def need(binary: str) -> str:
    """The binary's path; CI installs Debian's prometheus package, so there it must exist."""
    path = shutil.which(binary)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{binary} is missing: CI must install Debian's prometheus package")
        pytest.skip(f"{binary} is not installed (apt-get install prometheus)")
    return path


def until(condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Poll ``condition`` (bounded) until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.2)


class Prometheus:
    """Prometheus scraping every second with ``scrape_configs`` (YAML text, the list's
    items); its storage and log in ``tmp``."""

    def __init__(self, tmp: Path, scrape_configs: str) -> None:
        binary = need("prometheus")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        config = tmp / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n" + scrape_configs
        )
        self.log_path = tmp / "prometheus.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=tmp,
        )  # fmt: skip
        try:
            until(self.ready, f"prometheus ready ({self.log_path})")
        except BaseException:
            self.stop()
            raise

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(self.url + "-/ready", timeout=5) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = self.url + "api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as reply:
            answer = json.loads(reply.read())
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def promtool_remarks(body: bytes) -> list[str]:
    """What ``promtool check metrics`` says about ``body`` (empty: nothing)."""
    check = subprocess.run(
        [need("promtool"), "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    return (check.stdout + check.stderr).decode().splitlines()
