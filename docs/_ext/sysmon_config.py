"""Sphinx: the configuration reference, generated from the traits' own help.

In a MyST page::

    ```{sysmon-config} jupyter_server_ext.app.SysmonExtension
    ```

lists every ``config=True`` trait the class defines (see :mod:`traitdoc`) as a
``confval`` entry: ``c.SysmonExtension.interval``, its type, its default and its help
text. Pages link to one with ``{confval}`c.SysmonExtension.interval```. A trait without
help is an error (and ``make docs`` turns every warning and error into a failed build).

The help is shown as plain text, never parsed as markup: traitlets help strings are
written for a terminal (``--help-all``, generated config files), not for Sphinx.
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.domains.std import StandardDomain
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import make_id
from traitdoc import INLINE_DEFAULT_CHARS, MissingHelp, TraitDoc, config_traits, import_class


class SysmonConfigDirective(SphinxDirective):
    """``sysmon-config <dotted.path.to.Class>``: one ``confval`` entry per trait."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        path = self.arguments[0]
        try:
            docs = config_traits(import_class(path))
        except MissingHelp as err:
            raise self.error(f"{path}: {err}") from err
        except (ImportError, AttributeError, TypeError, ValueError) as err:
            raise self.error(f"cannot document {path}: {err}") from err
        return [node for doc in docs for node in self._entry(doc)]

    def _entry(self, doc: TraitDoc) -> list[nodes.Node]:
        node_id = make_id(self.env, self.state.document, "confval", doc.fullname)
        std = self.env.get_domain("std")
        assert isinstance(std, StandardDomain)
        std.note_object("confval", doc.fullname, node_id, location=self.get_location())

        signature = addnodes.desc_signature("", "", ids=[node_id])
        signature += addnodes.desc_name(doc.fullname, doc.fullname)
        self.state.document.note_explicit_target(signature)

        facts = nodes.paragraph()
        facts += [nodes.strong("", "Type:"), nodes.Text(" ")]
        facts += nodes.literal(doc.type_name, doc.type_name)
        facts += [nodes.Text(", "), nodes.strong("", "default:"), nodes.Text(" ")]
        block = None
        if doc.default is None:
            facts += nodes.Text("computed when the server starts (see below)")
        elif len(doc.default) <= INLINE_DEFAULT_CHARS and "\n" not in doc.default:
            facts += nodes.literal(doc.default, doc.default)
        else:
            facts += nodes.Text("as below")
            block = nodes.literal_block(doc.default, doc.default)
            block["language"] = "python"

        content = addnodes.desc_content()
        content += facts
        if block is not None:
            content += block
        for text in doc.help.split("\n\n"):
            content += nodes.paragraph(text, " ".join(text.split()))

        desc = addnodes.desc(domain="std", objtype="confval", desctype="confval", noindex=False)
        desc["classes"] += ["std", "confval"]
        desc += signature
        desc += content
        index = addnodes.index(
            entries=[("single", f"{doc.fullname} (configuration value)", node_id, "", None)]
        )
        return [index, desc]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("sysmon-config", SysmonConfigDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
