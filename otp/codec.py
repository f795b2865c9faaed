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
====  =====================  ==========================================

Tuples are kept distinct from lists because Erlang-style messages use tuples as tagged
records (``("EXIT", pid, reason)``) and pattern matching on them must keep working after
a trip across the wire. Anything else is refused with ``TypeError`` at the sender, so a
value that cannot cross fails loudly where it was sent, not silently where it lands.
"""

from __future__ import annotations

from typing import Any

import msgpack

from otp.pid import Pid, Ref

__all__ = ["EXT_PID", "EXT_REF", "EXT_TUPLE", "dumps", "loads"]

EXT_PID = 1
EXT_REF = 2
EXT_TUPLE = 3


def _default(obj: Any) -> msgpack.ExtType:
    # NamedTuples are tuples: test the runtime types before the generic tuple case.
    if type(obj) is Pid:
        return msgpack.ExtType(EXT_PID, _packb(tuple(obj)))
    if type(obj) is Ref:
        return msgpack.ExtType(EXT_REF, _packb(tuple(obj)))
    if isinstance(obj, tuple):
        return msgpack.ExtType(EXT_TUPLE, _packb(list(obj)))
    raise TypeError(f"cannot send a value of type {type(obj).__name__} across processes")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_PID:
        return Pid(*msgpack.unpackb(data, ext_hook=_ext_hook, use_list=True))
    if code == EXT_REF:
        return Ref(*msgpack.unpackb(data, ext_hook=_ext_hook, use_list=True))
    if code == EXT_TUPLE:
        return tuple(msgpack.unpackb(data, ext_hook=_ext_hook, use_list=True, raw=False))
    return msgpack.ExtType(code, data)


def _packb(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_default, strict_types=True, use_bin_type=True)


def dumps(obj: Any) -> bytes:
    """Serialise ``obj`` for another process; raises ``TypeError`` for foreign types."""
    return _packb(obj)


def loads(data: bytes) -> Any:
    """Inverse of :func:`dumps`."""
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, use_list=True,
                           strict_map_key=False)
