"""How values cross process boundaries: msgpack, with marked arrays for runtime types.

This module is the single place that defines the wire form of runtime values. Plain data
(None, bool, int, float, str, bytes, lists, dicts) is msgpack's own. A runtime value
that must arrive as itself is sent as a msgpack array whose first element is a *marker*:
an extension value with an empty payload whose code says what the array is:

====  =====================  ==========================================
code  Python type            array after the marker
====  =====================  ==========================================
1     :class:`otp.pid.Pid`   ``node, worker, id``
2     :class:`otp.pid.Ref`   ``node, worker, id``
3     tuple                  the items (tuples stay tuples)
4     BaseException          ``type name, message``; arrives as
                             :class:`RemoteError` (or ``ActorDeadError``)
5     a registered record    ``record name, field values...``
====  =====================  ==========================================

Why markers rather than extension payloads: a payload must be bytes, so each tuple
inside a message would be packed by a nested packer call from Python, and that cost
about 2 us per tuple -- most of the cost of a message between workers. With a marker,
the encoder's hook only turns the value into a list and msgpack packs the rest in C; the
decoder's list hook turns marked arrays back. Nothing else may start with a marker: a
marker decodes to a private sentinel that no sender can produce.

Records are NamedTuple message types that must arrive as themselves, such as
:class:`otp.actor.Down`, ``Exit`` and ``Reply``: :func:`register_record` gives one a name
on the wire. Only registered classes are ever built from a frame.

Exceptions cross as exit reasons and as failed replies. They arrive as
:class:`RemoteError`, which keeps the original type's qualified name and message but not
its class: the receiver never imports or instantiates a class the sender named.
``pykka.ActorDeadError`` is the exception to that rule, because callers catch it by type.

Tuples are kept distinct from lists because Erlang-style messages use tuples as tagged
records (``("EXIT", pid, reason)``) and pattern matching on them must keep working after
a trip across the wire. Anything else is refused with ``TypeError`` at the sender, so a
value that cannot cross fails loudly where it was sent, not silently where it lands.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import msgpack
from pykka import ActorDeadError

from otp.pid import Pid, Ref

__all__ = [
    "EXT_EXCEPTION",
    "EXT_PID",
    "EXT_RECORD",
    "EXT_REF",
    "EXT_TUPLE",
    "RemoteError",
    "dumps",
    "loads",
    "register_record",
]

EXT_PID = 1
EXT_REF = 2
EXT_TUPLE = 3
EXT_EXCEPTION = 4
EXT_RECORD = 5

_records_by_type: dict[type, str] = {}
_records_by_name: dict[str, type] = {}


def register_record(cls: type, name: str | None = None) -> type:
    """Let the NamedTuple class ``cls`` cross processes as itself; returns ``cls``.

    Every process must register the same classes under the same names (register them
    at import time of the module that defines them).
    """
    name = name or f"{cls.__module__}.{cls.__qualname__}"
    if _records_by_name.get(name, cls) is not cls:
        raise ValueError(f"record name {name!r} is taken")
    _records_by_type[cls] = name
    _records_by_name[name] = cls
    return cls


_ACTOR_DEAD = f"{ActorDeadError.__module__}.{ActorDeadError.__qualname__}"


class RemoteError(Exception):
    """An exception raised in another process: ``type_name`` and ``message`` survive."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, RemoteError)
            and (self.type_name, self.message) == (other.type_name, other.message)
        )

    def __hash__(self) -> int:
        return hash((self.type_name, self.message))


# -- encoding ---------------------------------------------------------------------------------


def _marker(code: int) -> msgpack.ExtType:
    return msgpack.ExtType(code, b"")


_PID, _REF, _TUPLE, _EXCEPTION, _RECORD = map(
    _marker, (EXT_PID, EXT_REF, EXT_TUPLE, EXT_EXCEPTION, EXT_RECORD)
)


def _default(obj: Any) -> list[Any]:
    kind = type(obj)
    if kind is tuple:  # the common case first: Erlang-style messages are tuples
        return [_TUPLE, *obj]
    if kind is Pid:
        return [_PID, *obj]
    if kind is Ref:
        return [_REF, *obj]
    record = _records_by_type.get(kind)
    if record is not None:
        return [_RECORD, record, *obj]
    if isinstance(obj, tuple):
        return [_TUPLE, *obj]
    if isinstance(obj, RemoteError):
        return [_EXCEPTION, obj.type_name, obj.message]
    if isinstance(obj, BaseException):
        return [_EXCEPTION, f"{kind.__module__}.{kind.__qualname__}", str(obj)]
    raise TypeError(f"cannot send a value of type {kind.__name__} across processes")


class _Packers(threading.local):
    """One reusable packer per thread (``packb`` would make a new one per call)."""

    packer: msgpack.Packer | None = None


_packers = _Packers()


def dumps(obj: Any) -> bytes:
    """Serialise ``obj`` for another process; raises ``TypeError`` for foreign types."""
    packer = _packers.packer
    if packer is None:
        packer = msgpack.Packer(
            default=_default, strict_types=True, use_bin_type=True, autoreset=True
        )
    _packers.packer = None  # a packer that raised mid-way is not reused
    data = packer.pack(obj)
    _packers.packer = packer
    return data


# -- decoding ---------------------------------------------------------------------------------


class _Mark:
    """What a marker decodes to: a sentinel that rebuilds its array into a value."""

    __slots__ = ("build",)

    def __init__(self, build: Callable[[list[Any]], Any]) -> None:
        self.build = build


def _build_record(items: list[Any]) -> Any:
    cls = _records_by_name.get(items[1])
    if cls is None:
        raise ValueError(f"unknown record type {items[1]!r}")
    return cls(*items[2:])


def _build_exception(items: list[Any]) -> BaseException:
    name, message = items[1], items[2]
    if name == _ACTOR_DEAD:
        return ActorDeadError(message)
    return RemoteError(name, message)


_MARKS = {
    EXT_PID: _Mark(lambda items: Pid(items[1], items[2], items[3])),
    EXT_REF: _Mark(lambda items: Ref(items[1], items[2], items[3])),
    EXT_TUPLE: _Mark(lambda items: tuple(items[1:])),
    EXT_EXCEPTION: _Mark(_build_exception),
    EXT_RECORD: _Mark(_build_record),
}
_MarkType = _Mark


def _ext_hook(code: int, data: bytes) -> Any:
    mark = _MARKS.get(code)
    if mark is None or data:
        raise ValueError(f"unknown extension type {code}")
    return mark


def _list_hook(items: list[Any]) -> Any:
    if items and items[0].__class__ is _MarkType:
        return items[0].build(items)
    return items


def loads(data: bytes) -> Any:
    """Inverse of :func:`dumps`; raises ``ValueError`` (or msgpack's errors) on bad data."""
    return msgpack.unpackb(
        data,
        ext_hook=_ext_hook,
        list_hook=_list_hook,
        raw=False,
        use_list=True,
        strict_map_key=False,
    )
