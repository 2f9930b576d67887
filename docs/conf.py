"""Sphinx configuration for the popstats documentation.

Build with ``python -m sphinx -W -b html docs <out>``; ``tests/test_docs.py``
does so as part of the test suite. The API reference (``reference.rst``) is
generated from the numpydoc docstrings of every name in a module's
``__all__`` by the ``popstats-all`` directive defined here, so a new public
name is documented without editing the page.
"""

import importlib
import os
import sys
from typing import ClassVar

from docutils import nodes
from docutils.parsers.rst import Directive, directives
from docutils.statemachine import StringList

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

project = "popstats"
author = "popstats authors"
copyright = "2026, popstats authors"


def _version():
    import popstats

    return popstats.__version__


release = version = _version()

extensions = ["sphinx.ext.autodoc", "numpydoc"]
exclude_patterns = ["_build", "**/_build", "*.txt"]
master_doc = "index"
html_theme = "alabaster"
html_static_path = []

autodoc_member_order = "bysource"
autodoc_typehints = "none"  # numpydoc sections already give the types
autodoc_inherit_docstrings = False  # no PyTensor Op internals in the reference
numpydoc_show_class_members = False  # members are listed by autodoc
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks = set()


class PublicNames(Directive):
    """``.. popstats-all:: module`` -- autodoc every name in ``module.__all__``.

    With ``:optional:`` a module that cannot be imported produces nothing
    (for subpackages that are not part of every checkout).
    """

    required_arguments = 1
    option_spec: ClassVar[dict] = {"optional": directives.flag}

    def run(self):
        modname = self.arguments[0]
        try:
            module = importlib.import_module(modname)
        except ImportError as err:
            if "optional" in self.options:
                return []
            raise self.error(f"cannot import {modname}: {err}") from err
        lines = []
        names = getattr(module, "__all__", None)
        if names is None:
            raise self.error(f"{modname} has no __all__")
        for name in names:
            obj = getattr(module, name)
            if isinstance(obj, type):
                lines += [f".. autoclass:: {modname}.{name}", "   :members:", ""]
            else:
                lines += [f".. autofunction:: {modname}.{name}", ""]
        source = self.state_machine.input_lines.source(
            self.lineno - self.state_machine.input_offset - 1
        )
        container = nodes.container()
        self.state.nested_parse(
            StringList(lines, source=source), self.content_offset, container
        )
        return container.children


def setup(app):
    app.add_directive("popstats-all", PublicNames)
    return {"parallel_read_safe": True}
