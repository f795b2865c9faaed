"""The archive interface (mongoose/storage/backends/mam.py) on every driver of the
``database`` fixture: message ids, appends, RSM paging and filters, preferences,
remove_user, and the batch writer (batching, flushing, failures reaching the senders)."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import pytest
from backend_helpers import recording, run_threads

from mongoose.storage import StorageError, StorageUnavailable
from mongoose.storage.backends.mam import (
    ArchivedMessage,
    ArchiveStore,
    BatchWriter,
    MamPrefs,
    MessageIdGenerator,
    Page,
    decode_id,
    encode_id,
    id_range,
    parse_id,
)

pytestmark = pytest.mark.timeout(60)

T0 = 1_700_000_000_000_000  # µs
TRICKY = "O'Brien \"q\" %_! ; -- ünïcødé 日本 🦆"


def msg(i: int, *, user: str = "juliet", remote: str = "romeo@x/balcony",
        direction: str = "in", body: str | None = None, stamp: int | None = None,
        **fields) -> ArchivedMessage:
    """Message ``i`` of an archive, stamped ``T0 + i`` seconds (or ``stamp`` µs)."""
    stamp = T0 + i * 1_000_000 if stamp is None else stamp
    packet = f"<message id='m{i}'><body>{body or i}</body></message>".encode()
    return ArchivedMessage(stamp << 8 | 1, user, "localhost", remote, remote, direction,
                           packet, search_body=(body or str(i)).lower(), **fields)


def numbers(page: Page) -> list[int]:
    """The ``i`` of each message of the page."""
    return [((m.id >> 8) - T0) // 1_000_000 for m in page.messages]


@pytest.fixture
def archive(database) -> ArchiveStore:
    return ArchiveStore(database)


@pytest.fixture
def filled(archive) -> ArchiveStore:
    """Juliet's archive with messages 0..19 (even ones with romeo, odd ones with nurse)."""
    archive.append([msg(i, remote="romeo@x/balcony" if i % 2 == 0 else "nurse@x/kitchen",
                        direction="in" if i % 3 else "out") for i in range(20)])
    return archive


# -- message ids ---------------------------------------------------------------------------


def test_ids_are_microseconds_and_node_num():
    """An id is (µs << 8) | node_num, as MongooseIM makes them."""
    generator = MessageIdGenerator(7, clock=lambda: 1_234_567_890)
    message_id = generator.next_id()
    assert message_id == (1_234_567 << 8) | 7
    assert decode_id(message_id) == (1_234_567, 7)
    assert generator.next_id(T0) == (T0 << 8) | 7


def test_ids_increase_when_the_clock_does_not():
    """Ids of one generator strictly increase even when the clock stands still or goes
    back."""
    times = iter([5_000, 5_000, 5_000, 1_000, 9_000])
    generator = MessageIdGenerator(0, clock=lambda: next(times) * 1000)
    made = [generator.next_id() for _ in range(5)]
    assert made == sorted(made) and len(set(made)) == 5
    assert [decode_id(i)[0] for i in made] == [5_000, 5_001, 5_002, 5_003, 9_000]


def test_workers_of_a_node_never_collide():
    """Generators of the workers of one node use disjoint stamps, whatever their clocks."""
    made = set()
    for worker in range(3):
        generator = MessageIdGenerator(4, worker=worker, workers=3, clock=lambda: 10**9)
        for _ in range(50):
            stamp, node = decode_id(generator.next_id())
            assert stamp % 3 == worker and node == 4
            made.add(stamp)
    assert len(made) == 150


def test_ids_from_many_threads_are_unique():
    """One generator shared by threads gives each call its own id."""
    generator = MessageIdGenerator(1, clock=lambda: 42_000)
    got = run_threads(*[lambda: [generator.next_id() for _ in range(500)]] * 4)
    assert len({i for batch in got for i in batch}) == 2000


@pytest.mark.parametrize("bad", [{"node_num": 256}, {"node_num": -1},
                                 {"worker": 2, "workers": 2}])
def test_generator_arguments_are_checked(bad):
    """node_num is a byte and the worker one of the workers."""
    with pytest.raises(ValueError):
        MessageIdGenerator(**bad)


def test_external_ids_round_trip():
    """encode_id writes base 32 like MongooseIM; parse_id reads it back and refuses
    anything else."""
    message_id = (T0 << 8) | 3
    assert parse_id(encode_id(message_id)) == message_id
    assert encode_id(0) == "0" and encode_id(32) == "10" and encode_id(31) == "V"
    assert parse_id(encode_id(message_id).lower()) == message_id
    for bad in ["", " 1", "1_0", "-1", "+1", "W", "8" * 14, "1" * 14]:
        with pytest.raises(ValueError):
            parse_id(bad)


def test_id_range_covers_whole_microseconds():
    """A time range maps to the ids of every node within it."""
    low, high = id_range(10, 20)
    assert low == 10 << 8 and high == (20 << 8) | 255
    assert id_range(None, None) == (None, None)


# -- appending and reading -----------------------------------------------------------------


def test_messages_round_trip(archive):
    """Every field of a message comes back as appended, packet bytes exactly."""
    sent = [
        msg(1, body=TRICKY, origin_id="o'1"),
        msg(2, remote="nurse@x", direction="out", is_groupchat=True),
        ArchivedMessage((T0 << 8) | 2, "juliet", "localhost", "r@x/res/with/slashes",
                        "juliet@localhost/phone", "out", bytes(range(256))),
    ]
    archive.append(sent)
    assert archive.lookup("juliet", "localhost").messages == sorted(sent, key=lambda m: m.id)


def test_an_unknown_archive_is_empty(archive):
    """A user without an archive gets an empty, complete page (and it is not created)."""
    assert archive.lookup("nobody", "localhost", count=True) == Page([], True, 0, None)
    assert archive.lookup("nobody", "localhost") == Page([], True)


def test_archives_are_per_user(filled):
    """One user's messages are not in another's archive; archive ids differ."""
    filled.append([msg(100, user="romeo")])
    assert numbers(filled.lookup("romeo", "localhost")) == [100]
    assert len(filled.lookup("juliet", "localhost", limit=100).messages) == 20
    assert filled.archive_id("romeo", "localhost") != filled.archive_id("juliet", "localhost")
    assert filled.archive_id("romeo", "localhost") == filled.archive_id("romeo", "localhost")


def test_a_large_append_is_all_or_nothing(archive):
    """An append larger than one statement is stored whole; one with a duplicate id
    stores nothing."""
    sent = [msg(i) for i in range(ArchiveStore.ROWS_PER_STATEMENT * 2 + 5)]
    archive.append(sent)
    assert len(archive.lookup("juliet", "localhost", limit=1000).messages) == len(sent)
    more = [msg(i) for i in range(1000, 1000 + ArchiveStore.ROWS_PER_STATEMENT + 5)]
    with pytest.raises(StorageError):
        archive.append([*more, sent[0]])
    assert archive.lookup("juliet", "localhost", count=True, limit=0).total == len(sent)


# -- paging --------------------------------------------------------------------------------


def test_forward_paging_with_after(filled):
    """The first page, then pages after the last id seen, until complete."""
    page = filled.lookup("juliet", "localhost", limit=8)
    assert numbers(page) == list(range(8)) and not page.complete
    page = filled.lookup("juliet", "localhost", after=page.messages[-1].id, limit=8)
    assert numbers(page) == list(range(8, 16)) and not page.complete
    page = filled.lookup("juliet", "localhost", after=page.messages[-1].id, limit=8)
    assert numbers(page) == list(range(16, 20)) and page.complete


def test_a_page_ending_exactly_at_the_end_is_complete(filled):
    """A page whose last message is the last one is complete (no empty page needed)."""
    page = filled.lookup("juliet", "localhost", limit=10)
    page = filled.lookup("juliet", "localhost", after=page.messages[-1].id, limit=10)
    assert numbers(page) == list(range(10, 20)) and page.complete


def test_backward_paging_with_last_and_before(filled):
    """The last page, then pages before the first id seen; each page oldest first."""
    page = filled.lookup("juliet", "localhost", last=True, limit=8)
    assert numbers(page) == list(range(12, 20)) and not page.complete
    page = filled.lookup("juliet", "localhost", before=page.messages[0].id, limit=8)
    assert numbers(page) == list(range(4, 12)) and not page.complete
    page = filled.lookup("juliet", "localhost", before=page.messages[0].id, limit=8)
    assert numbers(page) == list(range(4)) and page.complete


def test_after_and_before_together(filled):
    """after and before bound a window, paged from its end."""
    first, last = filled.lookup("juliet", "localhost", limit=20).messages[5::9][:2]
    page = filled.lookup("juliet", "localhost", after=first.id, before=last.id, limit=3)
    assert numbers(page) == [11, 12, 13] and not page.complete


def test_offset_and_counts(filled):
    """offset skips messages; count gives the RSM count and the first message's index."""
    page = filled.lookup("juliet", "localhost", offset=5, limit=3, count=True)
    assert numbers(page) == [5, 6, 7] and (page.total, page.first_index) == (20, 5)
    page = filled.lookup("juliet", "localhost", last=True, offset=2, limit=3, count=True)
    assert numbers(page) == [15, 16, 17] and page.first_index == 15
    page = filled.lookup("juliet", "localhost", offset=25, count=True)
    assert page.messages == [] and page.complete and page.total == 20
    assert page.first_index is None


def test_limit_zero_counts_only(filled):
    """limit 0 returns no messages, the count, and whether any would follow."""
    page = filled.lookup("juliet", "localhost", limit=0, count=True)
    assert page == Page([], False, 20, None)
    last_id = filled.lookup("juliet", "localhost", last=True, limit=1).messages[0].id
    assert filled.lookup("juliet", "localhost", after=last_id, limit=0).complete


def test_paging_past_either_end(filled):
    """after the newest id or before the oldest: an empty, complete page."""
    every = filled.lookup("juliet", "localhost", limit=100).messages
    assert filled.lookup("juliet", "localhost", after=every[-1].id) == Page([], True)
    assert filled.lookup("juliet", "localhost", before=every[0].id) == Page([], True)


# -- filters -------------------------------------------------------------------------------


def test_with_a_bare_jid_matches_every_resource(filled):
    """with a bare JID: messages with any of its resources; with a full JID: that one."""
    filled.append([msg(50, remote="romeo@x/garden")])
    bare = filled.lookup("juliet", "localhost", with_jid="romeo@x", limit=100)
    assert numbers(bare) == [*range(0, 20, 2), 50]
    full = filled.lookup("juliet", "localhost", with_jid="romeo@x/garden", count=True)
    assert numbers(full) == [50] and full.total == 1
    assert filled.lookup("juliet", "localhost", with_jid="paris@x").messages == []


def test_a_bare_remote_jid_is_kept_bare(archive):
    """A message whose other party has no resource is found by its bare JID and read
    back without a resource."""
    archive.append([msg(1, remote="room@muc.x")])
    [found] = archive.lookup("juliet", "localhost", with_jid="room@muc.x").messages
    assert found.remote_jid == "room@muc.x"
    assert archive.lookup("juliet", "localhost", with_jid="room@muc.x/nick").messages == []


def test_time_range_filters(filled):
    """start and end (µs, included) select by time; combined with with and paging."""
    start, end = T0 + 4 * 1_000_000, T0 + 9 * 1_000_000
    page = filled.lookup("juliet", "localhost", start=start, end=end, count=True)
    assert numbers(page) == list(range(4, 10)) and page.total == 6 and page.first_index == 0
    page = filled.lookup("juliet", "localhost", start=start, end=end, with_jid="nurse@x",
                         limit=2, last=True, count=True)
    assert numbers(page) == [7, 9] and page.first_index == 1 and page.total == 3
    assert filled.lookup("juliet", "localhost", start=end + 1, end=start).messages == []


def test_text_filter_takes_like_characters_literally(archive):
    """text matches a substring of search_body; % and _ and ! are literal."""
    archive.append([msg(1, body="100% sure"), msg(2, body="100 percent"),
                    msg(3, body="snake_case"), msg(4, body="snakeXcase"), msg(5, body="wow!")])

    def found(text):
        return numbers(archive.lookup("juliet", "localhost", text=text))

    assert found("100%") == [1]
    assert found("e_c") == [3]
    assert found("w!") == [5]
    assert found("100") == [1, 2]


# -- preferences ---------------------------------------------------------------------------


def test_prefs_round_trip_and_replace(archive):
    """set_prefs replaces the whole preferences; a JID in both lists is never."""
    assert archive.get_prefs("juliet", "localhost") is None
    archive.set_prefs("juliet", "localhost", MamPrefs("roster", ("b@x", TRICKY), ("c@x",)))
    assert archive.get_prefs("juliet", "localhost") == MamPrefs(
        "roster", tuple(sorted(("b@x", TRICKY))), ("c@x",))
    archive.set_prefs("juliet", "localhost", MamPrefs("never", ("a@x", "c@x"), ("c@x",)))
    assert archive.get_prefs("juliet", "localhost") == MamPrefs("never", ("a@x",), ("c@x",))
    with pytest.raises(ValueError):
        MamPrefs("sometimes")


def test_behaviour_for_a_jid(archive):
    """get_behaviour: the full JID's rule, else the bare JID's, else the default; None
    without preferences."""
    assert archive.get_behaviour("juliet", "localhost", "romeo@x") is None
    archive.set_prefs("juliet", "localhost",
                      MamPrefs("roster", ("romeo@x",), ("romeo@x/secret", "nurse@x")))
    assert archive.get_behaviour("juliet", "localhost", "romeo@x/balcony") == "always"
    assert archive.get_behaviour("juliet", "localhost", "romeo@x/secret") == "never"
    assert archive.get_behaviour("juliet", "localhost", "nurse@x/kitchen") == "never"
    assert archive.get_behaviour("juliet", "localhost", "paris@x") == "roster"


def test_remove_user_deletes_messages_and_prefs(filled):
    """remove_user empties the user's archive and preferences, and no one else's; the
    archive can be used again."""
    filled.append([msg(1, user="romeo")])
    filled.set_prefs("juliet", "localhost", MamPrefs("always"))
    filled.remove_user("juliet", "localhost")
    assert filled.lookup("juliet", "localhost", count=True).total == 0
    assert filled.get_prefs("juliet", "localhost") is None
    assert numbers(filled.lookup("romeo", "localhost")) == [1]
    filled.append([msg(2)])
    assert numbers(filled.lookup("juliet", "localhost")) == [2]
    filled.remove_user("nobody", "localhost")


def test_appends_and_lookups_from_threads(archive):
    """Threads appending to one archive (ids from one generator) while others read: every
    message is stored once and reads see ids in order."""
    generator = MessageIdGenerator(1)

    def write(n: int) -> None:
        for _i in range(20):
            archive.append([ArchivedMessage(generator.next_id(), "juliet", "localhost",
                                            f"c{n}@x", f"c{n}@x", "in", b"<message/>")])

    def read() -> None:
        for _ in range(20):
            got = [m.id for m in archive.lookup("juliet", "localhost", limit=1000).messages]
            assert got == sorted(got)

    run_threads(*(lambda n=n: write(n) for n in range(4)), read)
    page = archive.lookup("juliet", "localhost", limit=1000, count=True)
    assert page.total == 80 and len({m.id for m in page.messages}) == 80


# -- the batch writer ----------------------------------------------------------------------


class StubArchive:
    """An archive whose appends the test controls: each call waits for ``release`` if
    set, records its batch, and raises ``error`` for the ids in ``bad`` (all when
    ``bad`` is None)."""

    def __init__(self, error: Exception | None = None, bad: set[int] | None = None) -> None:
        self.error, self.bad = error, bad
        self.batches: list[list[int]] = []
        self.release: threading.Event | None = None
        self.entered = threading.Event()

    def append(self, messages):
        self.entered.set()
        if self.release is not None:
            assert self.release.wait(30)
        ids_ = [m.id for m in messages]
        self.batches.append(ids_)
        if self.error is not None and (self.bad is None or self.bad & set(ids_)):
            raise self.error


@pytest.fixture
def writers():
    made: list[BatchWriter] = []
    yield made
    for writer in made:
        writer.close(10)


def test_a_full_batch_is_written_in_one_append(archive, writers):
    """max_batch messages waiting are written at once, one append (one statement)."""
    writer = BatchWriter(archive, max_batch=10, flush_interval=3600)
    writers.append(writer)
    with recording() as memory:
        futures = [writer.submit(msg(i)) for i in range(10)]
        assert [f.result(10) for f in futures] == [msg(i).id for i in range(10)]
    assert numbers(archive.lookup("juliet", "localhost")) == list(range(10))
    assert len(memory.find("storage_query", {"backend": "mam", "function": "append"})) == 1
    assert writer.statistics().batches == 1 and writer.statistics().stored == 10


def test_a_lone_message_is_written_after_the_interval(archive, writers):
    """One message is written flush_interval after it arrived, without a flush."""
    writer = BatchWriter(archive, max_batch=100, flush_interval=0.02)
    writers.append(writer)
    assert writer.submit(msg(1)).result(10) == msg(1).id
    assert numbers(archive.lookup("juliet", "localhost")) == [1]


def test_flush_writes_without_waiting_for_the_deadline(archive, writers):
    """flush writes what was submitted and returns once each has an outcome."""
    writer = BatchWriter(archive, max_batch=100, flush_interval=3600)
    writers.append(writer)
    futures = [writer.submit(msg(i)) for i in range(5)]
    assert writer.flush(10) is True
    assert all(f.done() for f in futures)
    assert writer.statistics().pending == 0
    assert writer.flush(10) is True  # nothing waiting


def test_messages_beyond_a_batch_wait_for_the_next(writers):
    """Messages arriving while a batch is written go into later batches, at most
    max_batch each, in order."""
    stub = StubArchive()
    stub.release = threading.Event()
    writer = BatchWriter(stub, max_batch=4, flush_interval=3600)  # type: ignore[arg-type]
    writers.append(writer)
    futures = [writer.submit(msg(i)) for i in range(4)]
    assert stub.entered.wait(10)
    futures += [writer.submit(msg(i)) for i in range(4, 11)]
    stub.release.set()
    assert writer.flush(10)
    assert [f.result(0) for f in futures] == [msg(i).id for i in range(11)]
    assert [len(batch) for batch in stub.batches] == [4, 4, 3]
    assert [i for batch in stub.batches for i in batch] == [msg(i).id for i in range(11)]


def test_an_unreachable_database_fails_every_message_of_the_batch(writers):
    """When the database is unreachable, each future of the batch gets the error (the
    senders can be told), and the writer goes on with later messages."""
    stub = StubArchive(StorageUnavailable("connection refused"))
    writer = BatchWriter(stub, max_batch=3, flush_interval=3600)  # type: ignore[arg-type]
    writers.append(writer)
    futures = [writer.submit(msg(i)) for i in range(3)]
    for future in futures:
        with pytest.raises(StorageUnavailable, match="connection refused"):
            future.result(10)
    assert stub.batches == [[msg(i).id for i in range(3)]]  # not retried one by one
    stub.error = None
    later = writer.submit(msg(9))
    assert writer.flush(10)
    assert later.result(0) == msg(9).id
    assert writer.statistics().failed == 3


def test_a_bad_message_fails_alone(writers):
    """A batch that fails for another reason is retried message by message: only the
    bad one fails."""
    bad = msg(2).id
    stub = StubArchive(StorageError("duplicate key"), bad={bad})
    writer = BatchWriter(stub, max_batch=4, flush_interval=3600)  # type: ignore[arg-type]
    writers.append(writer)
    futures = [writer.submit(msg(i)) for i in range(4)]
    results = []
    for future in futures:
        try:
            results.append(future.result(10))
        except StorageError as error:
            results.append(str(error))
    assert results == [msg(0).id, msg(1).id, "duplicate key", msg(3).id]
    stats = writer.statistics()
    assert (stats.stored, stats.failed) == (3, 1)


def test_a_duplicate_id_fails_alone_on_the_database(archive, writers):
    """The same through a real database: a message whose id is taken fails alone."""
    archive.append([msg(1)])
    writer = BatchWriter(archive, max_batch=3, flush_interval=3600)
    writers.append(writer)
    futures = [writer.submit(m) for m in (msg(0), msg(1), msg(2))]
    assert futures[0].result(10) == msg(0).id and futures[2].result(10) == msg(2).id
    with pytest.raises(StorageError):
        futures[1].result(10)
    assert numbers(archive.lookup("juliet", "localhost")) == [0, 1, 2]


def test_a_closed_database_fails_the_messages(database, writers):
    """Messages submitted after the database went away get StorageUnavailable."""
    archive = ArchiveStore(database)
    archive.archive_id("juliet", "localhost")
    database.close()
    writer = BatchWriter(archive, max_batch=1, flush_interval=3600)
    writers.append(writer)
    with pytest.raises(StorageUnavailable):
        writer.submit(msg(1)).result(10)


def test_callbacks_hear_of_failures(writers):
    """A callback added to the future runs with the failed future."""
    stub = StubArchive(StorageUnavailable("down"))
    writer = BatchWriter(stub, max_batch=1, flush_interval=3600)  # type: ignore[arg-type]
    writers.append(writer)
    heard: list[BaseException | None] = []
    done = threading.Event()

    def callback(future: Future) -> None:
        heard.append(future.exception())
        done.set()

    writer.submit(msg(1)).add_done_callback(callback)
    assert done.wait(10)
    assert isinstance(heard[0], StorageUnavailable)


def test_a_full_queue_refuses_at_once(writers):
    """Beyond max_pending waiting messages, submit fails at once with StorageUnavailable."""
    stub = StubArchive()
    stub.release = threading.Event()
    writer = BatchWriter(stub, max_batch=2, flush_interval=3600,  # type: ignore[arg-type]
                         max_pending=4)
    writers.append(writer)
    first = [writer.submit(msg(i)) for i in range(2)]
    assert stub.entered.wait(10)
    waiting = [writer.submit(msg(i)) for i in range(2, 6)]
    refused = writer.submit(msg(6))
    with pytest.raises(StorageUnavailable, match="waiting"):
        refused.result(0)
    stub.release.set()
    assert writer.flush(10)
    assert all(f.result(0) for f in first + waiting)


def test_close_writes_what_waits_then_refuses(archive):
    """close writes the waiting messages; later submissions fail."""
    writer = BatchWriter(archive, max_batch=100, flush_interval=3600)
    futures = [writer.submit(msg(i)) for i in range(3)]
    writer.close(10)
    assert [f.result(0) for f in futures] == [msg(i).id for i in range(3)]
    with pytest.raises(StorageUnavailable, match="closed"):
        writer.submit(msg(4)).result(0)


def test_many_threads_submitting(archive, writers):
    """Sessions on several threads submitting at once: every message stored once."""
    writer = BatchWriter(archive, max_batch=16, flush_interval=0.005)
    writers.append(writer)
    generator = MessageIdGenerator(2)

    def submit(n: int) -> list[int]:
        futures = [writer.submit(ArchivedMessage(
            generator.next_id(), "juliet", "localhost", f"c{n}@x", f"c{n}@x", "out",
            b"<message/>")) for _ in range(50)]
        return [f.result(30) for f in futures]

    stored = [i for batch in run_threads(*(lambda n=n: submit(n) for n in range(4)))
              for i in batch]
    page = archive.lookup("juliet", "localhost", limit=1000, count=True)
    assert page.total == 200 and sorted(stored) == [m.id for m in page.messages]
    assert writer.statistics().batches < 200  # batched


def test_writer_arguments_are_checked(archive):
    """max_batch is at least 1 and at most max_pending."""
    with pytest.raises(ValueError):
        BatchWriter(archive, max_batch=0)
    with pytest.raises(ValueError):
        BatchWriter(archive, max_batch=10, max_pending=5)
