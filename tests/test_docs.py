"""The docs stay true to the code without building them (``make docs`` builds them in CI):
every configurable trait has the help text the configuration reference is made of, every
configurable class is in that reference, and what the README links to exists."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
from traitlets import Bool, HasTraits, Int, Unicode, default
from traitlets.config import Configurable

import jupyter_server_ext
from jupyter_server_ext.app import SysmonExtension
from jupyter_server_ext.auth import JWTIdentityProvider

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _traitdoc() -> ModuleType:
    """``docs/_ext/traitdoc.py``: what the docs build lists (it needs no Sphinx)."""
    spec = importlib.util.spec_from_file_location("traitdoc", DOCS / "_ext" / "traitdoc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("traitdoc", module)
    spec.loader.exec_module(module)
    return module


traitdoc = _traitdoc()


def _own_config_traits(cls: type[HasTraits]) -> set[str]:
    return {
        name
        for name, trait in cls.class_traits(config=True).items()
        if trait.this_class is not None
        and trait.this_class.__module__.split(".")[0] in traitdoc.OWN_PACKAGES
    }


@pytest.mark.parametrize("cls", [SysmonExtension, JWTIdentityProvider])
def test_every_configurable_trait_has_help(cls: type[HasTraits]) -> None:
    docs = traitdoc.config_traits(cls)  # raises MissingHelp, naming the traits
    assert {doc.name for doc in docs} == _own_config_traits(cls)
    for doc in docs:
        assert len(doc.help.split()) >= 3, f"{doc.fullname}: help too short to say anything"


def test_the_reference_shows_type_default_and_help() -> None:
    docs = {doc.name: doc for doc in traitdoc.config_traits(SysmonExtension)}
    assert next(iter(docs)) == "interval"  # definition order, not alphabetical
    interval = docs["interval"]
    assert (interval.fullname, interval.type_name, interval.default) == (
        "c.SysmonExtension.interval",
        "Float",
        "5.0",
    )
    assert interval.help == SysmonExtension.class_traits()["interval"].help
    # a default computed at start-up is not shown as the trait's static placeholder
    assert docs["collector_timeout"].default is None
    assert docs["allow_owner"].default is None
    # inherited jupyter_server options are that project's to document
    assert "open_browser" not in docs
    assert "token" not in {doc.name for doc in traitdoc.config_traits(JWTIdentityProvider)}


class _Documented(Configurable):
    shown = Int(1, help="A trait with help.").tag(config=True)
    hidden = Int(2).tag(config=True)
    blank = Unicode("", help="   ").tag(config=True)
    internal = Bool(False)  # not configurable: not listed, no help needed


def test_a_trait_without_help_is_refused() -> None:
    with pytest.raises(traitdoc.MissingHelp) as caught:
        traitdoc.config_traits(_Documented, packages=("tests",))
    message = str(caught.value)
    assert "c._Documented.hidden" in message and "c._Documented.blank" in message
    assert "shown" not in message and "internal" not in message


def test_only_configurable_traits_of_the_named_packages_are_listed() -> None:
    class Helped(Configurable):
        shown = Int(1, help="A trait with help.").tag(config=True)
        internal = Bool(False)
        computed = Int(help="Set at start.").tag(config=True)

        @default("computed")
        def _computed_default(self) -> int:
            return 3

    docs = traitdoc.config_traits(Helped, packages=("tests",))
    assert [(d.name, d.default) for d in docs] == [("shown", "1"), ("computed", None)]
    assert traitdoc.config_traits(Helped, packages=("elsewhere",)) == []


def _documented_classes() -> set[type]:
    text = (DOCS / "configuration.md").read_text()
    paths = re.findall(r"^```\{sysmon-config\}\s+(\S+)\s*$", text, flags=re.MULTILINE)
    assert paths, "docs/configuration.md has no {sysmon-config} directive"
    return {traitdoc.import_class(path) for path in paths}


def _configurable_classes() -> set[type]:
    found: set[type] = set()
    prefix = jupyter_server_ext.__name__ + "."
    for info in pkgutil.walk_packages(jupyter_server_ext.__path__, prefix):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, HasTraits)
                and value.__module__ == module.__name__
                and _own_config_traits(value)
            ):
                found.add(value)
    return found


def test_every_configurable_class_is_in_the_reference() -> None:
    documented = _documented_classes()
    assert {SysmonExtension, JWTIdentityProvider} <= documented
    missing = {cls.__qualname__ for cls in _configurable_classes() - documented}
    assert not missing, f"add a {{sysmon-config}} block to docs/configuration.md for {missing}"


def test_the_pages_the_code_points_to_exist() -> None:
    """A docstring or comment naming a Markdown page (``docs/security.md``) names one in
    this repository: relative to its own folder or to the repository's root."""
    missing = []
    for package in ("sysmon_nb", "jupyter_server_ext", "benchmarks", "tests"):
        for source in sorted((ROOT / package).rglob("*.py")):
            if source == Path(__file__).resolve():
                continue  # this module's examples of broken links
            for name in re.findall(r"[\w./-]+\.md\b", source.read_text()):
                if not ((source.parent / name).exists() or (ROOT / name).exists()):
                    missing.append(f"{source.relative_to(ROOT)}: {name}")
    assert not missing, f"pages named in the code but not in the repository: {missing}"


# -- README links -----------------------------------------------------------------------

_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML_LINK = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _outside_fences(text: str) -> list[str]:
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def links(text: str) -> list[str]:
    """Every link and image target of a Markdown text (not in code blocks or spans)."""
    found: list[str] = []
    for line in _outside_fences(text):
        line = re.sub(r"`[^`]*`", "", line)
        found += _LINK.findall(line) + _HTML_LINK.findall(line)
    return found


def anchors(text: str) -> set[str]:
    """The heading anchors MyST (and GitHub) make for a Markdown text."""
    seen: dict[str, int] = {}
    for line in _outside_fences(text):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1))  # a link's text
        slug = re.sub(r"[^\w\u4e00-\u9fff\- ]", "", title.lower().replace(" ", "-"))
        seen[slug] = seen.get(slug, 0) + 1
    # a repeated heading gets -1, -2, ...
    return set(seen) | {f"{s}-{n}" for s, c in seen.items() for n in range(1, c)}


def broken_links(markdown: Path) -> list[str]:
    broken = []
    for target in links(markdown.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.IGNORECASE):
            continue  # https:, mailto:, ...
        path, _, anchor = target.partition("#")
        file = (markdown.parent / path).resolve() if path else markdown
        if not file.exists():
            broken.append(
                f"{target}: no {file.relative_to(ROOT) if ROOT in file.parents else file}"
            )
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            broken.append(f"{target}: no heading makes #{anchor} in {file.name}")
    return broken


def test_what_the_readme_links_to_exists() -> None:
    readme = ROOT / "README.md"
    assert links(readme.read_text()), "the README links to nothing?"
    assert not broken_links(readme)


def test_the_link_check_finds_a_missing_page_and_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(
        "# A page\n\n## In the notebook: `%sysmon`\n\n## See [the API](api.md)\n"
    )
    readme = tmp_path / "README.md"
    readme.write_text(
        "See [the page](docs/page.md#in-the-notebook-sysmon), ![pic](docs/pic.png),\n"
        "[its API](docs/page.md#see-the-api),\n"
        "[gone](docs/gone.md), [bad anchor](docs/page.md#nowhere), [web](https://x.org/a),\n"
        '<img src="docs/page.md"> and `[code](docs/code.md)`.\n\n'
        "```console\n[fenced](docs/fenced.md)\n```\n"
    )
    assert [b.split(":")[0] for b in broken_links(readme)] == [
        "docs/pic.png",
        "docs/gone.md",
        "docs/page.md#nowhere",
    ]
