"""The session, routing, auth and storage events in one process, without a node: their
registration, the sinks prepared at setup, and where the auth and storage events come from.
The same events on a real node are in test_c2s_instrument.py."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from mongoose import c2s_events, instrument
from mongoose.auth import events as auth_events
from mongoose.auth import scram
from mongoose.auth.accounts import AccountExists, SqliteAccountStore
from mongoose.auth.sasl import Failure, SaslServer, Success
from mongoose.c2s import _count
from mongoose.instrument import MemoryHandler, MetricStore, Samples

pytestmark = pytest.mark.timeout(30)

HOSTS = ("localhost", "example.com")


@pytest.fixture
def memory() -> Iterator[MemoryHandler]:
    # Another test module may have reset the process registry: register again (a no-op
    # when the events are there) and prepare fresh sinks.
    handler = MemoryHandler()
    c2s_events.setup(HOSTS)
    auth_events.setup(HOSTS)
    instrument.process_registry.flush_batches()  # sums of earlier tests go nowhere
    instrument.set_handlers([handler])
    yield handler
    instrument.set_handlers([])


def test_the_events_have_mongooseim_names_labels_and_types():
    """A few specs checked by hand against MongooseIM's (mongoose_instrument_xmpp,
    mongoose_c2s, mongoose_router, ejabberd_sm, ejabberd_auth)."""
    c2s_events.register()
    auth_events.register()
    element = instrument.spec("xmpp_element_out")
    assert element.labels == ("connection_type", "host_type")
    assert element.metrics["byte_size"] == "histogram"
    assert {m for m, kind in element.metrics.items() if kind == "spiral"} == {
        "count", "stanza_count", "message_count", "iq_count", "presence_count",
        "error_count", "message_error_count", "iq_error_count", "presence_error_count"}
    for name in ("tcp_data_in", "tcp_data_out", "tls_data_in", "tls_data_out"):
        assert instrument.spec(name).labels == ("connection_type",)
        assert dict(instrument.spec(name).metrics) == {"byte_size": "spiral"}
    assert dict(instrument.spec("sm_session").metrics) == {
        "logins": "spiral", "logouts": "spiral", "count": "counter"}
    assert dict(instrument.spec("c2s_message_processed").metrics) == {"time": "histogram"}
    for name in ("router_stanza_dropped", "router_no_route_found", "sm_message_bounced"):
        assert instrument.spec(name).labels == ("host_type",)
    assert dict(instrument.spec("auth_authorize").metrics) == {
        "count": "spiral", "time": "histogram"}
    assert instrument.spec("storage_query").labels == ("backend", "function")
    # Logins and failures at info, per-stanza events at debug.
    assert instrument.spec("sm_session").log_level == "info"
    assert instrument.spec("auth_authorize").log_level == "info"
    assert instrument.spec("xmpp_element_in").log_level == "debug"
    assert instrument.spec("tcp_data_in").log_level == "debug"


def test_every_measurement_dict_fits_its_event(memory):
    """Each prebuilt measurement dict is accepted by the sink or batch that gets it, the
    way the session uses them (mongoose.c2s._count for the element batches): a wrong key
    would raise (KeyError in a batch's sums, InstrumentError in a sink) in every test run.
    A flush emits each batch once, with the sums of everything counted since."""
    registry = instrument.process_registry
    sinks = c2s_events.host("localhost")
    data = c2s_events.data_sinks()
    elements = [*c2s_events.ELEMENT.values(), c2s_events.OTHER_ELEMENT,
                c2s_events.STREAM_ERROR]
    for counts in elements:
        assert set(counts.values()) == {1}  # _count adds one per key
        for batch in (sinks.element_in, sinks.element_out):
            _count(batch, counts, 10)
    sinks.message_processed.observe("time", 300)
    for batch in (data.tcp_in, data.tcp_out, data.tls_in, data.tls_out):
        batch.sums["byte_size"] += 7
    sinks.sm_session.emit(c2s_events.LOGIN)
    sinks.sm_session.emit(c2s_events.LOGOUT)
    for sink in (sinks.auth_failed, sinks.message_bounced, sinks.stanza_dropped,
                 sinks.no_route_found):
        sink.emit(c2s_events.ONE)
    assert memory.find("xmpp_element_in") == []  # batched: nothing before the flush
    registry.flush_batches()

    errors = 3 + 1  # a <kind> of type='error' for each kind, and the stream error
    for name in ("xmpp_element_in", "xmpp_element_out"):
        [counted] = memory.find(name, {"connection_type": "c2s", "host_type": "localhost"})
        size = counted.pop("byte_size")
        assert isinstance(size, Samples)
        assert (size.count, size.sum) == (len(elements), 10 * len(elements))
        assert counted == {"count": len(elements), "stanza_count": 6, "error_count": errors,
                           **{f"{kind}_{what}": 1 for kind in c2s_events.KINDS
                              for what in ("count", "error_count")}}
    [processed] = memory.find("c2s_message_processed", {"host_type": "localhost"})
    assert (processed["time"].count, processed["time"].sum) == (1, 300)
    for name in c2s_events.DATA_EVENTS:
        assert memory.find(name, {"connection_type": "c2s"}) == [{"byte_size": 7}]
    memory.assert_event("sm_session", {"host_type": "localhost"},
                        lambda m: m == {"logouts": 1, "count": -1})
    with pytest.raises(KeyError):
        sinks.element_in.sums["byte_size"] += 1  # a histogram: observe() it
    with pytest.raises(KeyError):
        data.tcp_in.sums["bytes"] += 1


def test_setup_makes_every_series_exist_at_zero():
    """With a metric store, the sinks prepared at setup create each host's series (and
    the c2s data series) at zero before any traffic: Prometheus' rate() needs them."""
    store = MetricStore()
    instrument.set_handlers([store])
    try:
        c2s_events.setup(HOSTS)
        auth_events.setup(HOSTS)
        events = store.snapshot()["events"]
    finally:
        instrument.set_handlers([])

    def series(name):
        return {tuple(key): values for key, values in events[name]["series"]}

    for host in HOSTS:
        out = series("xmpp_element_out")[("c2s", host)]
        assert out["message_count"] == 0 and sum(out["byte_size"]) == 0
        assert series("c2s_message_processed")[(host,)]["time"][-1] == 0
        assert series("sm_session")[(host,)] == {"logins": 0, "logouts": 0, "count": 0}
        assert series("router_no_route_found")[(host,)] == {"count": 0}
        assert series("auth_authorize")[(host,)]["count"] == 0
    for name in c2s_events.DATA_EVENTS:
        assert series(name) == {("c2s",): {"byte_size": 0}}


# -- the account store: storage_query -------------------------------------------------------


def test_store_calls_emit_storage_query(memory, tmp_path):
    """Each public method emits count and time; a call that raises counts without a
    time (MongooseIM's backend metrics)."""
    with SqliteAccountStore(tmp_path / "a.db", hashes=("sha256",), iterations=1) as store:
        store.register("juliet", "localhost", "pw")
        assert store.get_secrets("juliet", "localhost") is not None
        with pytest.raises(AccountExists):
            store.register("juliet", "localhost", "pw")
    labels = {"backend": "accounts", "function": "get_secrets"}
    [found] = memory.find("storage_query", labels)
    assert found["count"] == 1 and isinstance(found["time"], int) and found["time"] >= 0
    registers = memory.find("storage_query", {"backend": "accounts", "function": "register"})
    assert [sorted(m) for m in registers] == [["count", "time"], ["count"]]


def test_a_store_call_on_another_thread_is_emitted_through_emit_via(memory, tmp_path):
    """A server runs store calls on blocking threads: the call is timed there and its
    event handed to ``emit_via`` (the loop's call_soon), never emitted on that thread."""
    with SqliteAccountStore(tmp_path / "a.db", hashes=("sha256",), iterations=1) as store:
        handed: list[tuple[object, dict]] = []
        threads: list[int] = []

        def emit_via(fn, measurements):
            threads.append(threading.get_ident())
            handed.append((fn, measurements))

        store.emit_via = emit_via
        worker = threading.Thread(target=store.exists, args=("romeo", "localhost"))
        worker.start()
        worker.join()
        assert threads == [worker.ident]
        assert memory.find("storage_query") == []  # nothing emitted on the thread
        fn, measurements = handed[0]
        fn(measurements)  # what the loop does
    [found] = memory.find("storage_query", {"backend": "accounts", "function": "exists"})
    assert found["count"] == 1 and found["time"] >= 0


# -- SASL: auth_authorize ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def secrets():
    return {"juliet": scram.make_secrets("pencil", 4096)}


def sasl_server(secrets, mechanism):
    async def get_secrets(user):
        await asyncio.sleep(0.01)  # a lookup that takes time, as the store's thread hop
        return secrets.get(user)

    return SaslServer(mechanism, host="localhost", get_secrets=get_secrets,
                      channel_binding=None, offered=[mechanism], iterations=4096)


@pytest.mark.parametrize("password, outcome", [("pencil", Success), ("wrong", Failure)])
def test_plain_emits_auth_authorize_whatever_the_outcome(memory, secrets, password, outcome):
    """One auth_authorize per credential check, with the time of the lookup and the key
    derivation in µs."""
    step = asyncio.run(sasl_server(secrets, "PLAIN").start(f"\0juliet\0{password}".encode()))
    assert isinstance(step, outcome)
    [found] = memory.find("auth_authorize", {"host_type": "localhost"})
    assert found["count"] == 1
    assert found["time"] >= 10_000  # the 10 ms lookup is in it


def test_a_malformed_plain_message_checks_no_credentials(memory, secrets):
    step = asyncio.run(sasl_server(secrets, "PLAIN").start(b"no separators"))
    assert isinstance(step, Failure)
    assert memory.find("auth_authorize") == []


def test_scram_emits_auth_authorize_once_with_both_halves_of_the_check(memory, secrets):
    """SCRAM checks credentials in two steps (lookup in client-first, proof in
    client-final): one event, at the end, whose time includes the lookup but not the
    client's round trip in between."""
    import scramp

    async def exchange():
        srv = sasl_server(secrets, "SCRAM-SHA-256")
        client = scramp.ScramClient(["SCRAM-SHA-256"], "juliet", "pencil")
        first = await srv.start(client.get_client_first().encode())
        assert memory.find("auth_authorize") == []
        client.set_server_first(first.data.decode())
        await asyncio.sleep(0.05)  # the client's round trip: not the server's time
        return await srv.step(client.get_client_final().encode())

    assert isinstance(asyncio.run(exchange()), Success)
    [found] = memory.find("auth_authorize", {"host_type": "localhost"})
    assert found["count"] == 1
    assert 10_000 <= found["time"] < 50_000
