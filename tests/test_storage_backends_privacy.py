"""The privacy interface (mongoose/storage/backends/privacy.py) on every driver of the
``database`` fixture: XEP-0016 lists and default list, XEP-0191 blocking in the same
tables, threads, remove_user."""

from __future__ import annotations

import pytest
from backend_helpers import run_threads

from mongoose.storage.backends.privacy import (
    BLOCKING_LIST,
    ListIsDefault,
    PrivacyItem,
    PrivacyStore,
)

pytestmark = pytest.mark.timeout(60)

TRICKY = "O'Brien \"q\" %_ ; -- ünïcødé 日本 🦆"
ITEMS = [
    PrivacyItem(3, "allow"),
    PrivacyItem(1, "deny", "jid", "tybalt@capulet.lit", match_message=True),
    PrivacyItem(2, "allow", "group", TRICKY, match_iq=True, match_presence_in=True),
    PrivacyItem(10, "deny", "subscription", "none", match_presence_out=True),
]


def test_lists_round_trip_in_order(database):
    """A list's items come back in order with every field; lists are per user."""
    privacy = PrivacyStore(database)
    assert privacy.get_list("juliet", "localhost", "public") is None
    privacy.replace_list("juliet", "localhost", "public", ITEMS)
    assert privacy.get_list("juliet", "localhost", "public") == sorted(
        ITEMS, key=lambda item: item.order)
    assert privacy.get_list("romeo", "localhost", "public") is None
    assert ITEMS[0].match_all and not ITEMS[1].match_all


def test_replace_list_replaces_every_item(database):
    """replace_list of an existing list keeps only the new items; an empty list is a
    list with no items."""
    privacy = PrivacyStore(database)
    privacy.replace_list("juliet", "localhost", "public", ITEMS)
    privacy.replace_list("juliet", "localhost", "public", [PrivacyItem(5, "deny")])
    assert privacy.get_list("juliet", "localhost", "public") == [PrivacyItem(5, "deny")]
    privacy.replace_list("juliet", "localhost", "public", [])
    assert privacy.get_list("juliet", "localhost", "public") == []


def test_default_list(database):
    """set_default_list needs an existing list; get_list_names and get_default_list
    report it; forget_default_list clears it."""
    privacy = PrivacyStore(database)
    assert privacy.get_list_names("juliet", "localhost") == (None, [])
    assert privacy.set_default_list("juliet", "localhost", "public") is False
    for name in ("public", TRICKY, "B-list"):
        privacy.replace_list("juliet", "localhost", name, ITEMS[:1])
    assert privacy.set_default_list("juliet", "localhost", TRICKY) is True
    assert privacy.get_list_names("juliet", "localhost") == (
        TRICKY, sorted(["public", TRICKY, "B-list"]))
    assert privacy.get_default_list("juliet", "localhost") == (TRICKY, ITEMS[:1])
    privacy.forget_default_list("juliet", "localhost")
    assert privacy.get_default_list("juliet", "localhost") is None
    assert privacy.get_list_names("juliet", "localhost")[0] is None


def test_the_default_list_cannot_be_removed(database):
    """remove_list refuses the default list (conflict) and removes others."""
    privacy = PrivacyStore(database)
    privacy.replace_list("juliet", "localhost", "public", ITEMS)
    privacy.replace_list("juliet", "localhost", "private", ITEMS)
    privacy.set_default_list("juliet", "localhost", "public")
    with pytest.raises(ListIsDefault):
        privacy.remove_list("juliet", "localhost", "public")
    assert privacy.remove_list("juliet", "localhost", "private") is True
    assert privacy.remove_list("juliet", "localhost", "private") is False
    assert privacy.get_list_names("juliet", "localhost") == ("public", ["public"])


@pytest.mark.parametrize("field,value", [("action", "maybe"), ("type", "resource")])
def test_items_refuse_unknown_actions_and_types(field, value):
    """Only XEP-0016's actions (and block) and types are accepted."""
    with pytest.raises(ValueError):
        PrivacyItem(**{"order": 1, "action": "allow", field: value})


def test_blocking_is_the_blocking_list_and_becomes_default(database):
    """block adds JIDs to the list "blocking" (block, all stanzas) and makes it the
    default; repeated JIDs are blocked once, in the order first blocked."""
    privacy = PrivacyStore(database)
    assert privacy.get_blocklist("juliet", "localhost") == []
    assert privacy.block("juliet", "localhost", ["a@x", "b@x", "a@x"]) == ["a@x", "b@x"]
    assert privacy.block("juliet", "localhost", ["c@x", "a@x"]) == ["a@x", "b@x", "c@x"]
    assert privacy.get_blocklist("juliet", "localhost") == ["a@x", "b@x", "c@x"]
    name, items = privacy.get_default_list("juliet", "localhost")
    assert name == BLOCKING_LIST
    assert [(i.action, i.type, i.match_all) for i in items] == [("block", "jid", True)] * 3
    assert privacy.get_list("juliet", "localhost", BLOCKING_LIST) == items


def test_unblock_some_and_all(database):
    """unblock removes the given JIDs and returns those that were blocked; with no JIDs
    it removes all."""
    privacy = PrivacyStore(database)
    privacy.block("juliet", "localhost", ["a@x", "b@x", "c@x"])
    assert privacy.unblock("juliet", "localhost", ["b@x", "nobody@x"]) == ["b@x"]
    assert privacy.get_blocklist("juliet", "localhost") == ["a@x", "c@x"]
    assert privacy.unblock("juliet", "localhost") == ["a@x", "c@x"]
    assert privacy.get_blocklist("juliet", "localhost") == []


def test_concurrent_blocks_lose_nothing(database):
    """Threads blocking different JIDs at once: every JID ends up blocked (each
    read-modify-write of the list is serialised)."""
    privacy = PrivacyStore(database)

    def block(n: int) -> None:
        for i in range(10):
            privacy.block("juliet", "localhost", [f"t{n}-{i}@x"])

    run_threads(*(lambda n=n: block(n) for n in range(4)))
    assert sorted(privacy.get_blocklist("juliet", "localhost")) == sorted(
        f"t{n}-{i}@x" for n in range(4) for i in range(10))


def test_concurrent_replacements_each_apply_whole(database):
    """Threads replacing one list at once: the list ends up as one of them, whole."""
    privacy = PrivacyStore(database)
    versions = [[PrivacyItem(order, "deny", "jid", f"v{n}@x") for order in range(1, 6)]
                for n in range(4)]

    def replace(n: int) -> None:
        for _ in range(5):
            privacy.replace_list("juliet", "localhost", "shared", versions[n])

    run_threads(*(lambda n=n: replace(n) for n in range(4)))
    assert privacy.get_list("juliet", "localhost", "shared") in versions


def test_remove_user_forgets_lists_default_and_blocks(database):
    """remove_user deletes every list, item and default of that user only."""
    privacy = PrivacyStore(database)
    for user in ("juliet", "romeo"):
        privacy.replace_list(user, "localhost", "public", ITEMS)
        privacy.block(user, "localhost", ["a@x"])
    privacy.remove_user("juliet", "localhost")
    assert privacy.get_list_names("juliet", "localhost") == (None, [])
    assert privacy.get_blocklist("juliet", "localhost") == []
    assert privacy.get_list_names("romeo", "localhost") == (
        BLOCKING_LIST, [BLOCKING_LIST, "public"])
    remaining = database.query("SELECT COUNT(*) FROM privacy_list_data")[0][0]
    assert remaining == len(ITEMS) + 1
