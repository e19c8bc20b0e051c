"""Sphinx configuration of sysmon-nb's documentation (`make docs`).

MyST Markdown pages, the configuration reference generated from the traits' help
(``_ext/sysmon_config.py``) and the Python API from docstrings (autodoc). The build
runs offline: no intersphinx, nothing fetched.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util.inspect import signature as sphinx_signature
from sphinx.util.inspect import stringify_signature
from traitlets import HasTraits

from sysmon_nb import __version__

# This folder's own extensions (``sysmon_config``).
sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "sysmon-nb"
author = "sysmon-nb developers"
copyright = "sysmon-nb developers"
release = __version__
version = ".".join(__version__.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sysmon_config",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext"]
# Quotes stay as typed: help texts and examples quote values to copy ('>=', "admin").
smartquotes = False

# Every reference must resolve (`make docs` passes -n -W). Names from other projects
# are not linked: the build fetches no inventories.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:(class|exc|obj|data|func|meth)", r"(collections\.abc|typing|asyncio|enum|abc)\..*"),
    (r"py:(class|exc|obj|data|func|meth)", r"(websockets|ipywidgets|traitlets|IPython)\..*"),
    (r"py:(class|exc|obj|data)", r"(Any|JSON|Group|Phase|ServerKey|Message|ServerMessage)"),
    (r"py:(class|exc|obj|data)", r"(sysmon_nb\.protocol\.)?(JSON|Group|Message|ServerMessage)"),
    (r"py:class", r"(dataclasses|_asyncio)\..*"),
]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "signature"

html_theme = "pydata_sphinx_theme"
html_title = f"sysmon-nb {release}"
html_theme_options = {
    "github_url": "https://github.com/sysmon-nb/sysmon-nb",
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "header_links_before_dropdown": 5,
}
# The pages are one level deep: the header and the index page navigate; the left sidebar
# would stay empty.
html_sidebars: dict[str, list[str]] = {"**": []}
html_show_sourcelink = False

# The public functions of ``sysmon_nb`` import their implementation on first use (so
# ``import sysmon_nb`` stays cheap) and take ``*args, **kwargs``. The API page shows the
# implementation's signature and docstring under the public name.
LAZY_PUBLIC = {
    "sysmon_nb.show": "sysmon_nb.magic.show",
    "sysmon_nb.show_fleet": "sysmon_nb.fleet_table.show_fleet",
}


def _implementation(name: str) -> Any:
    module_name, _, attr = LAZY_PUBLIC[name].rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ExtensionError(
            f"{name} is implemented by {LAZY_PUBLIC[name]}, which is gone: "
            "update LAZY_PUBLIC in docs/conf.py"
        ) from err


_FUNCTION_REPR = re.compile(r"<function ([\w.]+)(?: at 0x[0-9a-f]+)?>")


def _signature(app: Sphinx, func: Any, *, bound: bool = False) -> tuple[str, str]:
    full = sphinx_signature(func, bound_method=bound, type_aliases=app.config.autodoc_type_aliases)
    args, arrow, returns = stringify_signature(full).partition(" -> ")
    return args, returns if arrow else ""


def _signatures(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, sig: str | None, ret: str | None
) -> tuple[str, str] | None:
    if name in LAZY_PUBLIC:
        return _signature(app, _implementation(name))
    # A widget's class: traitlets' ``HasTraits.__new__(*args, **kwargs)`` hides the
    # constructor's own signature from autodoc.
    if what == "class" and issubclass(obj, HasTraits) and "__init__" in vars(obj):
        return _signature(app, obj.__init__, bound=True)[0], ""
    # A function as a default value prints as ``<function name at 0x...>``, which Sphinx
    # cannot parse back into a signature: show its name.
    if sig and "<function " in sig:
        return _FUNCTION_REPR.sub(r"\1", sig), ret or ""
    return None


def _lazy_docstring(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    if name in LAZY_PUBLIC:
        lines[:] = [*(inspect.getdoc(_implementation(name)) or "").splitlines(), ""]


def setup(app: Sphinx) -> None:
    app.connect("autodoc-process-signature", _signatures)
    app.connect("autodoc-process-docstring", _lazy_docstring)
