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
