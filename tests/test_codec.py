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
