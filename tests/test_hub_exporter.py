"""The hub exporter's rendering without a hub: each server's newest sample through
``metrics.families``, every sample labelled ``hub_user``/``hub_server``, one family per
name, stale and stopped servers left out, promtool-clean. The service under a real hub,
scraped by a real Prometheus: tests/test_fleet_hub.py."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from jupyter_server_ext.hub_exporter import HUB_SERVER, HUB_USER, HubCollector, HubExporter
from sysmon_nb.fleet import FleetClient, FleetServer
from sysmon_nb.protocol import Status

from .prom_server import promtool_remarks

NOW = 10_000.0


def sample(rss: int) -> Status:
    return Status(
        seq=3,
        time=NOW - 1,
        host="node-1",
        interval=5.0,
        groups={
            "cpu": {"percent": 25.0, "per_cpu": [20.0, 30.0], "count": 2},
            "counters": {
                "cpu": [{"cpu": n, "user": 10.0 * n, "idle": 100.0} for n in range(2)],
                "network": [],
            },
            "memory": {"total_bytes": 8 << 30, "available_bytes": 6 << 30},
            "users": {
                "users": [{"name": "jovyan", "processes": 3, "cpu_percent": 5.0,
                           "rss_bytes": rss}],
                "count": 1,
                "others": {"processes": 40, "cpu_percent": 1.0, "rss_bytes": 1 << 20},
            },
        },
    )  # fmt: skip


def fleet_with(**servers: Any) -> FleetClient:
    """A fleet (never run) holding ``servers``: key "user/name" -> (state, sample, age s)."""
    fleet = FleetClient("http://hub.invalid/", "never-sent", keep_latest=True)
    fleet.listings = 1
    for key, (state, status, age) in servers.items():
        user, _, name = key.partition("/")
        server = FleetServer(user, name, state, f"http://hub.invalid/user/{key}/")
        server.latest = status
        server.received_at = None if status is None else NOW - age
        fleet.servers[(user, name)] = server
    return fleet


def scrape(fleet: FleetClient, stale_after: float = 60.0) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(fleet, stale_after, clock=lambda: NOW))
    return generate_latest(registry)


def series(body: bytes) -> dict[str, list[dict[str, str]]]:
    """metric sample name -> label sets, through prometheus_client's own parser (which
    refuses a family named twice)."""
    found: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            found.setdefault(s.name, []).append(dict(s.labels))
    return found


def test_every_sample_is_labelled_with_its_server_and_each_family_named_once() -> None:
    fleet = fleet_with(
        **{"ben/": ("ready", sample(1 << 30), 1.0), "ben/gpu": ("ready", sample(2 << 30), 1.0),
           "cat/": ("ready", sample(3 << 30), 1.0)}
    )  # fmt: skip
    body = scrape(fleet)
    found = series(body)
    assert body.count(b"# TYPE sysmon_memory_total_bytes gauge") == 1
    servers = {
        (labels[HUB_USER], labels[HUB_SERVER]) for labels in found["sysmon_memory_total_bytes"]
    }
    assert servers == {("ben", ""), ("ben", "gpu"), ("cat", "")}
    for name, label_sets in found.items():
        if name.startswith("sysmon_hub_listing"):
            continue
        assert all(HUB_USER in ls and HUB_SERVER in ls for ls in label_sets), name
    # sysmon's own user label stays what it was: the unix user on that server
    rss = {
        (ls[HUB_USER], ls[HUB_SERVER], ls["user"]) for ls in found["sysmon_user_memory_rss_bytes"]
    }
    assert ("ben", "gpu", "jovyan") in rss and ("cat", "", "(others)") in rss
    # two modes of two cores on each of three servers
    assert len(found["sysmon_cpu_seconds_total"]) == 12


def test_stale_and_stopped_servers_are_left_out_and_say_so() -> None:
    fleet = fleet_with(
        **{"ben/": ("ready", sample(1), 1.0), "cat/": ("ready", sample(1), 120.0),
           "dan/": ("ready", None, 0.0), "eve/": ("stopped", None, 0.0)}
    )  # fmt: skip
    found = series(scrape(fleet, stale_after=60.0))
    users = {ls[HUB_USER] for ls in found["sysmon_memory_total_bytes"]}
    assert users == {"ben"}
    up = {ls[HUB_USER] for ls in found["sysmon_hub_server_up"]}
    assert up == {"ben", "cat", "dan"}  # ready ones only
    text = scrape(fleet).decode()
    assert 'sysmon_hub_server_up{hub_server="",hub_user="ben"} 1.0' in text
    assert 'sysmon_hub_server_up{hub_server="",hub_user="cat"} 0.0' in text
    assert "sysmon_hub_listing_up 1.0" in text
    fleet.listing_error = "HTTP 502"
    assert "sysmon_hub_listing_up 0.0" in scrape(fleet).decode()


def flood(users: int) -> Status:
    """A sample shaped by a hostile server's user: thousands of made-up unix users."""
    status = sample(1)
    rows = [{"name": f"u{i}", "processes": 1, "cpu_percent": 0.0, "rss_bytes": i}
            for i in range(users)]  # fmt: skip
    return Status(seq=status.seq, time=status.time, host="node-1", interval=5.0,
                  groups={**status.groups, "users": {"users": rows, "count": users}})  # fmt: skip


def test_a_server_that_floods_or_breaks_the_scrape_is_left_out_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from jupyter_server_ext import hub_exporter

    fleet = fleet_with(**{"ben/": ("ready", sample(1), 1.0), "eve/": ("ready", flood(3000), 1.0)})
    registry = CollectorRegistry(auto_describe=False)
    collector = HubCollector(fleet, clock=lambda: NOW, max_series=1000)
    registry.register(collector)
    caplog.set_level(logging.INFO, logger="jupyter_server_ext.hub_exporter")
    for _ in range(2):
        found = series(generate_latest(registry))
        eves = {n for n, sets in found.items() for ls in sets if ls.get(HUB_USER) == "eve"}
        assert eves == {"sysmon_hub_server_up"}  # saying it is out, nothing more
        assert {ls[HUB_USER] for ls in found["sysmon_memory_total_bytes"]} == {"ben"}
    assert caplog.text.count("leaving eve/ out: it sends") == 1  # once, not per scrape
    fleet.servers[("eve", "")].latest = sample(2)  # behaves again
    assert (
        'sysmon_hub_server_up{hub_server="",hub_user="eve"} 1.0'
        in generate_latest(registry).decode()
    )
    assert "exporting eve/ again" in caplog.text
    # a sample the renderer cannot take: that server only is left out
    real = hub_exporter.families

    def fragile(status: Status, now: float) -> Any:
        if status.seq == 99:
            raise ValueError("odd sample")
        return real(status, now)

    monkeypatch.setattr(hub_exporter, "families", fragile)
    odd = sample(1)
    fleet.servers[("eve", "")].latest = Status(seq=99, time=odd.time, host="x", interval=5.0,
                                               groups=odd.groups)  # fmt: skip
    found = series(generate_latest(registry))
    assert {ls[HUB_USER] for ls in found["sysmon_memory_total_bytes"]} == {"ben"}
    assert "leaving eve/ out: its sample did not render" in caplog.text


def test_promtool_has_nothing_to_say_about_the_fleets_series() -> None:
    fleet = fleet_with(**{"ben/": ("ready", sample(1), 1.0), "cat/x": ("ready", sample(2), 1.0)})
    assert promtool_remarks(scrape(fleet)) == []


def test_every_trait_has_help_and_the_defaults_come_from_the_service_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, trait in HubExporter.class_own_traits(config=True).items():
        assert trait.help, name
    for name in ("JUPYTERHUB_API_URL", "JUPYTERHUB_SERVICE_NAME", "JUPYTERHUB_SERVICE_URL",
                 "JUPYTERHUB_SERVICE_PREFIX", "JUPYTERHUB_API_TOKEN"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    app = HubExporter(hub_url="http://proxy-public/")
    assert (app.service_name, app.service_prefix) == (
        "sysmon-exporter",
        "/services/sysmon-exporter/",
    )
    assert (app.service_url, app.ip) == ("http://127.0.0.1:9650", "127.0.0.1")
    assert app.hub_api_url == "http://proxy-public/hub/api" and app.api_token == ""
    # what the hub sets for a managed service
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "from-the-hub")
    monkeypatch.setenv("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api")
    monkeypatch.setenv("JUPYTERHUB_SERVICE_NAME", "metrics")
    monkeypatch.setenv("JUPYTERHUB_SERVICE_URL", "http://10.0.0.5:10101")
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/hub-prefix/services/metrics/")
    app = HubExporter(hub_url="http://proxy-public/", ip="0.0.0.0")
    assert (app.api_token, app.service_name, app.ip) == ("from-the-hub", "metrics", "0.0.0.0")
    assert app.service_prefix == "/hub-prefix/services/metrics/"
    assert app.hub_api_url == "http://127.0.0.1:8081/hub/api"


def test_without_a_hub_url_or_a_token_it_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
    with pytest.raises(SystemExit) as exited:
        HubExporter().initialize([])
    assert exited.value.code == 2 and "--hub-url" in caplog.text
    with pytest.raises(SystemExit):
        HubExporter().initialize(["--hub-url=http://proxy-public/"])
    assert "no hub token" in caplog.text
