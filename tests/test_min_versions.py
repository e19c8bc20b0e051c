"""``constraints-min.txt`` pins every runtime dependency at the floor ``pyproject.toml``
declares, so that ``make test-min`` proves those floors; and the installed versions of
the libraries whose APIs moved still work with what the client takes from them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from sysmon_nb.client import MIN_WEBSOCKETS, ClientError, _check_websockets, _process_exception

ROOT = Path(__file__).resolve().parent.parent


def floors() -> dict[str, str]:
    """Each runtime dependency's ``>=`` floor, by canonical name."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; one run of the check suffices
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found: dict[str, str] = {}
    for line in project["dependencies"]:
        requirement = Requirement(line)
        lower = [s.version for s in requirement.specifier if s.operator == ">="]
        assert len(lower) == 1, f"{line}: give one '>=' floor, so that it can be tested"
        found[canonicalize_name(requirement.name)] = lower[0]
    return found


def pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in (ROOT / "constraints-min.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([0-9][0-9A-Za-z.]*)", line)
        assert match, f"constraints-min.txt: {line!r} is not 'name==version'"
        found[canonicalize_name(match.group(1))] = match.group(2)
    return found


def test_the_min_constraints_pin_exactly_the_declared_floors() -> None:
    pinned = {name: Version(v) for name, v in pins().items()}
    assert pinned == {name: Version(v) for name, v in floors().items()}


def test_websockets_judges_which_connection_errors_are_worth_a_retry() -> None:
    """From websockets.client (17.1+) or websockets.asyncio.client (14.0+): whichever
    this environment has (make test runs the newest, make test-min the floor)."""
    judge = _process_exception()
    assert judge(ConnectionRefusedError()) is None
    assert judge(TimeoutError()) is None
    fatal = ValueError("not a network error")
    assert judge(fatal) is fatal


def test_a_websockets_older_than_the_floor_stops_the_client_with_what_to_do() -> None:
    for fine in ("14.2", "15.0.1", "17.4", "16.1rc1"):
        _check_websockets(fine)
    with pytest.raises(ClientError, match=r"websockets 13.1 is too old: .* 14.2 or newer"):
        _check_websockets("13.1")
    with pytest.raises(ClientError, match=re.escape("pip install -U 'websockets>=14.2'")):
        _check_websockets("14.1")
    assert ".".join(map(str, MIN_WEBSOCKETS)) == floors()["websockets"]
