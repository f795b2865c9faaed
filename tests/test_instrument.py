"""mongoose.instrument: event registry, span, probes, handlers and `[instrumentation]`.

Tests use the process registry (``mongoose.instrument``) and reset it after each test;
real sockets for the Prometheus scrape and the Graphite push, no sleeps.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from types import SimpleNamespace
from typing import Any

import pytest

import mongoose.instrument.registry as registry_mod
from mongoose import instrument
from mongoose.config import ConfigError, loads
from mongoose.instrument import InstrumentError, LogHandler, MemoryHandler, MetricStore
from mongoose.instrument.exposition import GraphiteReporter, merge, prometheus_text
from mongoose.instrument.store import HISTOGRAM_BUCKETS

pytestmark = pytest.mark.timeout(30)

SESSION = {"logins": "spiral", "logouts": "spiral", "count": "counter"}
HOST = {"host_type": "localhost"}


@pytest.fixture(autouse=True)
def fresh_registry():
    instrument.reset()
    yield
    instrument.reset()


@pytest.fixture
def memory() -> MemoryHandler:
    handler = MemoryHandler()
    instrument.set_handlers([handler])
    return handler


# Registration


def test_registering_the_same_spec_twice_is_a_no_op():
    """A module restarted registers its events again with the same spec: accepted."""
    first = instrument.register("sm_session", ("host_type",), SESSION)
    again = instrument.register("sm_session", ["host_type"], dict(SESSION))
    assert again is first
    assert instrument.spec("sm_session").metrics == SESSION


def test_registering_a_name_with_another_spec_is_an_error():
    """Same name, other label keys or other metrics: InstrumentError."""
    instrument.register("sm_session", ("host_type",), SESSION)
    with pytest.raises(InstrumentError, match="already registered"):
        instrument.register("sm_session", ("host_type", "node"), SESSION)
    with pytest.raises(InstrumentError, match="already registered"):
        instrument.register("sm_session", ("host_type",), {"logins": "counter"})


@pytest.mark.parametrize(("labels", "metrics", "message"), [
    ((), {"count": "meter"}, "unknown metric type 'meter'"),
    ((), {}, "no metrics"),
    (("host-type",), {"count": "spiral"}, "invalid label name"),
    (("a", "a"), {"count": "spiral"}, "duplicate label keys"),
    ((), {"count time": "spiral"}, "invalid metric name"),
])
def test_invalid_specs_are_rejected(labels, metrics, message):
    """Metric types are MongooseIM's four; names must be Prometheus identifiers."""
    with pytest.raises(InstrumentError, match=message):
        instrument.register("ev", labels, metrics)


# Execute


def test_executing_an_unknown_event_is_an_error_with_or_without_handlers(memory):
    """An unregistered name raises even when nothing would consume the event."""
    with pytest.raises(InstrumentError, match="not registered"):
        instrument.execute("nope", {}, {"count": 1})
    instrument.set_handlers([])
    with pytest.raises(InstrumentError, match="not registered"):
        instrument.execute("nope", {}, {"count": 1})


def test_labels_with_other_keys_are_an_error(memory):
    """Missing, extra or misnamed label keys raise; label order does not matter."""
    instrument.register("ev", ("host_type", "pool"), {"count": "spiral"})
    for labels in ({"host_type": "h"}, {"host_type": "h", "pool": "p", "x": 1},
                   {"host_typ": "h", "pool": "p"}):
        with pytest.raises(InstrumentError, match="labels"):
            instrument.execute("ev", labels, {"count": 1})
    instrument.execute("ev", {"pool": "p", "host_type": "h"}, {"count": 1})
    memory.assert_event("ev", {"pool": "p"}, lambda m: m == {"count": 1})


def test_measurements_must_be_registered_metrics(memory):
    """A measurement key that is not a registered metric raises; a subset is fine."""
    instrument.register("sm_session", ("host_type",), SESSION)
    with pytest.raises(InstrumentError, match="jid"):
        instrument.execute("sm_session", HOST, {"logins": 1, "jid": "a@b"})
    instrument.execute("sm_session", HOST, {"logins": 1})
    assert memory.events == [("sm_session", HOST, {"logins": 1})]


def test_without_handlers_only_the_event_name_is_checked():
    """With no handler, execute is a name lookup: label and measurement keys go unchecked."""
    instrument.register("ev", ("host_type",), {"count": "spiral"})
    instrument.execute("ev", {}, {"other": 1})


def test_span_emits_the_call_time_in_microseconds(memory, monkeypatch):
    """span calls fn(*args), returns its result and emits time in integer microseconds."""
    ticks = iter([1_000_000, 3_501_000])
    monkeypatch.setattr(registry_mod, "time", SimpleNamespace(perf_counter_ns=lambda: next(ticks)))
    instrument.register("auth_check_password", ("host_type",), {"time": "histogram"})
    assert instrument.span("auth_check_password", HOST, lambda a, b: a + b, 2, 3) == 5
    assert memory.events == [("auth_check_password", HOST, {"time": 2501})]


def test_span_with_measure_and_with_a_raising_function(memory):
    """measure(time_us, result) chooses the measurements; a call that raises emits nothing."""
    instrument.register("lookup", (), {"time": "histogram", "size": "histogram"})
    instrument.span("lookup", {}, lambda: [1, 2, 3],
                    measure=lambda us, rows: {"time": us, "size": len(rows)})
    memory.assert_event("lookup", {}, lambda m: m["size"] == 3 and m["time"] >= 0)

    def fail():
        raise ValueError("boom")

    with pytest.raises(ValueError):
        instrument.span("lookup", {}, fail)
    assert len(memory.events) == 1


# Probes


class FakeLoop:
    """Records call_later calls; the test fires them."""

    def __init__(self) -> None:
        self.timers: list[FakeTimer] = []

    def call_later(self, delay: float, fn: Any, *args: Any) -> FakeTimer:
        timer = FakeTimer(delay, fn, args)
        self.timers.append(timer)
        return timer

    def fire(self) -> None:
        """Fire every pending timer once."""
        due, self.timers = [t for t in self.timers if not t.cancelled], []
        for timer in due:
            timer.fn(*timer.args)


class FakeTimer:
    def __init__(self, delay: float, fn: Any, args: tuple[Any, ...]) -> None:
        self.delay, self.fn, self.args, self.cancelled = delay, fn, args, False

    def cancel(self) -> None:
        self.cancelled = True


def test_run_probes_executes_each_probe_once(memory):
    """run_probes calls every probe now and emits what it returns."""
    instrument.register("sm_total_sessions", (), {"count": "gauge"})
    sessions = [7]
    instrument.probe("sm_total_sessions", {}, lambda: {"count": sessions[0]})
    instrument.run_probes()
    sessions[0] = 9
    instrument.run_probes()
    assert [m for _, _, m in memory.events] == [{"count": 7}, {"count": 9}]


def test_probes_run_every_interval_on_the_loop(memory):
    """start_probes arms call_later with probe_interval (or the probe's own interval);
    each run re-arms it; stop_probes cancels."""
    instrument.process_registry.probe_interval = 15
    instrument.register("q", ("pool",), {"total": "gauge"})
    instrument.probe("q", {"pool": "a"}, lambda: {"total": 1})
    instrument.probe("q", {"pool": "b"}, lambda: {"total": 2}, interval=2.5)
    loop = FakeLoop()
    instrument.start_probes(loop)
    assert sorted(t.delay for t in loop.timers) == [2.5, 15]
    assert memory.events == []
    loop.fire()
    loop.fire()
    assert len(memory.assert_event("q", {"pool": "a"})) == 2
    assert len(memory.assert_event("q", {"pool": "b"})) == 2
    assert sorted(t.delay for t in loop.timers) == [2.5, 15]
    timers = list(loop.timers)
    instrument.stop_probes()
    assert all(t.cancelled for t in timers)


def test_a_probe_added_after_start_is_armed_at_once(memory):
    """probe() on a started registry arms its timer immediately."""
    instrument.register("g", (), {"v": "gauge"})
    loop = FakeLoop()
    instrument.start_probes(loop)
    instrument.probe("g", {}, lambda: {"v": 1}, interval=1)
    assert [t.delay for t in loop.timers] == [1]


def test_a_crashing_probe_is_logged_and_keeps_its_timer(memory, caplog):
    """A probe that raises is logged (instrument_probe_crashed) and runs again next time."""
    instrument.register("g", (), {"v": "gauge"})
    instrument.probe("g", {}, lambda: 1 / 0, interval=1)
    loop = FakeLoop()
    instrument.start_probes(loop)
    with caplog.at_level(logging.ERROR, logger="mongoose.instrument"):
        loop.fire()
    assert [r.what for r in caplog.records] == ["instrument_probe_crashed"]
    assert len(loop.timers) == 1


def test_a_probe_event_has_gauges_only():
    """As in MongooseIM, probing an event with non-gauge metrics is an error."""
    instrument.register("ev", (), {"count": "spiral", "v": "gauge"})
    with pytest.raises(InstrumentError, match="gauges only"):
        instrument.probe("ev", {}, lambda: {"v": 1})
    with pytest.raises(InstrumentError, match="not registered"):
        instrument.probe("other", {}, lambda: {"v": 1})


# Handlers


def test_memory_handler_assert_event_reports_what_it_saw(memory):
    """assert_event fails with the events of that name it did see."""
    instrument.register("ev", ("host_type",), {"count": "spiral"})
    instrument.execute("ev", HOST, {"count": 1})
    assert memory.assert_event("ev", HOST, lambda m: m["count"] == 1) == [{"count": 1}]
    with pytest.raises(AssertionError, match="localhost"):
        memory.assert_event("ev", {"host_type": "other"})
    with pytest.raises(AssertionError):
        memory.assert_event("ev", HOST, lambda m: m["count"] == 2)


def test_a_crashing_handler_is_logged_and_the_others_still_run(caplog):
    """A handler that raises is logged (instrument_handler_crashed); the caller and the
    next handlers go on."""
    class Broken:
        def handle(self, name: str, labels: Any, measurements: Any) -> None:
            raise RuntimeError("broken handler")

    memory = MemoryHandler()
    instrument.set_handlers([Broken(), memory])
    instrument.register("ev", (), {"count": "spiral"})
    with caplog.at_level(logging.ERROR, logger="mongoose.instrument"):
        instrument.execute("ev", {}, {"count": 1})
    memory.assert_event("ev")
    (record,) = caplog.records
    assert record.what == "instrument_handler_crashed"
    assert record.event == "ev" and record.handler == "Broken"


def test_handlers_are_set_up_for_events_registered_before_and_after():
    """set_up(spec) reaches a handler for every event, whichever came first; a removed
    handler is stopped."""
    calls: list[str] = []

    class Recorder:
        def set_up(self, spec: Any) -> None:
            calls.append(spec.name)

        def handle(self, *args: Any) -> None:
            pass

        def stop(self) -> None:
            calls.append("stop")

    instrument.register("before", (), {"c": "spiral"})
    instrument.set_handlers([Recorder()])
    instrument.register("after", (), {"c": "spiral"})
    instrument.set_handlers([])
    assert calls == ["before", "after", "stop"]


def test_log_handler_writes_one_structured_event(caplog):
    """what is the event name; labels and measurements are fields (a LogRecord attribute
    name gets a trailing underscore)."""
    instrument.set_handlers([LogHandler("info")])
    instrument.register("auth_authorize", ("host_type", "name"), {"count": "spiral"},
                        log_level="info")
    with caplog.at_level(logging.INFO, logger="mongoose.instrument"):
        instrument.execute("auth_authorize", {"host_type": "localhost", "name": "x"},
                           {"count": 1})
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert (record.what, record.host_type, record.name_, record.count) == (
        "auth_authorize", "localhost", "x", 1)


def test_log_handler_below_its_level_logs_nothing(caplog):
    """A debug-level log handler is silent when the logger is at info."""
    instrument.set_handlers([LogHandler("debug")])
    instrument.register("ev", (), {"count": "spiral"})
    with caplog.at_level(logging.INFO, logger="mongoose.instrument"):
        instrument.execute("ev", {}, {"count": 1})
    assert caplog.records == []


def test_log_handler_skips_events_below_its_level(caplog):
    """Events are written at their own level: a handler at info skips a debug event even
    when the logger would take it, and writes a warning event at warning."""
    instrument.set_handlers([LogHandler("info")])
    instrument.register("per_stanza", (), {"count": "spiral"})  # debug by default
    instrument.register("rare", (), {"count": "spiral"}, log_level="warning")
    with caplog.at_level(logging.DEBUG, logger="mongoose.instrument"):
        instrument.execute("per_stanza", {}, {"count": 1})
        instrument.execute("rare", {}, {"count": 1})
    assert [(r.what, r.levelno) for r in caplog.records] == [("rare", logging.WARNING)]


def _session_events(handler: Any) -> None:
    instrument.set_handlers([handler])
    instrument.register("sm_session", ("host_type",), SESSION)
    instrument.register("c2s_message_processed", ("host_type",), {"time": "histogram"})
    instrument.register("sm_total_sessions", (), {"count": "gauge"})
    instrument.execute("sm_session", HOST, {"logins": 1, "count": 1})
    instrument.execute("sm_session", HOST, {"logins": 1, "count": 1})
    instrument.execute("sm_session", HOST, {"logouts": 1, "count": -1})
    instrument.execute("c2s_message_processed", HOST, {"time": 100})
    instrument.execute("c2s_message_processed", HOST, {"time": 3000})
    instrument.execute("sm_total_sessions", {}, {"count": 42})


def test_the_store_keeps_sums_gauges_and_histogram_buckets():
    """Spirals and counters sum, gauges keep the last value, histograms count samples per
    bucket (upper bounds powers of 4; value == bound goes in that bucket) plus the sum."""
    store = MetricStore()
    _session_events(store)
    instrument.execute("c2s_message_processed", HOST, {"time": 4})
    events = store.snapshot()["events"]
    assert events["sm_session"]["series"] == [[["localhost"],
                                               {"logins": 2, "logouts": 1, "count": 1}]]
    assert events["sm_total_sessions"]["series"] == [[[], {"count": 42}]]
    [[_, hist]] = events["c2s_message_processed"]["series"]
    cells = hist["time"]
    assert len(cells) == len(HISTOGRAM_BUCKETS) + 2
    assert cells[1] == 1  # 4 <= 4
    assert cells[HISTOGRAM_BUCKETS.index(256.0) - 0] == 1  # 100 <= 256
    assert cells[HISTOGRAM_BUCKETS.index(4096.0)] == 1  # 3000 <= 4096
    assert cells[-1] == 3104


def test_a_prepared_sink_creates_its_series_at_zero_and_follows_handler_changes():
    """prepared() makes the series exist before the first event (rate() needs the zero);
    a sink prepared before a handler was installed feeds it afterwards."""
    instrument.register("ev", ("host_type",), {"count": "spiral"})
    sink = instrument.prepared("ev", HOST)
    sink.emit({"count": 1})  # no handler: nothing, no error
    store = MetricStore()
    instrument.set_handlers([store])
    assert store.snapshot()["events"]["ev"]["series"] == [[["localhost"], {"count": 0}]]
    sink.emit({"count": 2})
    assert instrument.prepared("ev", HOST) is sink
    assert store.snapshot()["events"]["ev"]["series"] == [[["localhost"], {"count": 2}]]
    with pytest.raises(KeyError):  # the store alone: its update is the emit
        sink.emit({"bytes": 1})
    instrument.set_handlers([store, MemoryHandler()])
    with pytest.raises(InstrumentError, match="not registered metrics"):
        sink.emit({"bytes": 1})
    with pytest.raises(InstrumentError, match="labels"):
        instrument.prepared("ev", {"host": "x"})


def test_prometheus_exposition_names_metrics_as_mongooseim():
    """<event>_<metric> with the event's labels: spiral as a counter (_total), counter as
    a gauge that goes down, gauge as set (with the process as worker label), histogram
    with microsecond buckets."""
    store = MetricStore()
    _session_events(store)
    text = prometheus_text(merge([("1", store.snapshot())])).decode()
    assert "# TYPE sm_session_logins_total counter" in text
    assert 'sm_session_logins_total{host_type="localhost"} 2.0' in text
    assert 'sm_session_logouts_total{host_type="localhost"} 1.0' in text
    assert "# TYPE sm_session_count gauge" in text
    assert 'sm_session_count{host_type="localhost"} 1.0' in text
    assert "# HELP sm_session_logins_total Event: sm_session, Metric: logins" in text
    assert 'c2s_message_processed_time_count{host_type="localhost"} 2.0' in text
    assert 'c2s_message_processed_time_sum{host_type="localhost"} 3100.0' in text
    assert 'c2s_message_processed_time_bucket{host_type="localhost",le="1024.0"} 1.0' in text
    assert 'c2s_message_processed_time_bucket{host_type="localhost",le="+Inf"} 2.0' in text
    assert 'sm_total_sessions_count{worker="1"} 42.0' in text


def test_merge_sums_over_processes_and_keeps_gauges_per_worker():
    """Two workers' sums, counters and histograms add up; their gauges stay apart."""
    a, b = MetricStore(), MetricStore()
    _session_events(a)
    snap_a = a.snapshot()
    instrument.reset()
    _session_events(b)
    instrument.execute("sm_total_sessions", {}, {"count": 7})
    families = merge([("1", snap_a), ("2", b.snapshot())])
    assert families["sm_session_logins"].samples == {("localhost",): 4}
    assert families["sm_session_count"].samples == {("localhost",): 2}
    assert families["c2s_message_processed_time"].samples[("localhost",)][-1] == 6200
    assert families["sm_total_sessions_count"].labels == ("worker",)
    assert families["sm_total_sessions_count"].samples == {("1",): 42, ("2",): 7}


class CarbonServer:
    """A Graphite plaintext listener on a free port, reading connections on a thread."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.data = b""
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                while chunk := conn.recv(65536):
                    with self.changed:
                        self.data += chunk
                        self.changed.notify_all()

    def wait_lines(self, count: int, timeout: float = 10) -> list[str]:
        """Wait until ``count`` complete lines arrived; fail after ``timeout`` seconds."""
        with self.changed:
            assert self.changed.wait_for(lambda: self.data.count(b"\n") >= count, timeout), (
                f"got only {self.data!r}")
            return self.data.decode().splitlines()

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


def test_graphite_lines_carry_sums_gauges_and_interval_statistics():
    """prefix.event.label_values.metric value timestamp; a histogram sends its running
    count and, over the samples since the previous push, mean and quantile bounds; a
    gauge's worker becomes a path part."""
    store = MetricStore()
    _session_events(store)
    reporter = GraphiteReporter("mim")
    lines = reporter.lines(merge([("1", store.snapshot())]), 1700000000)
    assert lines == [
        "mim.c2s_message_processed.localhost.time.count 2 1700000000",
        "mim.c2s_message_processed.localhost.time.mean 1550 1700000000",
        "mim.c2s_message_processed.localhost.time.p50 256 1700000000",
        "mim.c2s_message_processed.localhost.time.p95 4096 1700000000",
        "mim.c2s_message_processed.localhost.time.p99 4096 1700000000",
        "mim.sm_session.localhost.count 1 1700000000",
        "mim.sm_session.localhost.logins 2 1700000000",
        "mim.sm_session.localhost.logouts 1 1700000000",
        "mim.sm_total_sessions.worker1.count 42 1700000000",
    ]
    # No new samples: only the running count goes out for the histogram.
    again = reporter.lines(merge([("1", store.snapshot())]), 1700000060)
    assert "mim.c2s_message_processed.localhost.time.count 2 1700000060" in again
    assert not [line for line in again if ".time.mean" in line]


def test_graphite_escapes_dots_in_label_values():
    store = MetricStore()
    instrument.set_handlers([store])
    instrument.register("lookup", ("host_type",), {"count": "spiral"})
    instrument.execute("lookup", {"host_type": "example.com"}, {"count": 5})
    assert GraphiteReporter().lines(merge([("1", store.snapshot())]), 10) == [
        "mongooseim.lookup.example_com.count 5 10"]


# Batches


def _batched_event() -> Any:
    """An event with a sum of each kind and a histogram, and its batch for localhost."""
    instrument.register("ev", ("host_type",), {"count": "spiral", "errors": "spiral",
                                               "level": "counter", "size": "histogram"})
    return instrument.batch("ev", HOST)


def test_a_batch_sums_in_place_and_flushes_one_event_with_the_non_zero_sums(memory):
    """Sums and histogram samples accumulate in the batch; a flush emits them as one
    event, without the sums that are zero, and starts again from zero."""
    batch = _batched_event()
    assert instrument.batch("ev", {"host_type": "localhost"}) is batch
    batch.sums["count"] += 1
    batch.sums["count"] += 2
    batch.sums["level"] -= 1  # a counter may go down: not zero, emitted
    batch.observe("size", 10)
    batch.observe("size", 100)
    assert memory.events == []
    instrument.process_registry.flush_batches()
    [(name, labels, measurements)] = memory.events
    assert (name, labels) == ("ev", HOST)
    size = measurements.pop("size")
    assert measurements == {"count": 3, "level": -1}
    assert isinstance(size, registry_mod.Samples)
    assert (size.count, size.sum) == (2, 110)
    assert repr(size) == "Samples(count=2, sum=110)"
    expected = [0] * (len(HISTOGRAM_BUCKETS) + 1)  # one per bound, then +Inf
    expected[HISTOGRAM_BUCKETS.index(16.0)] = 1
    expected[HISTOGRAM_BUCKETS.index(256.0)] = 1
    assert size.buckets == expected
    assert batch.sums == {"count": 0, "errors": 0, "level": 0}

    # A sample of zero still counts: the histogram goes out alone.
    batch.observe("size", 0)
    instrument.process_registry.flush_batches()
    [only] = memory.events[1:]
    assert list(only[2]) == ["size"] and (only[2]["size"].count, only[2]["size"].sum) == (1, 0)


def test_a_batch_with_nothing_to_report_emits_nothing(memory):
    """No event for a second in which nothing happened, nor for sums back at zero."""
    batch = _batched_event()
    instrument.process_registry.flush_batches()
    batch.sums["level"] += 1
    batch.sums["level"] -= 1
    instrument.process_registry.flush_batches()
    assert memory.events == []


def test_a_batch_takes_registered_sums_and_histograms_only():
    """A gauge cannot be batched (a batch sums); a batch has a sum for each spiral and
    counter and a histogram for each histogram metric, and nothing else: a wrong
    metric raises KeyError where the code adds it."""
    instrument.register("mixed", (), {"count": "spiral", "v": "gauge"})
    with pytest.raises(InstrumentError, match="gauge"):
        instrument.batch("mixed", {})
    with pytest.raises(InstrumentError, match="not registered"):
        instrument.batch("nope", {})
    batch = _batched_event()
    with pytest.raises(InstrumentError, match="labels"):
        instrument.batch("ev", {"host": "x"})
    with pytest.raises(KeyError):
        batch.sums["size"] += 1  # a histogram: observe it
    with pytest.raises(KeyError):
        batch.observe("count", 1)  # a spiral: add to its sum
    with pytest.raises(KeyError):
        batch.sums["bytes"] += 1


@pytest.mark.parametrize("with_memory", [False, True], ids=["store_alone", "store_and_memory"])
def test_the_store_merges_samples_into_its_buckets(with_memory):
    """The store adds a batch's Samples bucket by bucket: a value equal to a bound is in
    that bucket, one above the last bound in +Inf, and the sum follows; single values
    executed on the same series land in the same cells. Alone, the store's update is the
    sink's emit (trusted_updates); with another handler it goes through the checks."""
    store = MetricStore()
    instrument.set_handlers([store, MemoryHandler()] if with_memory else [store])
    batch = _batched_event()
    assert (batch.sink.emit is batch.sink.calls[0][0]) is not with_memory
    last = HISTOGRAM_BUCKETS[-1]
    for value in (1, 4, 5, last, last + 1):
        batch.observe("size", value)
    batch.sums["count"] += 5
    instrument.process_registry.flush_batches()
    [[key, values]] = store.snapshot()["events"]["ev"]["series"]
    assert key == ["localhost"]
    expected = [0] * (len(HISTOGRAM_BUCKETS) + 2)
    expected[0] = 1  # 1 <= 1
    expected[1] = 1  # 4 <= 4
    expected[2] = 1  # 4 < 5 <= 16
    expected[len(HISTOGRAM_BUCKETS) - 1] = 1  # == the last bound
    expected[len(HISTOGRAM_BUCKETS)] = 1  # +Inf
    expected[-1] = 1 + 4 + 5 + last + last + 1
    assert values == {"count": 5, "errors": 0, "level": 0, "size": expected}

    batch.observe("size", 16)
    instrument.process_registry.flush_batches()
    instrument.execute("ev", HOST, {"size": 3})
    [[_, values]] = store.snapshot()["events"]["ev"]["series"]
    expected[2] += 1  # 16 <= 16
    expected[1] += 1  # 3 <= 4
    expected[-1] += 16 + 3
    assert values["size"] == expected and values["count"] == 5
    text = prometheus_text(merge([("1", store.snapshot())])).decode()
    assert 'ev_size_count{host_type="localhost"} 7.0' in text
    assert 'ev_size_bucket{host_type="localhost",le="+Inf"} 7.0' in text
    assert 'ev_size_bucket{host_type="localhost",le="16.0"} 5.0' in text


def test_remove_probes_flushes_the_batches_and_the_timer_comes_back_with_start(memory):
    """The probes' owner stopping emits what the batches hold; the batch timer is armed
    again when the probes start again."""
    batch = _batched_event()
    loop = FakeLoop()
    instrument.start_probes(loop)
    [timer] = loop.timers
    batch.sums["count"] += 4
    instrument.process_registry.remove_probes()
    assert memory.events == [("ev", HOST, {"count": 4})]
    assert timer.cancelled
    again = FakeLoop()
    instrument.start_probes(again)
    assert [t.delay for t in again.timers] == [registry_mod.BATCH_INTERVAL]
    batch.sums["count"] += 1
    again.fire()
    assert memory.events[1:] == [("ev", HOST, {"count": 1})]


def test_the_batch_timer_runs_on_the_probes_loop(memory):
    """One timer flushes every batch every BATCH_INTERVAL seconds, on the loop the
    probes run on: armed by start_probes for batches made before, at once for the first
    batch made after; each flush re-arms it; stop_probes cancels it."""
    instrument.register("other", (), {"count": "spiral"})
    instrument.register("g", (), {"v": "gauge"})
    instrument.probe("g", {}, lambda: {"v": 1}, interval=15)
    early = _batched_event()
    loop = FakeLoop()
    instrument.start_probes(loop)
    assert sorted(t.delay for t in loop.timers) == [registry_mod.BATCH_INTERVAL, 15]
    late = instrument.batch("other", {})
    assert len(loop.timers) == 2  # one timer for all batches
    early.sums["count"] += 2
    late.sums["count"] += 3
    loop.fire()
    assert sorted((n, m["count"]) for n, _, m in memory.events if n != "g") == [
        ("ev", 2), ("other", 3)]
    memory.clear()
    loop.fire()  # nothing happened since
    assert [n for n, _, _ in memory.events] == ["g"]
    assert sorted(t.delay for t in loop.timers) == [registry_mod.BATCH_INTERVAL, 15]
    timers = list(loop.timers)
    instrument.stop_probes()
    assert all(t.cancelled for t in timers)


def test_the_first_batch_on_a_started_registry_arms_the_timer(memory):
    """With the probes started and no batch yet, the first batch arms the timer."""
    loop = FakeLoop()
    instrument.start_probes(loop)
    assert loop.timers == []
    batch = _batched_event()
    assert [t.delay for t in loop.timers] == [registry_mod.BATCH_INTERVAL]
    batch.sums["errors"] += 1
    loop.fire()
    assert memory.events == [("ev", HOST, {"errors": 1})]


def test_run_probes_flushes_the_batches_too(memory):
    """An on-demand run of the probes (a scrape) emits the batches' sums as well."""
    batch = _batched_event()
    batch.sums["count"] += 1
    instrument.run_probes()
    assert memory.events == [("ev", HOST, {"count": 1})]


def test_a_debug_log_handler_logs_a_batch_once_per_flush(caplog):
    """A log handler at debug writes one line per batch and flush, with the sums of the
    interval; the histogram is its Samples (a JSON log line has its repr). A handler at
    info does not want the (debug) event: the batch's sink has no call, and the session
    skips the counting."""
    from mongoose.logs import JsonFormatter

    instrument.set_handlers([LogHandler("debug")])
    batch = _batched_event()
    for _ in range(3):
        batch.sums["count"] += 1
        batch.observe("size", 100)
    with caplog.at_level(logging.DEBUG, logger="mongoose.instrument"):
        instrument.process_registry.flush_batches()
        instrument.process_registry.flush_batches()
    (record,) = caplog.records
    assert (record.what, record.host_type, record.count) == ("ev", "localhost", 3)
    assert (record.size.count, record.size.sum) == (3, 300)
    line = json.loads(JsonFormatter().format(record))
    assert line["size"] == "Samples(count=3, sum=300)" and line["count"] == 3

    instrument.set_handlers([LogHandler("info")])
    assert batch.sink.calls == ()
    batch.sums["count"] += 1
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="mongoose.instrument"):
        instrument.process_registry.flush_batches()
    assert caplog.records == []


def test_a_memory_handler_records_each_flush_s_own_samples(memory):
    """A MemoryHandler gets the Samples object; later samples go into the batch's next
    Samples, never into one already emitted."""
    batch = _batched_event()
    batch.observe("size", 2)
    instrument.process_registry.flush_batches()
    batch.observe("size", 2000)
    batch.observe("size", 3000)
    instrument.process_registry.flush_batches()
    first, second = (m["size"] for _, _, m in memory.events)
    assert isinstance(first, registry_mod.Samples) and isinstance(second, registry_mod.Samples)
    assert (first.count, first.sum, first.buckets[1]) == (1, 2, 1)
    assert (second.count, second.sum) == (2, 5000)
    assert second.buckets[HISTOGRAM_BUCKETS.index(4096.0)] == 2 and second.buckets[1] == 0


# Configuration


def test_instrumentation_defaults_enable_no_handler():
    """Without [instrumentation.*] tables no handler runs; probe_interval is 15 s."""
    config = loads("")
    assert config.instrumentation.probe_interval == 15
    assert config.instrumentation.prometheus is None
    assert config.instrumentation.log is None
    assert config.instrumentation.graphite is None
    assert instrument.setup(config) is None
    assert instrument.handlers() == ()


def test_instrumentation_tables_with_their_defaults():
    """An empty table enables its handler with MongooseIM's defaults."""
    config = loads("[instrumentation]\nprobe_interval = 5\n[instrumentation.prometheus]\n"
                   "[instrumentation.log]\n[instrumentation.graphite]\n")
    section = config.instrumentation
    assert section.probe_interval == 5
    assert (section.prometheus.port, section.prometheus.ip_address) == (9091, "127.0.0.1")
    assert section.log.level == "info"
    assert (section.graphite.host, section.graphite.port, section.graphite.interval,
            section.graphite.prefix) == ("127.0.0.1", 2003, 60, "mongooseim")


@pytest.mark.parametrize(("text", "key"), [
    ("[instrumentation]\nprobe_interval = 0", "instrumentation.probe_interval"),
    ('[instrumentation.prometheus]\nport = "x"', "instrumentation.prometheus.port"),
    ('[instrumentation.prometheus]\nip_address = "local"',
     "instrumentation.prometheus.ip_address"),
    ('[instrumentation.log]\nlevel = "loud"', "instrumentation.log.level"),
    ("[instrumentation.graphite]\nport = 0", "instrumentation.graphite.port"),
    ('[instrumentation.graphite]\nprefix = "a b"', "instrumentation.graphite.prefix"),
    ('[instrumentation.graphite]\nhost = ""', "instrumentation.graphite.host"),
    ("[instrumentation.exometer]", "instrumentation.exometer"),
    ("[instrumentation.log]\nlevl = 1", "instrumentation.log.levl"),
])
def test_instrumentation_errors_name_the_key(text, key):
    """A bad or unknown key under [instrumentation] is a ConfigError naming its path."""
    with pytest.raises(ConfigError) as error:
        loads(text)
    assert error.value.key == key
    assert key in str(error.value)


def test_setup_installs_one_store_for_prometheus_and_graphite_and_the_log_handler():
    """setup(config) installs the metric store (shared by the prometheus and graphite
    outputs) and the log handler, and sets the probe interval."""
    config = loads("[instrumentation]\nprobe_interval = 3\n"
                   '[instrumentation.prometheus]\n'
                   '[instrumentation.log]\nlevel = "debug"\n'
                   '[instrumentation.graphite]\nhost = "127.0.0.1"\ninterval = 3600\n')
    store = instrument.setup(config)
    assert isinstance(store, MetricStore)
    assert [type(h) for h in instrument.handlers()] == [MetricStore, LogHandler]
    assert instrument.process_registry.probe_interval == 3
    instrument.register("ev", ("host_type",), {"count": "spiral"})
    instrument.execute("ev", HOST, {"count": 3})
    assert store.snapshot()["events"]["ev"]["series"] == [[["localhost"], {"count": 3}]]
    assert instrument.setup(loads("[instrumentation.log]\n")) is None


def test_a_handler_failing_to_set_up_an_event_does_not_fail_the_registration(caplog):
    """A set_up that raises (a Prometheus name clash, say) is logged; register succeeds
    and the other handlers get the event."""
    class Picky(MemoryHandler):
        def set_up(self, spec: Any) -> None:
            raise ValueError("Duplicated timeseries")

    memory = MemoryHandler()
    instrument.set_handlers([Picky(), memory])
    with caplog.at_level(logging.ERROR, logger="mongoose.instrument"):
        instrument.register("ev", (), {"count": "spiral"})
    instrument.execute("ev", {}, {"count": 1})
    memory.assert_event("ev")
    assert [r.what for r in caplog.records] == ["instrument_handler_crashed"]


def test_a_probe_added_on_a_running_loop_runs_there(memory):
    """probe() called from a running asyncio loop arms its timer on that loop."""
    import asyncio

    instrument.register("g", (), {"v": "gauge"})

    async def main() -> int:
        ran: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def sample() -> dict[str, int]:
            if not ran.done():
                ran.set_result(5)
            return {"v": 5}

        instrument.probe("g", {}, sample, interval=0.01)
        return await asyncio.wait_for(ran, 10)

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(main()) == 5
    finally:
        instrument.stop_probes()
        loop.close()
    memory.assert_event("g", {}, lambda m: m == {"v": 5})
