"""The instrumentation a one_to_one message costs, measured alone (no server, no sockets).

Run from the repository root::

    python bench/instrument_micro.py

It replays, in one process, what mongoose/c2s.py does for instrumentation on a message's
path: the sender's read (tcp_data_in), its parse mark, the element in (xmpp_element_in),
its processing time (c2s_message_processed), the receiver's element out
(xmpp_element_out) and write (tcp_data_out), with the code c2s.py uses (``_count`` and
the batches of mongoose.c2s_events). Twice: with no handler (instrumentation off), and
with what ``[instrumentation.prometheus]`` and ``[instrumentation.log] level = "info"``
install (the metric store and a log handler that skips per-stanza events). Also the cost
of one plain ``instrument.execute`` of a per-stanza event with the store, for comparison.

Figures are CPU time per message (the minimum of 21 runs of 100,000), and that time as a
share of the server's CPU per message at its highest rate (57 µs, bench/README.md).
"""

from __future__ import annotations

import time
import timeit
from typing import Any

from mongoose import c2s_events as events
from mongoose import instrument
from mongoose.c2s import _count
from mongoose.instrument import LogHandler, MetricStore

SERVER_US_PER_MESSAGE = 57.0
PACKET = ("alice@localhost/r", "bob@localhost/r", "message", "chat", "id1", b"x" * 240)
LABELS_IN = {"connection_type": "c2s", "host_type": "localhost"}
ONE_MESSAGE_IN = {"count": 1, "stanza_count": 1, "message_count": 1, "byte_size": 240}


class Session:
    """What a sender's and a receiver's session hold: sinks, data batches, a time mark."""

    def __init__(self) -> None:
        self.sinks = events.host("localhost")
        data = events.data_sinks()
        self.data_in, self.data_out = data.tcp_in, data.tcp_out
        self.mark_ns = 0


def message_path(s: Session) -> None:
    packet = PACKET
    s.data_in.sums["byte_size"] += 250  # C2SProtocol.data_received
    s.mark_ns = time.perf_counter_ns()  # C2S._on_bytes
    sinks = s.sinks  # C2S._established
    _count(sinks.element_in, events.ELEMENT["message", packet[3] == "error"], len(packet[5]))
    processed = sinks.message_processed
    if processed.sink.calls:
        now = time.perf_counter_ns()
        processed.observe("time", (now - s.mark_ns) // 1000)
        s.mark_ns = now
    data = packet[5]  # C2S._deliver, on the receiver's side
    _count(sinks.element_out,
           events.ELEMENT.get((packet[2], packet[3] == "error"), events.OTHER_ELEMENT),
           len(data))
    s.data_out.sums["byte_size"] += len(data)  # C2S._write


def per_call_us(fn: Any, *args: Any, number: int = 100_000, repeat: int = 21) -> float:
    best = min(timeit.repeat(lambda: fn(*args), number=number, repeat=repeat,
                             timer=time.process_time))
    empty = min(timeit.repeat(lambda: None, number=number, repeat=repeat,
                              timer=time.process_time))
    return (best - empty) / number * 1e6


def main() -> None:
    for label, handlers in (("off (no handler)", []),
                            ("on (store + log at info)", [MetricStore(), LogHandler("info")])):
        instrument.set_handlers(handlers)
        events.setup(["localhost"])
        session = Session()
        path = per_call_us(message_path, session)
        execute = per_call_us(instrument.execute, "xmpp_element_in", LABELS_IN,
                              ONE_MESSAGE_IN)
        print(f"{label:26s} {path:5.2f} µs per message "
              f"({path / SERVER_US_PER_MESSAGE:.1%} of {SERVER_US_PER_MESSAGE:g} µs); "
              f"one execute() of xmpp_element_in: {execute:.2f} µs")
    instrument.set_handlers([])


if __name__ == "__main__":
    main()
