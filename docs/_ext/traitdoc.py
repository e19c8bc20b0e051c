"""The configurable traits of a class, as the configuration reference shows them.

No Sphinx here: the docs build (``sysmon_config.py``) and the test suite
(``tests/test_docs.py``) both read traits through :func:`config_traits`, so the page and
the check agree on what is documented.

Only traits defined in this project's packages are listed: a class's inherited
jupyter_server or traitlets options are documented by those projects.
"""

from __future__ import annotations

import importlib
import pprint
from dataclasses import dataclass

from traitlets import DefaultHandler, HasTraits, TraitType

#: Packages whose traits the reference documents.
OWN_PACKAGES = ("jupyter_server_ext", "sysmon_nb")

#: A default longer than this is shown as a block under the trait, not inline.
INLINE_DEFAULT_CHARS = 60


class MissingHelp(ValueError):
    """A configurable trait has no help text."""


@dataclass(frozen=True)
class TraitDoc:
    """One configurable trait, ready to print."""

    owner: str  # the class users configure: ``c.<owner>.<name>``
    name: str
    type_name: str
    #: ``repr`` of the default; None when a ``@default`` method computes it at run time
    default: str | None
    help: str

    @property
    def fullname(self) -> str:
        return f"c.{self.owner}.{self.name}"


def import_class(path: str) -> type[HasTraits]:
    """``package.module.Class`` -> the class."""
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        raise ValueError(f"{path!r} is not a dotted path to a class")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, HasTraits)):
        raise TypeError(f"{path} is not a traitlets class")
    return cls


def _dynamic_defaults(cls: type) -> set[str]:
    """Traits whose default a ``@default`` method computes."""
    names: set[str] = set()
    for klass in cls.__mro__:
        for value in vars(klass).values():
            if isinstance(value, DefaultHandler):
                names.add(value.trait_name)
    return names


def _default(trait: TraitType) -> str:
    try:
        value = trait.default()
    except Exception:  # a default that cannot be built outside an instance
        return trait.default_value_repr()
    return pprint.pformat(value, width=72, compact=True, sort_dicts=False)


def config_traits(cls: type[HasTraits], packages: tuple[str, ...] = OWN_PACKAGES) -> list[TraitDoc]:
    """The ``config=True`` traits that classes of ``packages`` define on ``cls``.

    In definition order, base classes first. Raises :class:`MissingHelp` naming every
    trait without help text.
    """
    traits = cls.class_traits(config=True)
    dynamic = _dynamic_defaults(cls)
    seen: dict[str, TraitDoc] = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__.split(".")[0] not in packages:
            continue
        for name, value in vars(klass).items():
            if not isinstance(value, TraitType) or name not in traits:
                continue
            trait = traits[name]
            seen[name] = TraitDoc(
                owner=cls.__name__,
                name=name,
                type_name=type(trait).__name__,
                default=None if name in dynamic else _default(trait),
                help=(trait.help or "").strip(),
            )
    missing = [doc.fullname for doc in seen.values() if not doc.help]
    if missing:
        raise MissingHelp(
            f"configurable traits without help= text: {', '.join(missing)}; "
            "say what each does (it is the configuration reference)"
        )
    return list(seen.values())
