"""Sphinx configuration for osl_pg's documentation.

Built in CI with ``sphinx-build -W --keep-going -b html docs <out>``: every
warning (a broken reference, a malformed docstring, a page left out of the
toctree) fails the build. Autodoc imports the installed ``osl_pg``, which
needs its C extension built: ``pip install -e '.[docs]'`` first.
"""
import os
import re
import sys

_root = os.path.join(os.path.dirname(__file__), "..")
with open(os.path.join(_root, "python", "osl_pg", "__init__.py")) as _f:
    release = re.search(r'^__version__ = "([^"]+)"', _f.read(), re.M).group(1)
version = release

project = "osl_pg"
author = "osl_pg contributors"
copyright = "osl_pg contributors (MIT License)"

extensions = [
    "myst_parser",            # the guides are Markdown, as the README they came from
    "sphinx.ext.autodoc",     # the API reference is read from the docstrings of the installed package
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
# The docstrings write names as `name`, as Markdown does: show them as code.
default_role = "literal"
myst_heading_anchors = 3
myst_enable_extensions = ["deflist"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}

# Broken cross-references are warnings too (-n), so errors under -W. There is
# no network in CI for intersphinx, so names from the standard library (and
# private bases shown by show-inheritance) are let through unresolved.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(os|subprocess|enum|logging|typing|asyncio|signal|collections\.abc)(\..*)?"),
    (r"py:class", r"osl_pg(\.\w+)*\._\w+(\.\w+)*"),
    # internal types that appear in public signatures
    (r"py:class", r"(osl_pg\.tiers\.)?Tier"),
    (r"py:class", r"(osl_pg\.terminal\.)?ForegroundTerminal"),
    # type aliases (Unions of public types) that exist only for type checkers
    (r"py:class", r"(osl_pg\.\w+\.)?(Operation|StdioSpec|IdSpec|CommandArgs|_\w+|AnyStr)"),
]

html_theme = "alabaster"
html_title = f"osl_pg {release}"
html_static_path = []


def _private(cls):
    module = getattr(cls, "__module__", "")
    return module.startswith("osl_pg.") and ("._" in module or cls.__name__.startswith("_"))


def _public_bases(app, name, obj, options, bases):
    """Show a private base (the _record value classes, _Operation) as its
    nearest public ancestor: the helper says nothing to a reader."""
    shown = []
    for base in bases:
        public = next(c for c in base.__mro__ if not _private(c))
        if public not in shown:
            shown.append(public)
    bases[:] = shown


def _record_signature(app, what, name, obj, options, signature, return_annotation):
    """The value classes (osl_pg._record) take their fields positionally or
    by name through one generic __init__(*args, **kwargs): show the fields."""
    from osl_pg import _record

    if what != "class" or not isinstance(obj, type) or not issubclass(obj, _record.Record):
        return None
    if "__init__" in vars(obj):  # a class with an __init__ of its own keeps its signature
        return None
    params = []
    for field in obj._fields:
        default = obj._defaults[field]
        if default is _record._REQUIRED:
            params.append(field)
        elif isinstance(default, _record._Factory):
            params.append(f"{field}=...")
        else:
            params.append(f"{field}={default!r}")
    return f"({', '.join(params)})", None


def setup(app):
    app.connect("autodoc-process-bases", _public_bases)
    app.connect("autodoc-process-signature", _record_signature)
