"""The benchmark harness runs end to end on tiny sizes (its figures mean nothing here:
this checks that ``make bench`` works, not how fast anything is)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import PARTS
from benchmarks.common import Result, connections, delivery
from benchmarks.latency import CHROMIUM, latencies

ROOT = Path(__file__).resolve().parent.parent


def test_every_part_of_the_issue_has_a_module_and_a_title() -> None:
    assert list(PARTS) == [
        "sampler", "fanout", "compression", "slow", "peers", "widget", "idle", "latency",
        "fleet", "prometheus", "flood", "history",
    ]  # fmt: skip
    listing = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert [line.split()[0] for line in listing.splitlines()] == list(PARTS)


def test_a_result_says_its_ratio_and_verdict() -> None:
    result = Result("p", "cpu", 12.0, "us", 48.0, "floor", goal="<= 25 us", met=True)
    assert result.ratio == 0.25
    line = result.line()
    assert "12 us" in line and "ratio 0.25x" in line and "MET" in line
    missed = Result("p", "rss", 30.0, "KiB", goal="<= 20 KiB", met=False, reason="why")
    assert "MISSED - why" in missed.line()


def test_delivery_counts_lost_and_reordered_frames() -> None:
    def conn(seqs: list[int], out_of_order: int = 0) -> dict[str, object]:
        frames = [[s, 100.0 + s, 100.05 + s, 1000 * i] for i, s in enumerate(seqs)]
        return {"kind": "normal", "frames": frames, "out_of_order": out_of_order}

    reports = [{"connections": [conn([1, 2, 3, 4]), conn([1, 3, 4], out_of_order=1)]}]
    d = delivery(connections(reports), 100.0, 105.0)
    assert d.frames == 4
    assert d.lost == 1
    assert d.out_of_order == 1
    assert d.received == 7
    assert d.p50_ms == pytest.approx(50.0)
    assert d.wire_per_frame == pytest.approx(1000.0)


@pytest.mark.timeout(120)
def test_the_harness_runs_on_tiny_sizes(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    parts = ["sampler", "fanout", "widget", "idle", "fleet"]
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", *parts, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=115,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "[fanout]" in run.stdout and "goal <= 25 us" in run.stdout
    results = json.loads(out.read_text())["results"]
    by_name = {r["name"]: r for r in results}
    lost = by_name["lost + out-of-order frames, N=6"]
    assert lost["value"] == 0 and lost["met"] is True  # every client got every frame
    cpu = by_name["server CPU per client per frame, N=6"]
    assert cpu["reference_name"] == "tornado write_message" and cpu["reference"] is not None
    widget_cpu = by_name["kernel CPU per dashboard update (median)"]
    assert widget_cpu["value"] > 0 and widget_cpu["met"] is not None
    assert "121 points in the window" in widget_cpu["reason"]  # 10 min at 5 s, trimmed
    fleet_full = by_name["time to a full table, N=5"]
    assert fleet_full["value"] > 0 and fleet_full["met"] is not None
    assert by_name["bytes to the front end per refresh, N=5"]["value"] > 0
    widget_bytes = by_name["bytes to the front end per update (median)"]
    assert widget_bytes["value"] > 0 and widget_bytes["reference_name"] == "its status frame"
    idle = by_name["idle server CPU per tick, 200 extra processes on the host"]
    assert idle["value"] > 0 and idle["reference"] > 0 and idle["met"] is not None


def test_latency_is_the_first_paint_before_the_next_sample() -> None:
    samples = [(1, 100.0, 100.001), (2, 101.0, 101.001), (3, 102.0, 102.001), (4, 103.0, 0.0)]
    draws = [[100_030.0, 100_040.0], [101_900.0, 101_990.0], [102_500.0, 102_510.0]]
    values, missed = latencies(samples, draws)
    assert values[0] == pytest.approx(40.0)  # the painted frame, not the DOM change
    assert values[1] == pytest.approx(990.0)
    assert values[2] == pytest.approx(510.0)
    assert missed == 0
    values, missed = latencies(samples, draws[:1])
    assert math.isinf(values[1]) and missed == 2  # never drawn before the next sample


@pytest.mark.timeout(180)
def test_the_latency_part_runs_quick_in_chromium(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: CI must install Debian's chromium")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    out = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "latency", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    by_name = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    p99 = by_name["sample-to-pixel latency p99"]
    assert p99["value"] is not None and p99["value"] > 0, p99
    assert p99["goal"].startswith("<= 250 ms") and p99["met"] is not None
    assert p99["reference_name"].startswith("arrival at a websockets client")


def test_the_prometheus_part_runs_on_tiny_sizes(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "prometheus", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=55,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "goal <= 2 ms" in run.stdout
    by_name = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    scrape = by_name["server CPU per /metrics scrape"]
    assert scrape["value"] >= 0 and scrape["met"] is not None
    fed = by_name["sampler tick a scrape causes (the walk for users; no top lists) + scrape"]
    watched = by_name["sampler tick with every group watched (top-5 lists and users) + scrape"]
    assert fed["value"] > scrape["value"] and watched["value"] > scrape["value"]
    if shutil.which("prometheus-node-exporter") or os.environ.get("CI"):
        assert fed["reference_name"] == "node_exporter scrape" and fed["reference"] > 0
        assert fed["met"] is not None
    else:
        assert fed["met"] is None and "not installed" in fed["reason"]
    assert by_name["sysmon collector alone (generate_latest, in process, median)"]["value"] > 0


def test_the_flood_and_history_parts_run_on_tiny_sizes(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "history", "flood", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=55,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    by_part = {r["part"]: r for r in json.loads(out.read_text())["results"] if r["goal"]}
    history = by_part["history"]
    assert history["reference_name"] == "history encoded for every connect"
    assert history["value"] is not None and history["reference"] is not None
    assert "goal <= 5 ms" in run.stdout
    assert "(each got its N: True)" in run.stdout  # every client got the history it asked
    assert "goal < 10,000 bytes: MET" in run.stdout  # the flood's log stays small
