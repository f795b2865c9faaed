"""otp.codec: runtime values survive msgpack, foreign types are refused at the sender."""

from __future__ import annotations

import pytest

from otp import codec
from otp.pid import Pid, Ref


def test_pid_ref_and_tuples_round_trip() -> None:
    """Pids, refs and nested tuples come back as the same types and values."""
    value = {
        "from": Pid("mongoose@a", 2, 17),
        "ref": Ref("mongoose@a", 2, 5),
        "msg": ("EXIT", Pid("mongoose@b", 1, 3), ["normal", ("shutdown", 1)]),
        "bytes": b"\x00\xff",
    }
    again = codec.loads(codec.dumps(value))
    assert again == value
    assert type(again["from"]) is Pid and type(again["ref"]) is Ref
    assert type(again["msg"]) is tuple and type(again["msg"][2][1]) is tuple


def test_pids_sort_by_node_worker_id() -> None:
    """Pids order like Erlang's: by node, then worker, then id."""
    pids = [Pid("b", 0, 1), Pid("a", 2, 1), Pid("a", 1, 9), Pid("a", 1, 2)]
    assert sorted(pids) == [Pid("a", 1, 2), Pid("a", 1, 9), Pid("a", 2, 1), Pid("b", 0, 1)]


def test_a_value_that_cannot_cross_is_refused() -> None:
    """An object without a wire form raises TypeError naming its type."""
    with pytest.raises(TypeError, match="object"):
        codec.dumps({"x": object()})


def test_exceptions_cross_as_remote_errors() -> None:
    """An exception arrives as RemoteError with its type name; ActorDeadError keeps its type."""
    import pykka

    from otp.codec import RemoteError

    again = codec.loads(codec.dumps([ValueError("bad value"), pykka.ActorDeadError("gone")]))
    assert again[0] == RemoteError("builtins.ValueError", "bad value")
    assert isinstance(again[1], pykka.ActorDeadError) and str(again[1]) == "gone"
    assert codec.loads(codec.dumps(again[0])) == again[0]


def test_registered_records_arrive_as_themselves() -> None:
    """Down, Exit and Reply cross as their own types; unregistered NamedTuples as tuples."""
    from typing import NamedTuple

    import otp

    class Point(NamedTuple):
        x: int
        y: int

    value = [otp.Down(Ref("n", 1, 2), Pid("n", 1, 3), "noproc"), otp.Exit(None, ("shutdown", 1)),
             otp.Reply("t", None, None), Point(1, 2)]
    again = codec.loads(codec.dumps(value))
    assert again[:3] == value[:3] and [type(v) for v in again[:3]] == [type(v) for v in value[:3]]
    assert type(again[3]) is tuple and again[3] == (1, 2)


def test_unknown_extension_types_are_refused() -> None:
    """A frame with an extension code we never send fails to decode with ValueError."""
    import msgpack

    with pytest.raises(ValueError, match="unknown extension"):
        codec.loads(msgpack.packb([msgpack.ExtType(9, b"")]))
    with pytest.raises(ValueError, match="unknown record"):
        codec.loads(msgpack.packb([msgpack.ExtType(codec.EXT_RECORD, b""), "no.such.Record"]))
