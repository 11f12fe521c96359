"""Every public class, function, method and property of osl_pg has a docstring.

The public API is what ``osl_pg.__all__`` exports, the public (not ``_``-led)
methods and properties of those classes (their own and those inherited from
osl_pg bases), and the public functions of ``osl_pg.cli``. Members inherited
from elsewhere keep their own docstrings (subprocess.Popen's are CPython's).
"""
from __future__ import annotations

import inspect

import osl_pg
import osl_pg.cli


def _own_members(cls: type):
    """Public methods and properties defined by `cls` or by one of its
    osl_pg bases (a private base's builders are part of the public class);
    those of other bases (object, subprocess.Popen, enum) are theirs."""
    seen = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("osl_pg"):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") or name in seen:
                continue
            seen.add(name)
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if isinstance(value, property) or inspect.isfunction(value):
                yield name, value


def public_callables():
    """(qualified name, object) of every public callable of osl_pg."""
    for name in osl_pg.__all__:
        obj = getattr(osl_pg, name)
        if inspect.isclass(obj):
            yield name, obj
            if issubclass(obj, BaseException) or obj.__module__.split(".")[0] != "osl_pg":
                continue
            for member, value in _own_members(obj):
                yield f"{name}.{member}", value
        elif callable(obj):
            yield name, obj
    for name, obj in vars(osl_pg.cli).items():
        if not name.startswith("_") and inspect.isfunction(obj) and obj.__module__ == osl_pg.cli.__name__:
            yield f"cli.{name}", obj


def _documented(obj) -> bool:
    doc = (obj.__doc__ or "").strip()
    # A @dataclass without a docstring gets its signature as one: not a doc.
    return bool(doc) and not (inspect.isclass(obj) and doc.startswith(obj.__name__ + "("))


def undocumented():
    return sorted(name for name, obj in public_callables() if not _documented(obj))


def test_every_public_callable_has_a_docstring():
    missing = undocumented()
    assert not missing, f"{len(missing)} public callables without a docstring: {', '.join(missing)}"


def test_the_check_sees_the_api():
    # Guards against a checker that passes because it looks at nothing.
    names = dict(public_callables())
    assert {"ProcessExecutor.execute", "ProcessGroup.kill", "Process.poll", "run", "Popen"} <= set(names)
    assert len(names) > 100


if __name__ == "__main__":
    for name in undocumented():
        print(name)
