"""How values cross process boundaries: msgpack with extension types.

This module is the single place that defines the wire form of runtime values. Plain data
(None, bool, int, float, str, bytes, lists, dicts) is msgpack's own; runtime values that
must survive the trip get an extension type code here:

====  =====================  ==========================================
code  Python type            payload
====  =====================  ==========================================
1     :class:`otp.pid.Pid`   msgpack array ``[node, worker, id]``
2     :class:`otp.pid.Ref`   msgpack array ``[node, worker, id]``
3     tuple                  msgpack array of the items (tuples stay tuples)
4     BaseException          ``[type name, message]``; arrives as
                             :class:`RemoteError` (or ``ActorDeadError``)
5     a registered record    ``[record name, field values...]``
====  =====================  ==========================================

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


def _default(obj: Any) -> msgpack.ExtType:
    # NamedTuples are tuples: test the runtime types before the generic tuple case.
    if type(obj) is Pid:
        return msgpack.ExtType(EXT_PID, _packb(tuple(obj)))
    if type(obj) is Ref:
        return msgpack.ExtType(EXT_REF, _packb(tuple(obj)))
    record = _records_by_type.get(type(obj))
    if record is not None:
        return msgpack.ExtType(EXT_RECORD, _packb([record, *obj]))
    if isinstance(obj, tuple):
        return msgpack.ExtType(EXT_TUPLE, _packb(list(obj)))
    if isinstance(obj, RemoteError):
        return msgpack.ExtType(EXT_EXCEPTION, _packb([obj.type_name, obj.message]))
    if isinstance(obj, BaseException):
        name = f"{type(obj).__module__}.{type(obj).__qualname__}"
        return msgpack.ExtType(EXT_EXCEPTION, _packb([name, str(obj)]))
    raise TypeError(f"cannot send a value of type {type(obj).__name__} across processes")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_PID:
        return Pid(*msgpack.unpackb(data, ext_hook=_ext_hook, use_list=True))
    if code == EXT_REF:
        return Ref(*msgpack.unpackb(data, ext_hook=_ext_hook, use_list=True))
    if code == EXT_TUPLE:
        return tuple(msgpack.unpackb(data, ext_hook=_ext_hook, use_list=True, raw=False))
    if code == EXT_RECORD:
        name, *fields = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, use_list=True)
        cls = _records_by_name.get(name)
        if cls is None:
            raise ValueError(f"unknown record type {name!r}")
        return cls(*fields)
    if code == EXT_EXCEPTION:
        name, message = msgpack.unpackb(data, raw=False)
        if name == _ACTOR_DEAD:
            return ActorDeadError(message)
        return RemoteError(name, message)
    return msgpack.ExtType(code, data)


def _packb(obj: Any) -> bytes:
    # A small initial buffer: packb makes a new Packer per call, and extension types pack
    # their payloads with nested calls; the default buffer made each of those cost tens
    # of microseconds in allocation alone.
    return msgpack.packb(
        obj, default=_default, strict_types=True, use_bin_type=True, buf_size=256
    )


def dumps(obj: Any) -> bytes:
    """Serialise ``obj`` for another process; raises ``TypeError`` for foreign types."""
    return _packb(obj)


def loads(data: bytes) -> Any:
    """Inverse of :func:`dumps`."""
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, use_list=True,
                           strict_map_key=False)
