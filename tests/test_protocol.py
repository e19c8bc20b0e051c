"""The wire contract: round trips and every rejection, no server needed."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from sysmon_nb.protocol import (
    BY_NAME_ONLY,
    GROUPS,
    MAX_QUOTED_CHARS,
    Error,
    Hello,
    History,
    ProtocolError,
    Status,
    Subscribe,
    Subscribed,
    decode,
    decode_client,
    dumps,
    encode,
    parse_history,
    parse_metrics,
)

SAMPLE = Status(
    seq=7,
    time=1_700_000_000.5,
    host="node-1",
    interval=5.0,
    groups={
        "cpu": {"percent": 12.5, "per_cpu": [10.0, 15.0], "count": 2},
        "memory": {"total_bytes": 1024, "available_bytes": 512},
        "network": {"recv_bytes_per_s": None},
    },
    errors={"gpu": "NVML error on GPU: GPU is lost", "disk": "statvfs('/home') hung"},
    stale={"disk": 12.5},
    skipped_ticks=3,
)


@pytest.mark.parametrize(
    "message",
    [
        Hello(server="0.1.0", host="h", interval=5.0, metrics=GROUPS, subscribed=("cpu",)),
        Hello(
            server="0.1.0",
            host="h",
            interval=1.0,
            metrics=("cpu",),
            subscribed=("cpu",),
            expires_at=1_800_000_000.0,
            server_id="5f0c0e9b7a1d4c2e",
        ),
        SAMPLE,
        History(samples=(SAMPLE, SAMPLE.subset(["cpu"]))),
        History(samples=()),
        Subscribed(metrics=("cpu", "memory")),
        Error(code="bad_json", message="frame is not valid JSON"),
    ],
)
def test_server_messages_round_trip(message: object) -> None:
    text = encode(message)  # type: ignore[arg-type]
    assert decode(text) == message
    assert json.loads(text)["type"] == type(message).TYPE  # type: ignore[attr-defined]


def test_status_frame_is_flat_with_groups_beside_the_header() -> None:
    obj = json.loads(encode(SAMPLE))
    assert obj["type"] == "status"
    assert obj["cpu"]["per_cpu"] == [10.0, 15.0]
    assert obj["network"]["recv_bytes_per_s"] is None
    assert obj["errors"]["gpu"] == "NVML error on GPU: GPU is lost"
    assert obj["stale"] == {"disk": 12.5}
    assert obj["skipped_ticks"] == 3


def test_subset_keeps_only_the_named_groups_and_their_errors() -> None:
    sub = SAMPLE.subset(["memory", "gpu"])
    assert set(sub.groups) == {"memory"}
    assert sub.errors == {"gpu": "NVML error on GPU: GPU is lost"}
    assert sub.stale == {}
    assert (sub.seq, sub.time, sub.host) == (SAMPLE.seq, SAMPLE.time, SAMPLE.host)
    assert SAMPLE.subset(["disk"]).stale == {"disk": 12.5}
    assert sub.skipped_ticks == 3


def test_frames_without_turn_2_fields_still_decode() -> None:
    """A server from before ``stale``/``skipped_ticks``/``server_id`` is still read."""
    obj = json.loads(encode(SAMPLE))
    del obj["stale"], obj["skipped_ticks"]
    old = decode(json.dumps(obj))
    assert isinstance(old, Status)
    assert (old.stale, old.skipped_ticks, set(old.groups)) == ({}, 0, set(SAMPLE.groups))
    hello = Hello(server="0", host="h", interval=1.0, metrics=("cpu",), subscribed=("cpu",))
    obj = json.loads(encode(hello))
    del obj["server_id"]
    assert decode(json.dumps(obj)) == hello


@pytest.mark.parametrize(
    "change",
    [
        {"stale": {"disk": "long"}},
        {"stale": {"disk": float("inf")}},
        {"stale": ["disk"]},
        {"skipped_ticks": -1},
        {"skipped_ticks": True},
        {"skipped_ticks": 1.5},
    ],
)
def test_bad_staleness_fields_are_refused(change: dict[str, object]) -> None:
    obj = {**json.loads(encode(SAMPLE)), **change}
    with pytest.raises(ProtocolError):
        decode(json.dumps(obj, allow_nan=True))


def test_bad_server_id_is_refused() -> None:
    hello = Hello(server="0", host="h", interval=1.0, metrics=("cpu",), subscribed=("cpu",))
    obj = {**json.loads(encode(hello)), "server_id": 7}
    with pytest.raises(ProtocolError):
        decode(json.dumps(obj))


def test_dumps_refuses_nan() -> None:
    with pytest.raises(ValueError):
        dumps({"x": float("nan")})


def test_client_subscribe_round_trip() -> None:
    message = decode_client(encode(Subscribe(metrics=("memory", "cpu"))))
    assert message == Subscribe(metrics=("cpu", "memory"))  # protocol order, deduplicated


def test_empty_subscription_means_every_offered_group() -> None:
    assert decode_client('{"type":"subscribe","metrics":[]}', ("cpu", "disk")).metrics == (
        "cpu",
        "disk",
    )


@pytest.mark.parametrize(
    ("text", "code"),
    [
        (b"{}", "binary_frame"),
        ("{", "bad_json"),
        ("", "bad_json"),
        ("[" * 100_000, "bad_json"),
        ("42", "not_an_object"),
        ('"subscribe"', "not_an_object"),
        ("{}", "unknown_type"),
        ('{"type": "status"}', "unknown_type"),
        ('{"type": 3}', "unknown_type"),
        ('{"type": "subscribe"}', "bad_field"),
        ('{"type": "subscribe", "metrics": "cpu"}', "bad_field"),
        ('{"type": "subscribe", "metrics": ["cpu"], "extra": 1}', "bad_field"),
        ('{"type": "subscribe", "metrics": ["cpu", "bogus"]}', "unknown_metric"),
        ('{"type": "subscribe", "metrics": [1]}', "unknown_metric"),
        ('{"type": "subscribe", "metrics": ["gpu"]}', "unknown_metric"),  # not offered
    ],
)
def test_client_message_rejections(text: str | bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as excinfo:
        decode_client(text, offered=("cpu", "memory"))
    assert excinfo.value.code == code
    assert excinfo.value.message


@pytest.mark.parametrize(
    "text",
    [
        '{"type": "hello"}',
        '{"type": "hello", "protocol": 1, "server": "x", "host": "h", "interval": "5",'
        ' "metrics": [], "subscribed": []}',
        '{"type": "status", "seq": "1", "time": 1, "host": "h", "interval": 1}',
        '{"type": "status", "seq": 1, "time": 1, "host": "h", "interval": 1, "cpu": 5}',
        '{"type": "status", "seq": 1, "time": 1, "host": "h", "interval": 1, "errors": []}',
        '{"type": "status", "seq": true, "time": 1, "host": "h", "interval": 1}',
        '{"type": "history", "samples": {}}',
        '{"type": "history", "samples": [1]}',
        '{"type": "subscribed", "metrics": [1]}',
        '{"type": "error", "code": 1, "message": "m"}',
        '{"type": "nope"}',
        "[]",
    ],
)
def test_server_frame_rejections(text: str) -> None:
    with pytest.raises(ProtocolError):
        decode(text)


def test_parse_metrics() -> None:
    assert parse_metrics("") == tuple(g for g in GROUPS if g not in BY_NAME_ONLY)
    assert parse_metrics("counters,cpu") == ("cpu", "counters")  # named: sent
    assert parse_metrics("memory, cpu,memory") == ("cpu", "memory")
    with pytest.raises(ProtocolError, match="bogus"):
        parse_metrics("cpu,bogus")


def test_parse_history() -> None:
    assert parse_history("0", 10) == 0
    assert parse_history("5", 10) == 5
    assert parse_history("50", 10) == 10
    for bad in ("-1", "x", "1.5", ""):
        with pytest.raises(ProtocolError):
            parse_history(bad, 10)


def test_importing_the_notebook_side_stays_cheap() -> None:
    code = (
        "import sys, sysmon_nb, sysmon_nb.protocol; "
        "heavy = {'psutil', 'bqplot', 'ipywidgets', 'jupyter_server', 'jupyter_server_ext', "
        "'tornado', 'websockets'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(
    "message",
    [
        {"type": "subscribe", "metrics": ["Q" * 60_000]},
        {"type": "subscribe", "metrics": ["J" * 200, "K" * 200, "V" * 200]},
        {"type": "Q" * 60_000},
        {"type": "subscribe", "metrics": [], "Q" * 60_000: 1},
    ],
)
def test_errors_quote_at_most_100_characters_of_the_input(message: dict[str, object]) -> None:
    with pytest.raises(ProtocolError) as excinfo:
        decode_client(json.dumps(message))
    text = excinfo.value.message
    assert sum(text.count(c) for c in "QJKV") <= MAX_QUOTED_CHARS
    assert len(text) < 300


def real_server_groups() -> dict[str, object]:
    """Every group the server's own collectors make, with every optional part filled:
    two ticks (rates known), processes and users from one walk, a kernel of this
    process, an H100 with a compute process and MIG instances (recorded NVML), and
    alerts with an active rule and each kind of event."""
    import logging
    import os
    import time

    from jupyter_server_ext.alerts import DEFAULT_RULES, AlertEngine, parse_rules
    from jupyter_server_ext.cgroup import ContainerCollector
    from jupyter_server_ext.collectors import (
        CpuCollector,
        DiskCollector,
        JupyterCollector,
        JupyterCounts,
        KernelRef,
        MemoryCollector,
        NetworkCollector,
    )
    from jupyter_server_ext.gpu import GpuCollector
    from jupyter_server_ext.kernels import KernelDeath
    from jupyter_server_ext.processes import ProcessesCollector, ProcessWalk, UsersCollector

    from .test_gpu import FakeNvml, busy_with_process

    kernel = KernelRef("k-1", "python3", os.getpid(), "work/a.ipynb", "busy", time.time(), 2)
    recording = busy_with_process(os.getpid())
    readings = recording["devices"][0]["readings"]
    readings["mig_mode"] = [1, 1]
    readings["mig_instances"] = {
        0: {"uuid": "MIG-a", "gpu_instance_id": 1, "compute_instance_id": 0,
            "memory": {"total": 10 << 30, "free": 9 << 30, "used": 1 << 30}},
    }  # fmt: skip
    walk = ProcessWalk()
    jupyter = JupyterCollector(lambda: JupyterCounts((kernel,), 1, 1))
    collectors = [
        CpuCollector(), MemoryCollector(), DiskCollector(home_paths=[os.getcwd()]),
        NetworkCollector(), ProcessesCollector(top_n=3, walk=walk),
        UsersCollector(top_n=1, walk=walk), ContainerCollector(), jupyter,
        GpuCollector(FakeNvml(recording), kernel_pids=lambda: jupyter.kernel_pids),
    ]  # fmt: skip
    groups: dict[str, object] = {}
    for now in (time.monotonic(), time.monotonic() + 1.0):
        groups = {c.name: c.collect(now) for c in collectors}  # type: ignore[attr-defined]
    users: Any = groups["users"]  # one user here: the rest of a busier machine, summed
    users["others"] = UsersCollector(top_n=0, walk=walk).collect(now)["others"]
    rules = parse_rules(
        [*DEFAULT_RULES, {"name": "cpus", "group": "cpu", "field": "count", "op": ">=",
                          "threshold": 0}]
    )  # fmt: skip
    engine = AlertEngine(rules, logging.getLogger("test"))
    engine.add_event({"time": time.time(), "kind": "collector_stuck", "message": "m",
                      "group": "disk", "path": "/mnt"})  # fmt: skip
    death = KernelDeath("k-1", "python3", 7, -9, "work/a.ipynb", time.time(), time.monotonic())
    first = engine.update(groups, [death], time.monotonic(), time.time())
    later = time.monotonic() + 60  # past the OOM window: the death is reported as such
    alerts = engine.update(groups, [], later, time.time())
    groups["alerts"] = {**alerts, "events": first["events"] + alerts["events"]}
    return groups


def test_everything_a_real_server_sends_decodes_unchanged() -> None:
    """The server's collectors' output passes the client's checks with nothing dropped:
    a field the server sends and the client does not know (sysmon_nb/schema.py) fails
    here, naming it."""
    groups = real_server_groups()
    alerts: Any = groups["alerts"]
    assert alerts["active"] and {e["kind"] for e in alerts["events"]} >= {
        "collector_stuck", "kernel_died", "alert_started"
    }  # fmt: skip
    gpu: Any = groups["gpu"]
    assert gpu["devices"][0]["processes"] and gpu["devices"][0]["mig"]
    sent = json.loads(encode(Status(seq=1, time=1e9, host="h", interval=5.0, groups=groups)))
    got = decode(json.dumps(sent))
    assert isinstance(got, Status)
    lost = sorted(_paths(sent) - _paths(json.loads(encode(got))))
    assert not lost, f"the client drops fields the server sends: add them to schema.py: {lost}"
    assert got.groups == {name: sent[name] for name in groups}


def _paths(obj: object, prefix: str = "") -> set[str]:
    """Every field's path in ``obj`` (list items as ``[]``)."""
    found = set()
    if isinstance(obj, dict):
        for key, value in obj.items():
            found.add(f"{prefix}{key}")
            found |= _paths(value, f"{prefix}{key}.")
    elif isinstance(obj, list):
        for item in obj:
            found |= _paths(item, f"{prefix[:-1]}[].")
    return found
