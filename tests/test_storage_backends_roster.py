"""The roster interface (mongoose/storage/backends/roster.py) on every driver of the
``database`` fixture: items, groups, versions, limits, threads, remove_user."""

from __future__ import annotations

import pytest
from backend_helpers import run_threads

from mongoose.storage.backends.roster import Roster, RosterItem, RosterStore

pytestmark = pytest.mark.timeout(60)

TRICKY = "O'Brien \"quoted\" %_! ; -- ünïcødé 日本 🦆"


def test_an_empty_roster_has_no_version(database):
    """A user who never had a roster gets no items and no version."""
    roster = RosterStore(database)
    assert roster.get_roster("juliet", "localhost") == Roster(None, [])
    assert roster.get_item("juliet", "localhost", "romeo@localhost") is None
    assert roster.get_version("juliet", "localhost") is None
    assert roster.count_items("juliet", "localhost") == 0


def test_upsert_adds_and_replaces_items_with_their_groups(database):
    """upsert_item stores every field, and a second upsert replaces them all, groups
    included (sorted, without repeats)."""
    roster = RosterStore(database)
    first = RosterItem("romeo@localhost", "Romeo", "to", "in", ("Montague", "Friends"), "hi")
    roster.upsert_item("juliet", "localhost", first)
    assert roster.get_item("juliet", "localhost", "romeo@localhost") == RosterItem(
        "romeo@localhost", "Romeo", "to", "in", ("Friends", "Montague"), "hi")
    second = RosterItem("romeo@localhost", TRICKY, "both", "none",
                        (TRICKY, "Verona", "Verona"))
    roster.upsert_item("juliet", "localhost", second)
    assert roster.get_item("juliet", "localhost", "romeo@localhost") == RosterItem(
        "romeo@localhost", TRICKY, "both", "none", tuple(sorted({TRICKY, "Verona"})))
    roster.upsert_item("juliet", "localhost", RosterItem("romeo@localhost"))
    assert roster.get_item("juliet", "localhost", "romeo@localhost").groups == ()
    assert roster.count_items("juliet", "localhost") == 1


def test_get_roster_is_sorted_by_jid_with_its_version(database):
    """get_roster returns every item sorted by JID (code points), with the version the
    last change returned."""
    roster = RosterStore(database)
    jids = ["zed@x", "Alice@x", "émile@x", "bob@x", "日本@x"]
    for jid in jids:
        version = roster.upsert_item("juliet", "localhost", RosterItem(jid, groups=("g",)))
    got = roster.get_roster("juliet", "localhost")
    assert [item.jid for item in got.items] == sorted(jids)
    assert all(item.groups == ("g",) for item in got.items)
    assert got.version == version == roster.get_version("juliet", "localhost")


def test_every_change_makes_a_new_later_version(database):
    """upsert and delete each return a new version, later in sort order; deleting an
    item not on the roster changes nothing."""
    ticks = iter(range(1_000_000, 2_000_000, 1_000))
    roster = RosterStore(database, clock=lambda: next(ticks))
    versions = [roster.upsert_item("juliet", "localhost", RosterItem(f"c{i}@x"))
                for i in range(5)]
    versions.append(roster.delete_item("juliet", "localhost", "c0@x"))
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert roster.delete_item("juliet", "localhost", "c0@x") is None
    assert roster.get_version("juliet", "localhost") == versions[-1]


def test_versions_stay_increasing_when_the_clock_does_not_move(database):
    """Changes within one clock tick still get increasing versions."""
    roster = RosterStore(database, clock=lambda: 5_000_000)
    versions = [roster.upsert_item("juliet", "localhost", RosterItem("a@x")) for _ in range(3)]
    assert versions == sorted(versions) and len(set(versions)) == 3


def test_delete_item_removes_its_groups(database):
    """A deleted item is gone with its groups; re-adding it starts without them."""
    roster = RosterStore(database)
    roster.upsert_item("juliet", "localhost", RosterItem("romeo@x", groups=("a", "b")))
    assert roster.delete_item("juliet", "localhost", "romeo@x") is not None
    assert roster.get_roster("juliet", "localhost").items == []
    assert database.query("SELECT COUNT(*) FROM rostergroups")[0][0] == 0


def test_rosters_are_per_user_and_host(database):
    """Items of one user are not seen in another's roster, nor on another host."""
    roster = RosterStore(database)
    roster.upsert_item("juliet", "localhost", RosterItem("romeo@x"))
    assert roster.get_roster("juliet", "example.com").items == []
    assert roster.get_roster("romeo", "localhost").items == []


@pytest.mark.parametrize("field,value", [("subscription", "pending"), ("ask", "maybe"),
                                         ("jid", "")])
def test_items_refuse_unknown_states(field, value):
    """Subscription and ask states outside RFC 6121's, and empty JIDs, are refused."""
    with pytest.raises(ValueError):
        RosterItem(**{"jid": "a@x", field: value})


def test_every_subscription_and_ask_state_round_trips(database):
    """Each subscription and pending state is stored and read back as given."""
    roster = RosterStore(database)
    items = [RosterItem(f"{sub}-{ask}@x", subscription=sub, ask=ask)
             for sub in ("none", "to", "from", "both")
             for ask in ("none", "out", "in", "both", "subscribe", "unsubscribe")]
    for item in items:
        roster.upsert_item("juliet", "localhost", item)
    assert roster.get_roster("juliet", "localhost").items == sorted(items, key=lambda i: i.jid)


def test_threads_changing_one_roster(database):
    """Threads adding and removing items of one roster at once lose none of it."""
    roster = RosterStore(database)

    def work(n: int) -> None:
        for i in range(10):
            roster.upsert_item("juliet", "localhost", RosterItem(f"c{n}-{i}@x", groups=("g",)))
        roster.delete_item("juliet", "localhost", f"c{n}-0@x")

    run_threads(*(lambda n=n: work(n) for n in range(4)))
    got = roster.get_roster("juliet", "localhost")
    assert len(got.items) == roster.count_items("juliet", "localhost") == 36
    assert all(item.groups == ("g",) for item in got.items)


def test_remove_user_forgets_the_roster_and_its_version(database):
    """remove_user deletes items, groups and version of that user only."""
    roster = RosterStore(database)
    for user in ("juliet", "romeo"):
        roster.upsert_item(user, "localhost", RosterItem("nurse@x", groups=("g",)))
    roster.remove_user("juliet", "localhost")
    assert roster.get_roster("juliet", "localhost") == Roster(None, [])
    assert len(roster.get_roster("romeo", "localhost").items) == 1
    assert roster.get_version("romeo", "localhost") is not None


# -- read-modify-write, pre-approval, changes since a version (schema version 2) ----------


def test_approved_round_trips(database):
    """The pre-approval flag (RFC 6121 §3.4) is stored and read back."""
    roster = RosterStore(database)
    roster.upsert_item("juliet", "localhost", RosterItem("romeo@x", approved=True))
    assert roster.get_item("juliet", "localhost", "romeo@x").approved is True
    assert roster.get_roster("juliet", "localhost").items[0].approved is True


def test_update_item_applies_a_change_to_the_current_item(database):
    """update_item hands the change the item as stored (None when absent) and writes what
    it returns, with a new version; None or the same item changes nothing."""
    roster = RosterStore(database)
    seen = []

    def subscribe(old):
        seen.append(old)
        return RosterItem("romeo@x", ask="out") if old is None else None

    change = roster.update_item("juliet", "localhost", "romeo@x", subscribe)
    assert seen == [None] and change.old is None
    assert change.new == RosterItem("romeo@x", ask="out")
    assert change.version == roster.get_version("juliet", "localhost")
    again = roster.update_item("juliet", "localhost", "romeo@x", subscribe)
    assert (again.old, again.new, again.version) == (change.new, change.new, None)
    same = roster.update_item("juliet", "localhost", "romeo@x", lambda old: old)
    assert same.version is None
    assert roster.get_version("juliet", "localhost") == change.version


def test_update_item_removes_and_enforces_the_size_limit(database):
    """A change returning REMOVE deletes the item (nothing to do if absent); a new item
    beyond max_items raises RosterFull and writes nothing, while changing an existing
    item at the limit is allowed."""
    from mongoose.storage.backends.roster import REMOVE, RosterFull

    roster = RosterStore(database)
    for jid in ("a@x", "b@x"):
        roster.upsert_item("juliet", "localhost", RosterItem(jid))
    with pytest.raises(RosterFull):
        roster.update_item("juliet", "localhost", "c@x", lambda old: RosterItem("c@x"),
                           max_items=2)
    assert roster.count_items("juliet", "localhost") == 2
    renamed = roster.update_item("juliet", "localhost", "a@x",
                                 lambda old: RosterItem("a@x", "A"), max_items=2)
    assert renamed.new.name == "A"
    removed = roster.update_item("juliet", "localhost", "a@x", lambda old: REMOVE)
    assert removed.new is None and removed.version is not None
    assert roster.get_item("juliet", "localhost", "a@x") is None
    absent = roster.update_item("juliet", "localhost", "zz@x", lambda old: REMOVE)
    assert absent.version is None


def test_get_changes_lists_what_changed_after_a_version(database):
    """Changes after version V: the items changed since, in version order, removed ones
    as None; at the current version, none; unknown or future versions: None."""
    roster = RosterStore(database)
    v1 = roster.upsert_item("juliet", "localhost", RosterItem("a@x"))
    roster.upsert_item("juliet", "localhost", RosterItem("b@x"))
    roster.upsert_item("juliet", "localhost", RosterItem("c@x"))
    v4 = roster.upsert_item("juliet", "localhost", RosterItem("a@x", "A"))
    v5 = roster.delete_item("juliet", "localhost", "b@x")
    changes = roster.get_changes("juliet", "localhost", v1)
    assert changes.version == v5
    assert [(jid, item) for _, jid, item in changes.items] == [
        ("c@x", RosterItem("c@x")), ("a@x", RosterItem("a@x", "A")), ("b@x", None)]
    assert [version for version, _, _ in changes.items][-2:] == [v4, v5]
    assert roster.get_changes("juliet", "localhost", v5).items == []
    assert roster.get_changes("juliet", "localhost", "not-a-version") is None
    assert roster.get_changes("juliet", "localhost", "f" * 20) is None
    assert roster.get_changes("romeo", "localhost", v1) is None


def test_get_changes_refuses_versions_older_than_pruned_removals(database):
    """Removed contacts beyond KEEP_REMOVED are forgotten oldest first; a version older
    than the last one forgotten can no longer be diffed, a later one still can."""
    from mongoose.storage.backends import roster as roster_mod

    roster = RosterStore(database)
    start = roster.upsert_item("juliet", "localhost", RosterItem("keep@x"))
    removals = []
    for i in range(roster_mod.KEEP_REMOVED + 2):
        roster.upsert_item("juliet", "localhost", RosterItem(f"c{i}@x"))
        removals.append(roster.delete_item("juliet", "localhost", f"c{i}@x"))
    assert roster.get_changes("juliet", "localhost", start) is None
    later = roster.get_changes("juliet", "localhost", removals[1])
    assert later is not None
    assert [jid for _, jid, _ in later.items] == [
        f"c{i}@x" for i in range(2, roster_mod.KEEP_REMOVED + 2)]


def test_items_written_before_versions_existed_force_a_full_roster(database):
    """An item with no version row (stored before schema version 2) makes every diff
    impossible: the client must get the whole roster."""
    roster = RosterStore(database)
    v1 = roster.upsert_item("juliet", "localhost", RosterItem("a@x"))
    roster.upsert_item("juliet", "localhost", RosterItem("b@x"))
    database.execute("DELETE FROM roster_item_version WHERE jid = ?", ("a@x",))
    assert roster.get_changes("juliet", "localhost", v1) is None


def test_a_new_version_sorts_after_the_rosters_even_with_a_clock_behind(database):
    """A writer whose clock is behind the roster's version (another node's) still makes
    a later version."""
    ahead = RosterStore(database, clock=lambda: 9_000_000_000_000_000_000)
    behind = RosterStore(database, clock=lambda: 1_000_000)
    first = ahead.upsert_item("juliet", "localhost", RosterItem("a@x"))
    second = behind.upsert_item("juliet", "localhost", RosterItem("b@x"))
    third = behind.update_item("juliet", "localhost", "a@x",
                               lambda old: RosterItem("a@x", "A")).version
    assert first < second < third


def test_threads_updating_one_item_lose_no_change(database):
    """Threads incrementing a counter kept in one item's name through update_item lose
    no increment: each read-modify-write is atomic."""
    roster = RosterStore(database)
    roster.upsert_item("juliet", "localhost", RosterItem("n@x", "0"))

    def bump(old):
        return RosterItem("n@x", str(int(old.name) + 1))

    def work() -> None:
        for _ in range(10):
            roster.update_item("juliet", "localhost", "n@x", bump)

    run_threads(*(work for _ in range(4)))
    assert roster.get_item("juliet", "localhost", "n@x").name == "40"
