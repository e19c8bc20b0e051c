"""A hostile server (any user's server picked in the fleet view, or ``%sysmon --url``)
against the client: every field of the wrong type drops its frame, and nothing a server
or a hub sends reaches the admin's page as markup.

The frames are generated from the client's own list of fields (sysmon_nb/schema.py), so
every field it knows is tried. The widgets talk to recording comms (no browser); one
test puts what they sent into a real Chromium the way ipywidgets does (``innerHTML``)
and watches for a dialog.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
import types
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import comm
import ipywidgets as widgets
import pytest
from websockets.asyncio.server import ServerConnection

from sysmon_nb import schema
from sysmon_nb.client import ConnectionState, StatusClient
from sysmon_nb.dashboard import SysmonDashboard
from sysmon_nb.events import alerts_html
from sysmon_nb.fleet import FleetClient, FleetServer, summarize
from sysmon_nb.fleet_table import FleetView, render
from sysmon_nb.markup import Markup, escape, fmt, table
from sysmon_nb.protocol import GROUPS, Hello, History, ProtocolError, Status, decode
from sysmon_nb.tables import gpu_processes_html, kernels_html, limits_html, users_html

from .conftest import eventually
from .test_client import fake_server
from .test_dashboard import RecordingComm

#: In every string a server or a hub sends: tags that run script, attribute break-outs
#: for both quotes, a javascript: URL.
HOSTILE = (
    "<img src=x onerror=alert(1)>\"'><script>alert(2)</script>"
    "<svg/onload=alert(3)>' onmouseover='alert(4)javascript:alert(5)"
)
#: What the renderers write themselves: nothing else may appear.
OUR_TAGS = {"div", "span", "b", "i", "table", "thead", "tbody", "tr", "th", "td", "ul", "li"}
OUR_TAGS |= {"style", "p"}
OUR_ATTRIBUTES = {"style", "class", "title"}


@pytest.fixture(autouse=True)
def recording_comm(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(comm, "create_comm", lambda **kwargs: RecordingComm(**kwargs))
    yield


# -- frames made from the client's own list of fields ---------------------------------


def fill(rule: schema.Rule, text: str) -> Any:
    """A value for ``rule`` that renders: ``text`` in strings, readings over 90 %
    (warnings show), two items per list, every field of every object."""
    kind, _, detail, low, high, _ = rule
    if kind == schema.TEXT:
        return text
    if kind == schema.NUMBER:
        return 1.7e9 if high == schema.MAX_UNIX_TIME else max(low, min(high, 95.5))
    if kind == schema.INTEGER:
        return max(int(low), 3)
    if kind == schema.BOOL:
        return True
    if kind == schema.LIST:
        return [fill(detail, text), fill(detail, text)]
    return {name: fill(inner, text) for name, inner in detail.items()}


def hostile_status(seq: int = 1, text: str = HOSTILE) -> dict[str, Any]:
    """A status frame with every known group and field (``text`` in every string), and
    unknown fields and a group of junk beside them, as a newer or hostile server may."""
    frame: dict[str, Any] = {
        "type": "status", "seq": seq, "time": 1.7e9 + seq, "host": text, "interval": 1.0,
        "errors": {"gpu": text}, "stale": {text: 3.0}, "skipped_ticks": 0,
        "hostile_group": {"html": text, "nested": [[[{"x": text}]]]},
    }  # fmt: skip
    for name, fields in schema.GROUP_FIELDS.items():
        frame[name] = {key: fill(rule, text) for key, rule in fields.items()}
        frame[name]["extra_html"] = {"value": text, "junk": [[text]], "n": "NaN-ish"}
    frame["jupyter"]["kernel_usage"][0]["extra"] = text  # unknown, inside a list item
    return frame


def hostile_hello(text: str = HOSTILE) -> dict[str, Any]:
    return {
        "type": "hello", "protocol": 1, "server": text, "host": text, "interval": 1.0,
        "metrics": [*GROUPS, text], "subscribed": list(GROUPS), "expires_at": None,
        "server_id": text, "access": text,
    }  # fmt: skip


def leaves(obj: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """(path, value) of every value in ``obj``, containers included."""
    yield path, obj
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from leaves(value, (*path, key))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            yield from leaves(value, (*path, index))


def known_paths(frame: dict[str, Any]) -> list[tuple[tuple[Any, ...], Any]]:
    """Every field of ``frame`` the client knows (groups, their fields, list items)."""
    return [
        (path, value)
        for path, value in leaves(frame)
        if len(path) >= 2
        and path[0] in schema.GROUP_FIELDS
        and not any(isinstance(p, str) and p.startswith("extra") for p in path)
    ]


def replaced(frame: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(frame)
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return out


def wrong_type(value: Any) -> Any:
    """A value of another JSON type than ``value``'s: the string for a number, and so on."""
    if isinstance(value, bool):
        return "true"
    if isinstance(value, (int, float)):
        return HOSTILE  # the hole this file is about: a string where a count goes
    if isinstance(value, str):
        return 5
    if isinstance(value, list):
        return {"0": value[0]}
    return [value]


# -- decode: what does not fit is refused, what is unknown is dropped -----------------


def test_a_frame_with_every_known_field_decodes_and_unknown_ones_are_dropped() -> None:
    status = decode(json.dumps(hostile_status()))
    assert isinstance(status, Status)
    assert set(status.groups) == set(schema.GROUP_FIELDS)  # "hostile_group" dropped
    kept = json.dumps(status.groups)
    assert "extra" not in kept and "nested" not in kept
    assert status.groups["processes"]["count"] == 3 and status.host == HOSTILE
    hello = decode(json.dumps(hostile_hello()))
    assert isinstance(hello, Hello) and hello.server_id == HOSTILE


def test_every_known_field_of_the_wrong_type_drops_the_frame() -> None:
    frame = hostile_status()
    paths = known_paths(frame)
    assert len(paths) > 150  # every group, field and list item of the contract
    for path, value in paths:
        bad = replaced(frame, path, wrong_type(value))
        with pytest.raises(ProtocolError) as err:
            decode(json.dumps(bad))
        where = ".".join(str(p) for p in path if isinstance(p, str))
        assert err.value.code == "bad_field"
        assert where.split(".")[-1] in err.value.message, (path, err.value.message)
        assert "alert(" not in err.value.message  # the value itself is never quoted


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_drop_the_frame_wherever_they_are(constant: str) -> None:
    frame = hostile_status()
    for path in [("cpu", "percent"), ("cpu", "per_cpu", 1), ("hostile_group", "html"), ("seq",)]:
        text = json.dumps(replaced(frame, path, "@@")).replace('"@@"', constant)
        with pytest.raises(ProtocolError, match="not valid JSON"):
            decode(text)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("cpu", "percent"), "raw:1e999"),  # valid JSON, which Python parses as inf
        (("cpu", "per_cpu", 0), "raw:-1e400"),
        (("memory", "total_bytes"), 2**64),
        (("memory", "used_bytes"), -(2**64)),
        (("processes", "count"), 3.5),
        (("processes", "count"), True),
        (("jupyter", "kernel_usage", 0, "last_activity"), 1e12),  # beyond any clock
        (("alerts", "events", 0, "time"), -5),
        (("seq",), -1),
        (("time",), 1e12),
        (("interval",), 0),
        (("skipped_ticks",), -1),
        (("stale", HOSTILE), "long"),
        (("errors", "gpu"), 5),
        (("host",), None),
        (("disk", "mounts", 0, "home"), "true"),
        (("gpu", "devices", 0, "mig"), {"index": 0}),
        (("users", "others"), []),
        (("cpu",), [1, 2]),
    ],
)
def test_numbers_out_of_range_and_junk_drop_the_frame(path: tuple[Any, ...], value: Any) -> None:
    raw = isinstance(value, str) and value.startswith("raw:")
    text = json.dumps(replaced(hostile_status(), path, "@@" if raw else value))
    if raw:
        text = text.replace('"@@"', value[4:])
    with pytest.raises(ProtocolError, match="must be"):
        decode(text)


def test_strings_lists_and_maps_are_bounded() -> None:
    frame = hostile_status()
    long_text = "x" * (schema.MAX_TEXT_CHARS + 1)
    assert decode(json.dumps(replaced(frame, ("host",), long_text[1:])))
    texts = [p for p, v in known_paths(frame) if isinstance(v, str)]
    lists = [p for p, v in known_paths(frame) if isinstance(v, list)]
    assert len(texts) > 30 and len(lists) > 10
    for path in [*texts, ("host",), ("errors", "gpu")]:
        with pytest.raises(ProtocolError, match="at most 4096 characters"):
            decode(json.dumps(replaced(frame, path, long_text)))
    for path in lists:
        too_many = [None] * (schema.MAX_ITEMS + 1)
        with pytest.raises(ProtocolError, match="at most 8192 items"):
            decode(json.dumps(replaced(frame, path, too_many)))
    many_groups = {f"g{i}": 1.0 for i in range(schema.MAX_ITEMS + 1)}
    with pytest.raises(ProtocolError):
        decode(json.dumps(replaced(frame, ("stale",), many_groups)))
    hello = hostile_hello()
    hello["metrics"] = ["cpu"] * (schema.MAX_ITEMS + 1)
    with pytest.raises(ProtocolError):
        decode(json.dumps(hello))
    samples = {"type": "history", "samples": [{}] * (schema.MAX_ITEMS + 1)}
    with pytest.raises(ProtocolError):
        decode(json.dumps(samples))


def test_a_bad_sample_in_a_history_drops_the_whole_history() -> None:
    bad = replaced(hostile_status(2), ("processes", "count"), HOSTILE)
    history = {"type": "history", "samples": [hostile_status(1), bad]}
    with pytest.raises(ProtocolError, match=r"processes\.count must be an integer"):
        decode(json.dumps(history))


def test_groups_a_client_excluded_are_dropped_unchecked() -> None:
    """The fleet excludes ``processes`` and ``users``; a server that sends them anyway
    (junk or not) costs the client no checks, and they never reach it."""
    frame = replaced(hostile_status(), ("processes", "count"), HOSTILE)
    with pytest.raises(ProtocolError):
        decode(json.dumps(frame))
    status = decode(json.dumps(frame), drop=("processes", "users"))
    assert isinstance(status, Status) and not {"processes", "users"} & set(status.groups)
    history = decode(json.dumps({"type": "history", "samples": [frame]}), drop=("processes",))
    assert isinstance(history, History) and "processes" not in history.samples[0].groups


async def test_the_client_drops_the_groups_it_excluded() -> None:
    frame = replaced(hostile_status(), ("processes", "top_cpu"), HOSTILE)

    async def handler(ws: ServerConnection, n: int) -> None:
        await ws.send(json.dumps(hostile_hello()))
        await ws.send(json.dumps(frame))
        await ws.wait_closed()

    async with fake_server(handler) as (url, _):
        client = StatusClient(url, "t", exclude=("processes", "users"))
        messages = client.messages()
        try:
            await asyncio.wait_for(messages.__anext__(), 10)  # hello
            sample = await asyncio.wait_for(messages.__anext__(), 10)
        finally:
            await messages.aclose()
    assert isinstance(sample, Status) and "processes" not in sample.groups
    assert client.skipped == 0


# -- rendering: no markup survives ----------------------------------------------------


class Audit(HTMLParser):
    """Every tag, attribute and text of an HTML value, as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str]] = []
        self.text: list[str] = []
        self.css: list[str] = []
        self.other: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += [(name, value or "") for name, value in attrs]

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_data(self, data: str) -> None:
        (self.css if self.lasttag == "style" else self.text).append(data)

    def handle_comment(self, data: str) -> None:
        self.other.append(f"comment {data}")

    def handle_decl(self, decl: str) -> None:
        self.other.append(f"declaration {decl}")

    def handle_pi(self, data: str) -> None:
        self.other.append(f"processing instruction {data}")

    def unknown_decl(self, data: str) -> None:
        self.other.append(f"declaration {data}")


def audit(value: str) -> Audit:
    """``value`` parsed; fails if it holds any tag or attribute the renderers do not
    write themselves, an event handler, a javascript: URL, or script in a style."""
    found = Audit()
    found.feed(value)
    found.close()
    assert set(found.tags) <= OUR_TAGS, (set(found.tags) - OUR_TAGS, value)
    assert not found.other, found.other
    for name, text in found.attributes:
        assert name in OUR_ATTRIBUTES and not name.startswith("on"), (name, value)
        if name == "class":
            assert re.fullmatch(r"[a-z0-9 =-]*", text), (text, value)
        elif name == "style":
            assert "alert" not in text and "javascript:" not in text.lower(), (text, value)
        # a title is text: the hostile string may show there, as text
    assert not any("alert" in css or "<" in css for css in found.css), found.css
    return found


def html_values(root: widgets.Widget) -> list[str]:
    """Every value every HTML widget under ``root`` holds or ever sent to the front end."""
    out: list[str] = []
    stack = [root]
    while stack:
        widget = stack.pop()
        stack += list(getattr(widget, "children", ()))
        if isinstance(widget, widgets.HTML):
            out.append(widget.value)
            messages = widget.comm.messages if widget.comm is not None else []
            for message in messages:
                state = message.get("state") or {}
                if "value" in state:
                    out.append(state["value"])
    return out


def shown_text(values: list[str]) -> str:
    return "\n".join(t for v in values for t in audit(v).text)


def hostile_dashboard(frames: list[dict[str, Any]]) -> SysmonDashboard:
    dash = SysmonDashboard()
    dash.update(decode(json.dumps(hostile_hello())))
    dash.set_state(ConnectionState("refused", HOSTILE))
    decoded = [decode(json.dumps(f)) for f in frames]
    dash.update(History(samples=tuple(s for s in decoded[:-1] if isinstance(s, Status))))
    dash.update(decoded[-1])
    return dash


def test_the_dashboard_shows_a_hostile_servers_strings_as_text() -> None:
    dash = hostile_dashboard([hostile_status(seq) for seq in range(1, 5)])
    values = html_values(dash)
    assert len(values) > 10
    text = shown_text(values)  # audits every value
    # Shown, as text: the host, the state, stale groups, process and kernel names,
    # users, the home volume, GPU processes, alerts and events.
    assert text.count("<img src=x onerror=alert(1)>") >= 10, text
    for table_name in ("kernels", "users", "limits", "gpu_processes", "alerts"):
        assert "onerror=alert(1)" in dash.tables.html[table_name].value, table_name
    assert "(3 processes)" in dash.processes.value  # the count that used to be raw HTML


def test_the_renderers_escape_even_samples_that_bypassed_decode() -> None:
    """Defence in depth: a Status built in Python (tests, replays, ``extend``) with HTML
    in every field, numbers included, is drawn as text or "-" and nothing breaks."""
    raw = hostile_status(1)
    for path, value in known_paths(raw):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            raw = replaced(raw, path, HOSTILE)  # a string where every number goes
    raw["processes"]["top_cpu"].append([HOSTILE])  # not even an object
    raw["cpu"]["per_cpu"].append(float("nan"))
    groups = {k: v for k, v in raw.items() if k in schema.GROUP_FIELDS}
    status = Status(seq=1, time=1.7e9, host=HOSTILE, interval=1.0, groups=groups)
    for render_table in (kernels_html, users_html, limits_html, gpu_processes_html):
        audit(render_table(status))
    dash = SysmonDashboard()
    dash.extend([status])
    values = html_values(dash)
    audit(alerts_html(status, dash.tables.events))
    shown_text(values)  # audits them
    assert "(? processes)" in dash.processes.value  # a count that is no number: "?"
    assert "onerror" in dash.tables.html["kernels"].value  # the path, escaped


def hostile_fleet() -> FleetClient:
    """A fleet whose hub names users and servers with markup, whose servers send
    hostile samples, and one of which refused with a hostile reason."""
    fleet = FleetClient("http://hub.example/", "fleet-token")
    summary = summarize(decode(json.dumps(hostile_status())))  # type: ignore[arg-type]
    assert summary.alerts == (HOSTILE, HOSTILE)
    for index, state in enumerate(("ready", "ready", f"pending ({HOSTILE})", "stopped")):
        server = FleetServer(f"{HOSTILE}{index}", HOSTILE, state, "http://hub.example/u/")
        server.summary, server.received_at = summary, 1000.0
        fleet.servers[server.key] = server
    refused = fleet.servers[(f"{HOSTILE}1", HOSTILE)]
    refused.client = StatusClient(refused.url, "t")
    refused.client.state = ConnectionState("refused", HOSTILE)
    fleet.listing_error = HOSTILE
    return fleet


def test_the_fleet_table_shows_hub_and_server_strings_as_text() -> None:
    fleet = hostile_fleet()
    view = FleetView(fleet)
    view.redraw(now=1003.0)
    for sort in ("heaviest", "alerts", "cpu"):
        audit(render(list(fleet.servers.values()), sort, now=1003.0))
    text = shown_text(html_values(view))
    assert text.count("<img src=x onerror=alert(1)>") >= 10
    assert "refused: <img" in text and "pending (<img" in text


def test_the_markup_helpers_escape_all_but_markup() -> None:
    assert escape("<b>'\"&") == "&lt;b&gt;&#x27;&quot;&amp;"
    assert escape(Markup("<b>x</b>")) == "<b>x</b>"
    assert fmt("<td title='{}'>{}</td>", "a'b", Markup("<i>c</i>")) == (
        "<td title='a&#x27;b'><i>c</i></td>"
    )
    assert fmt("<style>.a{color:red}</style>{}", "<x>") == "<style>.a{color:red}</style>&lt;x&gt;"
    with pytest.raises(ValueError, match="2 fields for 1 values"):
        fmt("{}{}", "x")
    assert Markup("<b>x</b>") + "<y>" == "<b>x</b>&lt;y&gt;"
    assert "<y>" + Markup("<b>x</b>") == "&lt;y&gt;<b>x</b>"
    built = table([("<h>", True)], [["<c>", Markup("<i>ok</i>")]], row_attrs=[" class=h"])
    assert built == (
        "<table><thead><tr><th class=n>&lt;h&gt;</th></tr></thead><tbody><tr class=h>"
        "<td class=n>&lt;c&gt;</td><td><i>ok</i></td></tr></tbody></table>"
    )


# -- a real hostile server -------------------------------------------------------------


def bad_frames() -> list[str]:
    """Frames a hostile server sends: each breaks one rule."""
    good = hostile_status(10)
    return [
        json.dumps(replaced(good, ("processes", "count"), HOSTILE)),  # the original hole
        json.dumps(replaced(good, ("cpu", "percent"), "@@")).replace('"@@"', "NaN"),
        json.dumps(replaced(good, ("jupyter", "kernel_usage", 0, "pid"), {"x": [HOSTILE]})),
        json.dumps(replaced(good, ("host",), HOSTILE * 100)),
        json.dumps(replaced(good, ("disk", "mounts"), [HOSTILE])),
        json.dumps({"type": "history", "samples": [replaced(good, ("time",), HOSTILE)]}),
        json.dumps({**hostile_hello(), "interval": 0}),
    ]


class MintedForOne:
    """Stands in for the fleet's per-server tokens (sysmon_nb.hub_tokens): the picked
    dashboard borrows its server's token, never the fleet's."""

    async def get(self, key: Any, groups: Any = None) -> Any:
        return types.SimpleNamespace(token="minted-for-this-server")


async def test_a_hostile_servers_bad_frames_are_dropped_and_logged_and_the_next_shown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A real websockets server sends a hello, seven frames that break the protocol, one
    with hostile strings in every string field and one plain sample; the fleet view's
    dashboard of that server (a real StatusClient) drops the seven, logs them once, and
    shows the two that fit, as text."""
    bad = bad_frames()
    plain = hostile_status(12, text="plain")
    plain["processes"]["count"] = 41

    async def handler(ws: ServerConnection, n: int) -> None:
        await ws.send(json.dumps(hostile_hello()))
        for frame in bad:
            await ws.send(frame)
        await ws.send(json.dumps(hostile_status(11)))
        await ws.send(json.dumps(plain))
        await ws.wait_closed()

    caplog.set_level(logging.INFO, "sysmon_nb.client")
    async with fake_server(handler) as (url, _):
        fleet = FleetClient("http://hub.example/", "fleet-token")
        fleet.tokens = MintedForOne()  # type: ignore[assignment]
        server = fleet.servers[(HOSTILE, HOSTILE)] = FleetServer(HOSTILE, HOSTILE, "ready", url)
        view = FleetView(fleet)
        view.open_dashboard(server.key)
        monitor = view.monitor
        assert monitor is not None
        try:
            await eventually(lambda: monitor.dashboard.samples and monitor.client.last_seq == 12)
        finally:
            await monitor.wait_stopped()
    client, dash = monitor.client, monitor.dashboard
    assert client.skipped == len(bad)
    assert [s.seq for s in dash.samples] == [11, 12]
    assert "(41 processes)" in dash.processes.value
    dropped = [r.message for r in caplog.records if "dropped a frame" in r.message]
    assert len(dropped) == 1 and "processes.count must be an integer" in dropped[0]
    assert any("sends valid frames again (7 dropped)" in r.message for r in caplog.records)
    values = html_values(view)
    assert "onerror=alert(1)" in shown_text(values)  # the hostile host, kernels..., as text
    assert "dashboard of <img" in shown_text([view.detail.children[0].value])


# -- the page ---------------------------------------------------------------------------


def test_no_dialog_opens_in_chromium_when_the_values_are_set_as_ipywidgets_does(
    tmp_path: Any,
) -> None:
    """Every HTML value the dashboard and the fleet table sent, set as ``innerHTML`` (what
    ipywidgets' HTMLView does) in Chromium: no ``alert`` fires. The raw payload, set the
    same way, does: the check can fail."""
    from .test_browser import CHROMIUM, CHROMIUM_ARGS, need_chromium

    need_chromium()
    from playwright.sync_api import sync_playwright

    dash = hostile_dashboard([hostile_status(seq) for seq in range(1, 3)])
    view = FleetView(hostile_fleet())
    view.redraw(now=1003.0)
    values = html_values(dash) + html_values(view)

    def dialogs(page: Any, value_list: list[str]) -> list[str]:
        opened: list[str] = []
        page.on("dialog", lambda d: (opened.append(d.message), d.dismiss()))
        page.set_content("<div id=w></div>")
        for value in value_list:
            page.evaluate("v => { document.getElementById('w').innerHTML = v }", value)
            page.wait_for_timeout(1)
        page.wait_for_timeout(300)  # an image's error handler fires after a task or two
        return opened

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            assert dialogs(browser.new_page(), values) == []
            assert dialogs(browser.new_page(), [HOSTILE]) != []  # the control
        finally:
            browser.close()
