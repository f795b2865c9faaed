"""The storage backends (mongoose/storage/backends/): what every backend shares
(instrumentation, remove_user), and the accounts, private, vcard and last interfaces,
each through its public methods on every driver of the ``database`` fixture."""

from __future__ import annotations

import inspect
import threading

import pytest
from backend_helpers import recording, run_threads

from mongoose.auth import scram
from mongoose.storage.backends import Backend
from mongoose.storage.backends.accounts import (
    AccountExists,
    InvalidUser,
    NoSuchAccount,
    SqlAccountStore,
)
from mongoose.storage.backends.last import LastActivity, LastStore
from mongoose.storage.backends.mam import ArchivedMessage, ArchiveStore, MamPrefs
from mongoose.storage.backends.offline import OfflineMessage, OfflineStore
from mongoose.storage.backends.privacy import PrivacyStore
from mongoose.storage.backends.private import PrivateStore
from mongoose.storage.backends.roster import RosterItem, RosterStore
from mongoose.storage.backends.vcard import VcardSearch, VcardStore

pytestmark = pytest.mark.timeout(60)

BACKENDS = [SqlAccountStore, RosterStore, OfflineStore, ArchiveStore, PrivateStore,
            VcardStore, LastStore, PrivacyStore]
# Public methods that are not queries.
NOT_QUERIES = {"close"}
TRICKY = "O'Brien \"quoted\" %_! ; -- DROP TABLE users; ünïcødé 日本 🦆"


def accounts_of(db) -> SqlAccountStore:
    return SqlAccountStore(db, hashes=("sha256",), iterations=1)


@pytest.fixture
def memory():
    """The events emitted during the test."""
    with recording() as handler:
        yield handler


# -- every backend -------------------------------------------------------------------------


@pytest.mark.parametrize("cls", BACKENDS, ids=lambda cls: cls.name)
def test_every_public_method_is_an_instrumented_query(cls):
    """Each public method of a backend is marked @query (so it emits storage_query), and
    the backend's label is its module's name."""
    public = {name for name, value in inspect.getmembers(cls, inspect.isfunction)
              if not name.startswith("_")} - NOT_QUERIES
    assert set(cls.queries) == public
    assert "remove_user" in public
    assert cls.name == cls.__module__.rsplit(".", 1)[1]
    assert issubclass(cls, Backend)


@pytest.mark.parametrize("cls", BACKENDS, ids=lambda cls: cls.name)
def test_a_backend_prepares_a_series_per_method(cls, database, memory):
    """Building a backend prepares the storage_query sink of each of its methods."""
    backend = cls(database)
    assert {labels["function"] for labels in (
        sink.labels for sink in backend._sinks.values())} == set(cls.queries)
    assert all(sink.labels["backend"] == cls.name for sink in backend._sinks.values())


def test_calls_emit_storage_query_with_count_and_time(database, memory):
    """A call emits count and time; a call that raises counts without a time."""
    last = LastStore(database)
    last.set("juliet", "localhost", 100)
    [found] = memory.find("storage_query", {"backend": "last", "function": "set"})
    assert found["count"] == 1 and isinstance(found["time"], int) and found["time"] >= 0
    database.close()
    with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises when closed
        last.get("juliet", "localhost")
    assert memory.find("storage_query", {"backend": "last", "function": "get"}) == [
        {"count": 1}]


def test_calls_on_other_threads_are_emitted_through_emit_via(database, memory):
    """With emit_via set, a call on another thread is timed there and its event handed
    to emit_via (the loop's call_soon), never emitted on that thread."""
    private = PrivateStore(database)
    handed, threads = [], []

    def emit_via(fn, measurements):
        threads.append(threading.get_ident())
        handed.append((fn, measurements))

    private.emit_via = emit_via
    worker = threading.Thread(target=private.get, args=("romeo", "localhost", "ns"))
    worker.start()
    worker.join()
    assert threads == [worker.ident]
    assert memory.find("storage_query") == []
    fn, measurements = handed[0]
    fn(measurements)
    [found] = memory.find("storage_query", {"backend": "private", "function": "get"})
    assert found["count"] == 1


def test_remove_user_leaves_other_users_alone(database):
    """remove_user of every backend deletes that user's data and nobody else's."""
    accounts = accounts_of(database)
    private, vcard, last = PrivateStore(database), VcardStore(database), LastStore(database)
    for user in ("juliet", "romeo"):
        accounts.register(user, "localhost", "pw")
        private.set(user, "localhost", "ns:a", "<a/>")
        vcard.set(user, "localhost", "<vCard/>", VcardSearch(fn=user))
        last.set(user, "localhost", 5, "away")
    for backend in (accounts, private, vcard, last):
        backend.remove_user("juliet", "localhost")
    assert not accounts.exists("juliet", "localhost")
    assert private.get("juliet", "localhost", "ns:a") is None
    assert vcard.get("juliet", "localhost") is None
    assert vcard.search("localhost", {"fn": "juliet"}) == []
    assert last.get("juliet", "localhost") is None
    assert accounts.exists("romeo", "localhost")
    assert private.get("romeo", "localhost", "ns:a") == "<a/>"
    assert vcard.get("romeo", "localhost") == "<vCard/>"
    assert last.get("romeo", "localhost") == LastActivity(5, "away")


# -- accounts ------------------------------------------------------------------------------


def test_accounts_register_exists_and_secrets(database):
    """A registered account exists on its host only, with secrets that check."""
    accounts = accounts_of(database)
    accounts.register("juliet", "localhost", "pencil")
    assert accounts.exists("juliet", "localhost")
    assert not accounts.exists("juliet", "example.com")
    secrets = accounts.get_secrets("juliet", "localhost")
    assert list(secrets) == ["sha256"] and secrets["sha256"].iterations == 1
    assert scram.check_password(secrets, "pencil")
    assert accounts.get_secrets("romeo", "localhost") is None


def test_accounts_never_store_the_password(database):
    """The password column stays empty; the password appears nowhere in the row."""
    accounts_of(database).register("juliet", "localhost", "pencil-secret")
    [row] = database.query('SELECT username, server, "password", pass_details FROM users')
    assert row[:3] == ("juliet", "localhost", "")
    assert "pencil-secret" not in row[3]


def test_accounts_duplicate_register_keeps_the_old_secrets(database):
    """register of an existing account raises AccountExists and changes nothing."""
    accounts = accounts_of(database)
    accounts.register("juliet", "localhost", "pencil")
    with pytest.raises(AccountExists) as raised:
        accounts.register("juliet", "localhost", "other")
    assert raised.value.jid == "juliet@localhost"
    assert scram.check_password(accounts.get_secrets("juliet", "localhost"), "pencil")


def test_accounts_unregister_and_set_password(database):
    """unregister says whether there was an account; set_password of none raises."""
    accounts = accounts_of(database)
    accounts.register("juliet", "localhost", "pencil")
    accounts.set_password("juliet", "localhost", "quill")
    assert scram.check_password(accounts.get_secrets("juliet", "localhost"), "quill")
    assert accounts.unregister("juliet", "localhost") is True
    assert accounts.unregister("juliet", "localhost") is False
    with pytest.raises(NoSuchAccount):
        accounts.set_password("juliet", "localhost", "x")


def test_accounts_list_is_sorted_by_code_point_per_host(database):
    """list_users is sorted by code point whatever the collation, per host; count agrees;
    quotes and non-ASCII user names are kept as given."""
    accounts = accounts_of(database)
    users = ["romeo", "Zed", "émile", "o'brien", "juliet", "日本"]
    for user in users:
        accounts.register(user, "localhost", "x")
    accounts.register("tybalt", "example.com", "x")
    assert accounts.list_users("localhost") == sorted(users)
    assert accounts.count("localhost") == len(users)
    assert accounts.list_users("nowhere") == [] and accounts.count("nowhere") == 0


def test_accounts_register_many_is_all_or_nothing(database):
    """register_many creates every account, or none and names one already there."""
    accounts = accounts_of(database)
    assert accounts.register_many("localhost", [(f"u{i}", "pw") for i in range(50)]) == 50
    assert accounts.count("localhost") == 50
    with pytest.raises(AccountExists) as raised:
        accounts.register_many("localhost", [("new1", "pw"), ("u7", "pw"), ("new2", "pw")])
    assert raised.value.jid == "u7@localhost"
    assert not accounts.exists("new1", "localhost")
    with pytest.raises(AccountExists):  # repeated within the batch
        accounts.register_many("localhost", [("twice", "pw"), ("twice", "pw")])
    assert accounts.count("localhost") == 50


@pytest.mark.parametrize("user", ["", "a@b", "a/b"])
def test_accounts_refuse_impossible_users(database, user):
    """Empty user names and ones with '@' or '/' are refused."""
    with pytest.raises(InvalidUser):
        accounts_of(database).register(user, "localhost", "pw")


def test_accounts_from_several_threads(database):
    """Threads registering and reading at once lose nothing."""
    accounts = accounts_of(database)

    def work(n: int) -> None:
        for i in range(25):
            accounts.register(f"t{n}-{i}", "localhost", "pw")
            assert accounts.exists(f"t{n}-{i}", "localhost")

    run_threads(*(lambda n=n: work(n) for n in range(4)))
    assert accounts.count("localhost") == 100


def test_accounts_racing_registers_of_one_name(database):
    """Of threads registering the same account at once, exactly one succeeds."""
    accounts = accounts_of(database)

    def attempt() -> bool:
        try:
            accounts.register("juliet", "localhost", "pw")
        except AccountExists:
            return False
        return True

    assert sorted(run_threads(*[attempt] * 4)) == [False, False, False, True]


# -- private -------------------------------------------------------------------------------


def test_private_get_set_replace_delete(database):
    """Data are stored per namespace and user, replaced by a later set, deleted alone."""
    private = PrivateStore(database)
    assert private.get("juliet", "localhost", "storage:bookmarks") is None
    private.set("juliet", "localhost", "storage:bookmarks", "<storage xmlns='storage:bookmarks'/>")
    private.set("juliet", "localhost", "storage:bookmarks", f"<storage>{TRICKY}</storage>")
    private.set("juliet", "localhost", "other:ns", "<query/>")
    assert private.get("juliet", "localhost", "storage:bookmarks") == f"<storage>{TRICKY}</storage>"
    assert private.get("romeo", "localhost", "other:ns") is None
    assert private.delete("juliet", "localhost", "other:ns") is True
    assert private.delete("juliet", "localhost", "other:ns") is False
    assert private.get("juliet", "localhost", "storage:bookmarks") is not None


def test_private_many_namespaces_at_once(database):
    """set_many writes several namespaces together; get_many returns those present."""
    private = PrivateStore(database)
    private.set_many("juliet", "localhost", {"a": "<a/>", "b": "<b/>", TRICKY: "<t/>"})
    assert private.get_many("juliet", "localhost", ["a", TRICKY, "missing", "a"]) == {
        "a": "<a/>", TRICKY: "<t/>"}
    assert private.get_many("juliet", "localhost", []) == {}
    private.set_many("juliet", "localhost", {})


# -- vcard ---------------------------------------------------------------------------------


def test_vcard_get_set_delete(database):
    """A vCard is stored as given, replaced by set, removed by delete."""
    vcard = VcardStore(database)
    assert vcard.get("juliet", "localhost") is None
    vcard.set("juliet", "localhost", "<vCard><FN>J</FN></vCard>")
    vcard.set("juliet", "localhost", f"<vCard><FN>{TRICKY}</FN></vCard>")
    assert vcard.get("juliet", "localhost") == f"<vCard><FN>{TRICKY}</FN></vCard>"
    assert vcard.delete("juliet", "localhost") is True
    assert vcard.delete("juliet", "localhost") is False
    assert vcard.get("juliet", "localhost") is None


def test_vcard_search_fields(database):
    """search matches lower-cased: exact values, prefixes with '*', several fields at
    once, LIKE characters literally; ordered by user, limited."""
    vcard = VcardStore(database)
    people = {
        "alice": VcardSearch(fn="Alice Liddell", family="Liddell", email="alice@Wonder.land",
                             locality="Oxford"),
        "bob": VcardSearch(fn="Bob_Builder", family="Builder", locality="oxford"),
        "carol": VcardSearch(fn="100% Carol", family="Liddell", locality="Paris"),
    }
    for user, fields in people.items():
        vcard.set(user, "localhost", "<vCard/>", fields)
    vcard.set("dave", "localhost", "<vCard/>")  # no search fields: never found

    def users(**fields):
        return [user for user, _ in vcard.search("localhost", fields)]

    assert users(locality="OXFORD") == ["alice", "bob"]
    assert users(family="liddell") == ["alice", "carol"]
    assert users(family="Lid*") == ["alice", "carol"]
    assert users(family="liddell", locality="paris") == ["carol"]
    assert users(fn="bob_*") == ["bob"]
    assert users(fn="bob%*") == []  # % is literal
    assert users(fn="100%*") == ["carol"]
    assert users(user="ali*") == ["alice"]
    assert users() == ["alice", "bob", "carol"]
    assert [u for u, _ in vcard.search("localhost", {}, limit=2)] == ["alice", "bob"]
    assert vcard.search("localhost", {"email": "ALICE@wonder.land"}) == [
        ("alice", people["alice"])]
    assert vcard.search("example.com", {}) == []
    with pytest.raises(ValueError):
        vcard.search("localhost", {"password": "x"})
    vcard.set("alice", "localhost", "<vCard/>")  # set without fields: no longer found
    assert users(locality="oxford") == ["bob"]


# -- last ----------------------------------------------------------------------------------


def test_last_set_get_and_count_active(database):
    """set replaces the user's row; count_active counts users seen since a time."""
    last = LastStore(database)
    assert last.get("juliet", "localhost") is None
    last.set("juliet", "localhost", 1_000, "gone")
    last.set("juliet", "localhost", 2_000, TRICKY)
    last.set("romeo", "localhost", 1_500)
    last.set("tybalt", "example.com", 3_000)
    assert last.get("juliet", "localhost") == LastActivity(2_000, TRICKY)
    assert last.get("romeo", "localhost") == LastActivity(1_500, "")
    assert last.count_active("localhost", 1_500) == 2
    assert last.count_active("localhost", 1_501) == 1
    assert last.count_active("example.com", 0) == 1


def test_last_keeps_times_past_2038(database):
    """Seconds past 2^31 (2038) are kept."""
    last = LastStore(database)
    last.set("juliet", "localhost", 2**31 + 5)
    assert last.get("juliet", "localhost").seconds == 2**31 + 5


def test_transactions_survive_serialization_failures(database):
    """Transactions that fail with SQLSTATE 40001 at COMMIT (what CockroachDB does under
    contention; injected here, PostgreSQL only) run again whole: each write of every
    backend is applied once, and what it returns is what was stored."""
    if not hasattr(database, "inject_serialization_failures"):
        pytest.skip("40001 is injected on PostgreSQL (drivers pgsql and cockroachdb) only")
    def twice_failing(call, *args):
        database.inject_serialization_failures(2)
        result = call(*args)
        assert database.injections_left == 0
        return result

    accounts, roster = accounts_of(database), RosterStore(database)
    offline, archive = OfflineStore(database), ArchiveStore(database)
    privacy, private, vcard = PrivacyStore(database), PrivateStore(database), VcardStore(database)
    twice_failing(accounts.register_many, "localhost", [("a", "pw"), ("b", "pw")])
    assert accounts.list_users("localhost") == ["a", "b"]
    version = twice_failing(roster.upsert_item, "juliet", "localhost",
                            RosterItem("romeo@x", groups=("g",)))
    assert roster.get_roster("juliet", "localhost").version == version
    twice_failing(offline.store, "juliet", "localhost",
                  [OfflineMessage(i, "romeo@x", b"<message/>") for i in range(3)])
    assert len(offline.pop_all("juliet", "localhost")) == 3
    rows = [ArchivedMessage(i, "juliet", "localhost", "romeo@x", "romeo@x", "in", b"<m/>")
            for i in range(1, ArchiveStore.ROWS_PER_STATEMENT + 10)]
    twice_failing(archive.append, rows)
    assert archive.lookup("juliet", "localhost", limit=0, count=True).total == len(rows)
    twice_failing(archive.set_prefs, "juliet", "localhost", MamPrefs("roster", ("a@x",)))
    assert archive.get_prefs("juliet", "localhost") == MamPrefs("roster", ("a@x",))
    twice_failing(privacy.block, "juliet", "localhost", ["a@x", "b@x"])
    assert twice_failing(privacy.unblock, "juliet", "localhost", ["a@x"]) == ["a@x"]
    assert privacy.get_blocklist("juliet", "localhost") == ["b@x"]
    twice_failing(private.set_many, "juliet", "localhost", {"a": "<a/>", "b": "<b/>"})
    assert private.get_many("juliet", "localhost", ["a", "b"]) == {"a": "<a/>", "b": "<b/>"}
    twice_failing(vcard.set, "juliet", "localhost", "<vCard/>", VcardSearch(fn="J"))
    assert vcard.search("localhost", {"fn": "j"}) == [("juliet", VcardSearch(fn="J"))]
