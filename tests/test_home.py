"""Home volumes, for real: a tmpfs mounted by the test is a real server's root_dir.

psutil's ``disk_partitions(all=False)`` hides tmpfs (as it hides NFS, CephFS, CIFS and
FUSE), so the volume shows up only because it holds the server's root_dir. One server
(tests/fault_launcher.py, so that ``statvfs`` on the volume can be made to hang later)
serves the module, in order: the volume is listed as home with its size; the "home
volume" alert fires when it is filled past 90 % and ends when it is emptied; then its
``statvfs`` hangs (a dead NFS server) and the stream goes on with the volume ``stuck``,
still ``home``, with its last numbers, and a ``collector_stuck`` event names it.

Needs root to mount; skipped (saying so) where mounting is impossible.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from .servers import ROOT, TOKEN, JupyterProcess, isolated_env

INTERVAL = 0.5
VOLUME_BYTES = 8 * 2**20
WINDOW_S = 4.0


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh 8 MiB tmpfs, unmounted at the end."""
    path = tmp_path_factory.mktemp("home") / "volume"
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={VOLUME_BYTES}", "sysmon-test-home", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, volume: Path) -> Iterator[JupyterProcess]:
    """A server whose root_dir is the volume and whose $HOME is elsewhere (on the
    filesystem of the test's temporary files)."""
    tmp = tmp_path_factory.mktemp("home-server")
    home = tmp / "user-home"
    home.mkdir()
    trigger = tmp / "hang-now"
    env = isolated_env(
        tmp,
        HOME=str(home),
        PYTHONPATH=str(ROOT),
        SYSMON_FAULTS=f"statvfs-after:{volume}:{trigger}",
    )
    process = JupyterProcess(
        tmp, app="tests.fault_launcher", root_dir=volume, env=env, interval=INTERVAL
    )
    process.trigger = trigger  # type: ignore[attr-defined]
    process.home = home  # type: ignore[attr-defined]
    yield process
    process.stop()


def status(server: JupyterProcess, metrics: str) -> dict[str, Any]:
    code, body = server.get(f"sysmon/api/status?metrics={metrics}")
    assert code == 200, body
    result: dict[str, Any] = json.loads(body)
    return result


def wait_for(server: JupyterProcess, metrics: str, condition: Any, timeout: float = 20.0) -> Any:
    """The first REST answer for which ``condition`` holds (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = status(server, metrics)
        if condition(answer):
            return answer
        assert time.monotonic() < deadline, answer
        time.sleep(0.1)


def by_path(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["path"]: m for m in answer["disk"]["mounts"]}


@pytest.mark.timeout(120)
def test_the_root_dir_volume_is_home_with_its_size(server: JupyterProcess, volume: Path) -> None:
    mounts = by_path(status(server, "disk"))
    assert mounts[str(volume)] == {
        "path": str(volume),
        "fstype": "tmpfs",
        "total_bytes": VOLUME_BYTES,
        "used_bytes": 0,
        "free_bytes": VOLUME_BYTES,
        "percent": 0.0,
        "home": True,
        "stuck": False,
    }
    # home is exactly the filesystems holding the root_dir and $HOME (the latter on
    # whatever holds the test's temporary files), every other mount is not
    home_devices = {os.stat(volume).st_dev, os.stat(server.home).st_dev}  # type: ignore[attr-defined]
    for path, mount in mounts.items():
        assert mount["home"] is (os.stat(path).st_dev in home_devices), mount
    assert sum(m["home"] for m in mounts.values()) == 2


@pytest.mark.timeout(120)
def test_a_home_volume_past_90_percent_raises_the_alert(
    server: JupyterProcess, volume: Path
) -> None:
    def active(answer: dict[str, Any]) -> list[str]:
        return [a["name"] for a in answer["alerts"]["active"]]

    before = status(server, "disk,alerts")
    others = [m for m in before["disk"]["mounts"] if m["home"] and m["path"] != str(volume)]
    assert all(m["percent"] < 90 for m in others), f"this machine's home is full: {others}"
    assert "home volume" not in active(before)
    filler = volume / "filler"
    filler.write_bytes(b"\0" * int(0.95 * VOLUME_BYTES))
    try:
        answer = wait_for(server, "disk,alerts", lambda a: "home volume" in active(a))
        alert = next(a for a in answer["alerts"]["active"] if a["name"] == "home volume")
        assert alert["group"] == "disk" and alert["threshold"] == 90
        assert 90 <= alert["value"] <= 100
        assert by_path(answer)[str(volume)]["free_bytes"] <= 0.06 * VOLUME_BYTES
    finally:
        filler.unlink()
    wait_for(server, "disk,alerts", lambda a: "home volume" not in active(a))


@pytest.mark.timeout(120)
def test_a_hung_home_volume_stays_listed_stuck_and_the_stream_goes_on(
    server: JupyterProcess, volume: Path
) -> None:
    last_good = by_path(status(server, "disk"))[str(volume)]
    url = f"ws://127.0.0.1:{server.port}/sysmon/ws?metrics=cpu,disk,alerts"
    frames: list[dict[str, Any]] = []
    with connect(url, additional_headers={"Authorization": f"token {TOKEN}"}) as ws:
        server.trigger.touch()  # type: ignore[attr-defined]
        end = time.monotonic() + WINDOW_S
        while (left := end - time.monotonic()) > 0:
            try:
                obj = json.loads(ws.recv(timeout=left))
            except TimeoutError:
                break
            if obj["type"] == "status":
                frames.append(obj)
    assert len(frames) >= 0.75 * WINDOW_S / INTERVAL, len(frames)
    assert all("cpu" in f and not f["stale"] for f in frames), [f["stale"] for f in frames]
    mount = by_path(frames[-1])[str(volume)]
    assert mount == {**last_good, "stuck": True}  # still home, with its last numbers
    assert mount["home"] is True and mount["total_bytes"] == VOLUME_BYTES
    events = [e for f in frames for e in f["alerts"]["events"] if e["kind"] == "collector_stuck"]
    assert events == [
        {
            "time": events[0]["time"],
            "kind": "collector_stuck",
            "message": f"filesystem call on {volume} did not answer within {INTERVAL:g} s",
            "group": "disk",
            "path": str(volume),
        }
    ]
