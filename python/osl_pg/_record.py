"""Small value classes without the dataclasses module.

`import dataclasses` costs ~10 ms of a bare start (it imports inspect, which
imports ast and dis), and creating a dataclass compiles its methods with
exec (~0.25 ms each): together a quarter of `import osl_pg`. The classes here
give what osl_pg used of @dataclass: fields declared as annotated class
attributes (a default makes one optional), an __init__ taking them
positionally or by name, __repr__, __eq__ and, for Value, immutability and
__hash__. Type checkers see them as dataclasses (PEP 681).
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from typing import Any, Callable, ClassVar, Dict, Tuple, TypeVar

    from typing_extensions import dataclass_transform

    _T = TypeVar("_T")
else:
    def dataclass_transform(**_kwargs):
        return lambda cls: cls

_REQUIRED = object()


class _Factory:
    __slots__ = ("make", "compare")

    def __init__(self, make: Callable[[], Any], compare: bool) -> None:
        self.make = make
        self.compare = compare


def field(*, default_factory: Callable[[], _T], compare: bool = True) -> Any:
    """A field whose default is made per instance by `default_factory`;
    compare=False leaves it out of == and hash(). Returns a marker that
    __init__ replaces (Any: it stands for the field's declared type)."""
    return _Factory(default_factory, compare)


def _is_classvar(annotation: object) -> bool:
    text = annotation.strip("\"'") if isinstance(annotation, str) else repr(annotation)
    return text.startswith(("ClassVar", "typing.ClassVar"))


class _Fields:
    """What Record and Value share. Value does not derive from Record: to type
    checkers a frozen dataclass must not derive from a mutable one."""

    __slots__ = ()
    _fields: ClassVar[Tuple[str, ...]] = ()
    _defaults: ClassVar[Dict[str, Any]] = {}  # field -> default, _REQUIRED, or a _Factory
    _compared: ClassVar[Tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        defaults = dict(cls._defaults)  # the base's fields first, as dataclasses orders them
        for name, annotation in cls.__dict__.get("__annotations__", {}).items():
            if not _is_classvar(annotation):
                defaults[name] = cls.__dict__.get(name, defaults.get(name, _REQUIRED))
        cls._defaults = defaults
        cls._fields = tuple(defaults)
        cls._compared = tuple(n for n, d in defaults.items() if not (isinstance(d, _Factory) and not d.compare))
        for name, d in defaults.items():  # the class keeps plain defaults as attributes, like a dataclass
            if isinstance(d, _Factory) and name in cls.__dict__:
                delattr(cls, name)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        fields = self._fields
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__}() takes {len(fields)} arguments, {len(args)} given")
        values = dict(zip(fields, args))
        for name, value in kwargs.items():
            if name not in self._defaults:
                raise TypeError(f"{type(self).__name__}() got an unexpected argument {name!r}")
            if name in values:
                raise TypeError(f"{type(self).__name__}() got multiple values for {name!r}")
            values[name] = value
        d = self.__dict__
        for name, default in self._defaults.items():
            if name in values:
                d[name] = values[name]
            elif default is _REQUIRED:
                raise TypeError(f"{type(self).__name__}() missing argument {name!r}")
            else:
                d[name] = default.make() if isinstance(default, _Factory) else default
        self.__post_init__()

    def __post_init__(self) -> None:
        """Checks of a subclass, after the fields are set."""

    def _compared_values(self) -> Tuple[Any, ...]:
        d = self.__dict__
        return tuple(d[n] for n in self._compared)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__ or not isinstance(other, _Fields):
            return NotImplemented
        return self._compared_values() == other._compared_values()

    def __repr__(self) -> str:
        d = self.__dict__
        inner = ", ".join(f"{n}={d[n]!r}" for n in self._fields)
        return f"{type(self).__qualname__}({inner})"


@dataclass_transform(field_specifiers=(field,))
class Record(_Fields):
    """Mutable named fields (a @dataclass)."""

    __slots__ = ()
    # Mutable: unhashable, as a @dataclass with eq. typeshed declares
    # object.__hash__ a method, so None is "incompatible" there, although it
    # is what the data model prescribes (typeshed's own stubs ignore it too).
    __hash__ = None  # type: ignore[assignment]


class FrozenError(AttributeError):
    """Assignment to a field of an immutable value."""


@dataclass_transform(field_specifiers=(field,), frozen_default=True)
class Value(_Fields):
    """Immutable named fields (a @dataclass(frozen=True)): hashable, and
    setting a field raises FrozenError (an AttributeError)."""

    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenError(f"cannot assign to field {name!r} of {type(self).__name__}")

    def __delattr__(self, name: str) -> None:
        raise FrozenError(f"cannot delete field {name!r} of {type(self).__name__}")

    def __hash__(self) -> int:
        return hash(self._compared_values())
