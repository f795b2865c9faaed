"""The iq modules end to end: mod_last (XEP-0012), mod_private (XEP-0049), mod_vcard
(XEP-0054, XEP-0055 search), mod_sic (XEP-0279) and mod_register (XEP-0077), on a real
node with two workers, with real slixmpp clients and, where the exact bytes before login
matter, raw sockets.

One node serves the module with every one of these modules on (and mod_roster, whose
subscriptions decide who may ask for a user's last activity); each test has its own
users. The tests read and write the node's SQLite file directly where they need to know
what is stored (the roster item that authorises a contact, the data an account removal
must delete).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator
from typing import Any
from xml.etree import ElementTree as ET

import pytest
import slixmpp
import slixmpp.plugins.xep_0004
import slixmpp.plugins.xep_0012
import slixmpp.plugins.xep_0054
import slixmpp.plugins.xep_0066
import slixmpp.plugins.xep_0077
import slixmpp.plugins.xep_0279
from dist_harness import MongooseNode, TestNode, free_port
from helpers import wait_until
from xmpp_client import Client, ClientLoop
from xmpp_harness import DOMAIN, PASSWORD, RawClient, metrics_toml, xmpp_node

from mongoose.storage.backends.offline import OfflineStore
from mongoose.storage.backends.private import PrivateStore
from mongoose.storage.backends.roster import RosterItem, RosterStore
from mongoose.storage.backends.vcard import VcardStore
from mongoose.storage.sqlite import SqliteDatabase

pytestmark = pytest.mark.timeout(90)

USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan",
         "judy", "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent",
         "victor", "walter")
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
REGISTER = "jabber:iq:register"
STRONG = "a much longer Passw0rd!"  # above password_strength = 32 bits


METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, test_node: TestNode) -> Iterator[MongooseNode]:
    n = xmpp_node(tmp_path_factory.mktemp("iqmods"), "iqmods@localhost", test_node.keys_file,
                  users=USERS, extra_toml=(
                      "[modules.mod_roster]\n[modules.mod_offline]\n[modules.mod_last]\n"
                      "[modules.mod_private]\n[modules.mod_sic]\n"
                      "[modules.mod_vcard]\nsearch = true\nmax_vcard_size = 4096\n"
                      "[modules.mod_register]\npassword_strength = 32\n"
                      'ip_access = [{address = "127.0.0.3", policy = "deny"}, '
                      '{address = "127.0.0.0/8", policy = "allow"}]\n'
                      + metrics_toml(METRICS_PORT)))
    yield n
    n.kill()


@pytest.fixture(scope="module")
def db(node: MongooseNode) -> Iterator[SqliteDatabase]:
    """The node's SQLite file, opened by the test."""
    database = SqliteDatabase(node.dir / "data" / "mongoose.db")
    yield database
    database.close()


def login(node: MongooseNode, loop: ClientLoop, clients: list[Client], jid: str, *,
          password: str = PASSWORD, presence: bool = True,
          plugins: tuple[str, ...] = ()) -> Client:
    client = Client(loop, jid, password, port=node.c2s_port)  # type: ignore[attr-defined]
    for plugin in plugins:
        loop.run(_register_plugin(client.xmpp, plugin))
    clients.append(client)
    return client.connect(presence=presence)


async def _register_plugin(xmpp: slixmpp.ClientXMPP, name: str) -> None:
    xmpp.register_plugin(name)


def ask(client: Client, payload: str, *, to: str | None = None, kind: str = "get") -> Any:
    """Send an iq of ``kind`` with ``payload`` (XML text); the answer's XML element."""
    def build(xmpp: slixmpp.ClientXMPP) -> Any:
        iq = xmpp.Iq(stype=kind, sto=to)
        iq.append(ET.fromstring(payload))
        return iq
    return client.iq(build).xml


def call(client: Client, fn: Callable[[slixmpp.ClientXMPP], Any]) -> Any:
    """Run a plugin call (a coroutine or future) on the client's loop; the answer's XML
    element, result or error."""
    async def go() -> Any:
        try:
            return await fn(client.xmpp)
        except slixmpp.exceptions.IqError as error:
            return error.iq
    return client.loop.run(go()).xml


def condition(reply: Any) -> str | None:
    """The stanza error condition of an iq answer, None for a result."""
    if reply.get("type") != "error":
        return None
    error = reply.find("{jabber:client}error")
    return next(c.tag.split("}")[1] for c in error
                if c.tag.startswith(f"{{{STANZAS}}}") and not c.tag.endswith("}text"))


# -- mod_last ------------------------------------------------------------------------------


def test_last_activity_of_the_server_is_its_uptime(node, loop, clients):
    """jabber:iq:last to the server answers how many seconds it has been up."""
    client = login(node, loop, clients, f"alice@{DOMAIN}/l")
    reply = ask(client, "<query xmlns='jabber:iq:last'/>", to=DOMAIN)
    assert condition(reply) is None
    seconds = int(reply.find("{jabber:iq:last}query").get("seconds"))
    assert 0 <= seconds < 3600


def test_last_activity_of_a_user_who_logged_out(node, loop, clients):
    """After the user's last session ends, asking its bare JID tells how long ago; while
    a resource is available the answer is 0 (XEP-0012 §3)."""
    first = login(node, loop, clients, f"bob@{DOMAIN}/first")
    wait_until(lambda: first.presences, what="its own presence")
    first.disconnect()
    asker = login(node, loop, clients, f"bob@{DOMAIN}/asker", presence=False,
                  plugins=("xep_0012",))
    reply = call(asker, lambda x: x.plugin["xep_0012"].get_last_activity(f"bob@{DOMAIN}"))
    assert condition(reply) is None, ET.tostring(reply)
    assert 0 <= int(reply.find("{jabber:iq:last}query").get("seconds")) < 60
    login(node, loop, clients, f"bob@{DOMAIN}/online")

    def seconds() -> str:
        reply = call(asker, lambda x: x.plugin["xep_0012"].get_last_activity(f"bob@{DOMAIN}"))
        return reply.find("{jabber:iq:last}query").get("seconds")

    # The asker's worker learns of the new session from its replica of the session
    # table, a moment after the session's own worker.
    wait_until(lambda: seconds() == "0", what="seconds='0' while a resource is available")


def test_last_activity_needs_a_presence_subscription(node, db, loop, clients):
    """Another user gets forbidden, until the user's roster gives it a subscription to
    the user's presence ("from"), with the status text of the user's last unavailable
    presence; a user that does not exist: service-unavailable."""
    carol = login(node, loop, clients, f"carol@{DOMAIN}/c")
    # slixmpp sends the initial presence through its filters, a raw write may overtake
    # it: wait for its echo first.
    wait_until(lambda: carol.presences, what="carol's own presence")
    carol.send_raw("<presence type='unavailable'><status>gone fishing</status></presence>")
    carol.disconnect()
    dave = login(node, loop, clients, f"dave@{DOMAIN}/d")
    last = "<query xmlns='jabber:iq:last'/>"
    assert condition(ask(dave, last, to=f"carol@{DOMAIN}")) == "forbidden"
    RosterStore(db).upsert_item("carol", DOMAIN, RosterItem(f"dave@{DOMAIN}",
                                                            subscription="from"))
    reply = ask(dave, last, to=f"carol@{DOMAIN}")
    assert condition(reply) is None, ET.tostring(reply)
    assert int(reply.find("{jabber:iq:last}query").get("seconds")) >= 0

    def status() -> str | None:
        # dave's worker may still list carol's session for a moment (its replica of
        # the session table), and answer 0 seconds, no status, meanwhile.
        return ask(dave, last, to=f"carol@{DOMAIN}").find("{jabber:iq:last}query").text

    wait_until(lambda: status() == "gone fishing", what="the status of carol's logout")
    assert condition(ask(dave, last, to=f"nobody@{DOMAIN}")) == "service-unavailable"


# -- mod_private ---------------------------------------------------------------------------


def test_private_xml_is_stored_and_read_back(node, loop, clients):
    """A set stores elements under their namespace (several of one namespace together);
    a get returns them, and an empty element for a namespace with nothing stored."""
    erin = login(node, loop, clients, f"erin@{DOMAIN}/p")
    stored = ("<query xmlns='jabber:iq:private'>"
              "<prefs xmlns='example:prefs'><nick>Erin</nick></prefs>"
              "<prefs xmlns='example:prefs'><colour>blue</colour></prefs>"
              "<storage xmlns='storage:bookmarks'><url name='x' url='http://x'/></storage>"
              "</query>")
    assert condition(ask(erin, stored, kind="set")) is None
    again = login(node, loop, clients, f"erin@{DOMAIN}/other")
    reply = ask(again, "<query xmlns='jabber:iq:private'><prefs xmlns='example:prefs'/>"
                "<nothing xmlns='example:none'/></query>")
    query = reply.find("{jabber:iq:private}query")
    assert [child.tag for child in query] == [
        "{example:prefs}prefs", "{example:prefs}prefs", "{example:none}nothing"]
    assert query[0].findtext("{example:prefs}nick") == "Erin"
    assert query[1].findtext("{example:prefs}colour") == "blue"
    assert len(query[2]) == 0
    reply = ask(again, "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/>"
                "</query>")
    assert reply.find(".//{storage:bookmarks}url").get("name") == "x"


def test_private_xml_refuses_others_and_reserved_namespaces(node, loop, clients):
    """Another user's private XML is forbidden; reserved namespaces (jabber:*,
    vcard-temp) and an empty query are not-acceptable."""
    frank = login(node, loop, clients, f"frank@{DOMAIN}/p")
    some = "<query xmlns='jabber:iq:private'><a xmlns='example:a'/></query>"
    assert condition(ask(frank, some, to=f"erin@{DOMAIN}")) == "forbidden"
    assert condition(ask(frank, some, to=f"erin@{DOMAIN}", kind="set")) == "forbidden"
    for payload in ("<query xmlns='jabber:iq:private'><x xmlns='jabber:iq:roster'/></query>",
                    "<query xmlns='jabber:iq:private'><vCard xmlns='vcard-temp'/></query>",
                    "<query xmlns='jabber:iq:private'/>"):
        assert condition(ask(frank, payload, kind="set")) == "not-acceptable", payload
        assert condition(ask(frank, payload)) == "not-acceptable", payload


# -- mod_vcard -----------------------------------------------------------------------------

VCARD = ("<vCard xmlns='vcard-temp'><FN>Grace Hopper</FN><N><FAMILY>Hopper</FAMILY>"
         "<GIVEN>Grace</GIVEN></N><NICKNAME>amazing</NICKNAME>"
         "<EMAIL><USERID>grace@example.com</USERID></EMAIL></vCard>")


def test_a_user_sets_its_vcard_and_anyone_gets_it(node, loop, clients):
    """The owner sets its vCard; the owner (no 'to') and another user (the bare JID)
    get it back whole."""
    grace = login(node, loop, clients, f"grace@{DOMAIN}/v", plugins=("xep_0054",))
    assert condition(ask(grace, VCARD, kind="set")) is None
    own = ask(grace, "<vCard xmlns='vcard-temp'/>").find("{vcard-temp}vCard")
    assert own.findtext("{vcard-temp}FN") == "Grace Hopper"
    heidi = login(node, loop, clients, f"heidi@{DOMAIN}/v", plugins=("xep_0054",))
    reply = call(heidi, lambda x: x.plugin["xep_0054"].get_vcard(f"grace@{DOMAIN}"))
    vcard = reply.find("{vcard-temp}vCard")
    assert vcard.findtext("{vcard-temp}N/{vcard-temp}GIVEN") == "Grace"
    assert vcard.findtext("{vcard-temp}NICKNAME") == "amazing"


def test_vcard_edge_cases(node, loop, clients):
    """No vCard yet: an empty one; no such user: service-unavailable; setting another
    user's: forbidden; a vCard over max_vcard_size: not-acceptable; the server has its
    own, read-only."""
    ivan = login(node, loop, clients, f"ivan@{DOMAIN}/v")
    empty = ask(ivan, "<vCard xmlns='vcard-temp'/>", to=f"judy@{DOMAIN}")
    assert condition(empty) is None and len(empty.find("{vcard-temp}vCard")) == 0
    assert condition(ask(ivan, "<vCard xmlns='vcard-temp'/>",
                         to=f"nobody@{DOMAIN}")) == "service-unavailable"
    assert condition(ask(ivan, VCARD, to=f"judy@{DOMAIN}", kind="set")) == "forbidden"
    photo = ("<vCard xmlns='vcard-temp'><PHOTO><TYPE>image/png</TYPE><BINVAL>"
             + "A" * 5000 + "</BINVAL></PHOTO></vCard>")
    assert condition(ask(ivan, photo, kind="set")) == "not-acceptable"
    server = ask(ivan, "<vCard xmlns='vcard-temp'/>", to=DOMAIN)
    assert server.findtext("{vcard-temp}vCard/{vcard-temp}FN") == "mongoose"
    assert condition(ask(ivan, VCARD, to=DOMAIN, kind="set")) == "not-allowed"


def test_vcard_search_finds_users_by_their_fields(node, loop, clients):
    """XEP-0055 at the server: legacy fields and a data form, prefix matches with '*',
    case-insensitive; a search with no criterion is not-acceptable."""
    mallory = login(node, loop, clients, f"mallory@{DOMAIN}/v")
    card = VCARD.replace("Grace Hopper", "Mallory Malicious").replace(
        "amazing", "Zebrafish").replace("Hopper", "Malicious").replace("Grace", "Mallory")
    assert condition(ask(mallory, card, kind="set")) is None
    form = ask(mallory, "<query xmlns='jabber:iq:search'/>", to=DOMAIN)
    assert form.find("{jabber:iq:search}query/{jabber:iq:search}nick") is not None
    legacy = ask(mallory, "<query xmlns='jabber:iq:search'><nick>zebra*</nick></query>",
                 to=DOMAIN, kind="set")
    items = legacy.findall("{jabber:iq:search}query/{jabber:iq:search}item")
    assert [i.get("jid") for i in items] == [f"mallory@{DOMAIN}"]
    assert items[0].findtext("{jabber:iq:search}last") == "Malicious"
    submitted = ask(mallory, (
        "<query xmlns='jabber:iq:search'><x xmlns='jabber:x:data' type='submit'>"
        "<field var='FORM_TYPE'><value>jabber:iq:search</value></field>"
        "<field var='last'><value>MALICIOUS</value></field></x></query>"),
        to=DOMAIN, kind="set")
    values = [v.text for v in submitted.iter("{jabber:x:data}value")]
    assert f"mallory@{DOMAIN}" in values and "Zebrafish" in values
    assert condition(ask(mallory, "<query xmlns='jabber:iq:search'><nick/></query>",
                         to=DOMAIN, kind="set")) == "not-acceptable"


# -- mod_sic -------------------------------------------------------------------------------


def test_server_ip_check_answers_the_clients_address(node, loop, clients):
    """urn:xmpp:sic:1 answers the address and port the client connects from; the older
    urn:xmpp:sic:0 (slixmpp's plugin) the address."""
    niaj = login(node, loop, clients, f"niaj@{DOMAIN}/s", plugins=("xep_0279",))

    async def local_port() -> int:
        return niaj.xmpp.transport.get_extra_info("sockname")[1]

    reply = ask(niaj, "<address xmlns='urn:xmpp:sic:1'/>")
    address = reply.find("{urn:xmpp:sic:1}address")
    assert address.findtext("{urn:xmpp:sic:1}ip") == "127.0.0.1"
    assert int(address.findtext("{urn:xmpp:sic:1}port")) == loop.run(local_port())
    old = call(niaj, lambda x: x.plugin["xep_0279"].check_ip())
    assert old.findtext("{urn:xmpp:sic:0}ip") == "127.0.0.1"
    assert condition(ask(niaj, "<address xmlns='urn:xmpp:sic:1'/>",
                         to=f"alice@{DOMAIN}")) == "forbidden"


# -- mod_register --------------------------------------------------------------------------


class RawFrom(RawClient):
    """A raw client whose connection comes from ``source`` (any 127.x.y.z is loopback)."""

    def __init__(self, port: int, source: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10,
                                             source_address=(source, 0))
        self.buffer = b""
        self.closed = False


def unauthenticated(node: MongooseNode, source: str = "127.0.0.1") -> tuple[RawClient, bytes]:
    """A raw client after STARTTLS, before login; and the features it was offered."""
    raw = RawFrom(node.c2s_port, source)  # type: ignore[attr-defined]
    raw.open_stream()
    raw.starttls()
    return raw, raw.open_stream()


def raw_iq(raw: RawClient, payload: str, kind: str = "set", id_: str = "r1") -> bytes:
    raw.send(f"<iq type='{kind}' id='{id_}'>{payload}</iq>")
    return raw.read_until(rb"</iq>|<iq[^>]*/>")


def registration(user: str | None, password: str | None) -> str:
    fields = ""
    if user is not None:
        fields += f"<username>{user}</username>"
    if password is not None:
        fields += f"<password>{password}</password>"
    return f"<query xmlns='{REGISTER}'>{fields}</query>"


def stanza_error(data: bytes) -> str | None:
    match = re.search(rb'<([a-z-]+) xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"', data)
    return match.group(1).decode() if match else None


def can_log_in(node: MongooseNode, loop: ClientLoop, clients: list[Client], jid: str,
               password: str) -> bool:
    client = Client(loop, jid, password, port=node.c2s_port)  # type: ignore[attr-defined]
    clients.append(client)
    return client.try_connect() == "session"


def test_registration_is_offered_only_after_tls(node):
    """Before STARTTLS (required here) there is no register feature and an iq ends the
    stream; after it the feature is offered next to SASL."""
    raw = RawClient(node.c2s_port)
    try:
        features = raw.open_stream()
        assert b"iq-register" not in features
        raw.send(f"<iq type='get' id='r0'><query xmlns='{REGISTER}'/></iq>")
        assert b"not-authorized" in raw.read_to_close()
    finally:
        raw.close()
    raw, features = unauthenticated(node)
    try:
        assert b"<register xmlns=\"http://jabber.org/features/iq-register\"/>" in features
        assert b"mechanisms" in features
    finally:
        raw.close()


def test_in_band_registration_creates_an_account(node, loop, clients):
    """The form asks for username and password; a set creates the account, which then
    logs in; an existing name is a conflict; a second account on the same connection is
    refused."""
    raw, _ = unauthenticated(node)
    try:
        form = raw_iq(raw, f"<query xmlns='{REGISTER}'/>", kind="get")
        assert b"<username/>" in form and b"<password/>" in form and b'type="result"' in form
        assert b'type="result"' in raw_iq(raw, registration("newbie", STRONG))
        again = raw_iq(raw, registration("newbie2", STRONG), id_="r2")
        assert stanza_error(again) == "not-acceptable"
        assert STRONG.encode() not in again  # never echoed back
    finally:
        raw.close()
    assert can_log_in(node, loop, clients, f"newbie@{DOMAIN}/r", STRONG)
    raw, _ = unauthenticated(node)
    try:
        assert stanza_error(raw_iq(raw, registration("NewBie", STRONG))) == "conflict"
    finally:
        raw.close()


@pytest.mark.parametrize(("user", "password", "expected"), [
    ("someone", None, "not-acceptable"),
    (None, STRONG, "not-acceptable"),
    ("someone", "", "not-acceptable"),
    ("someone", "weak", "not-acceptable"),
    ("some one", STRONG, "jid-malformed"),
])
def test_in_band_registration_refuses_incomplete_or_weak_requests(node, user, password,
                                                                   expected):
    """Missing or empty fields and weak passwords are not-acceptable; a name that
    cannot be a JID's local part is jid-malformed."""
    raw, _ = unauthenticated(node)
    try:
        assert stanza_error(raw_iq(raw, registration(user, password))) == expected
    finally:
        raw.close()


def test_in_band_registration_is_refused_from_a_denied_address(node, loop, clients):
    """From 127.0.0.3 (denied by the first ip_access rule) both the form and the
    registration are not-allowed; the stream stays open for a login."""
    raw, _ = unauthenticated(node, source="127.0.0.3")
    try:
        assert stanza_error(raw_iq(raw, f"<query xmlns='{REGISTER}'/>", kind="get")) == \
            "not-allowed"
        assert stanza_error(raw_iq(raw, registration("intruder", STRONG), id_="r2")) == \
            "not-allowed"
    finally:
        raw.close()
    assert not can_log_in(node, loop, clients, f"intruder@{DOMAIN}/r", STRONG)


def test_registration_with_slixmpp(node, loop, clients):
    """slixmpp's XEP-0077 plugin registers through the stream feature, then logs in."""
    client = Client(loop, f"slixnew@{DOMAIN}/r", STRONG, port=node.c2s_port)
    for plugin in ("xep_0004", "xep_0066", "xep_0077"):
        loop.run(_register_plugin(client.xmpp, plugin))

    async def register(form: Any) -> None:
        iq = client.xmpp.Iq(stype="set")
        iq["register"]["username"] = "slixnew"
        iq["register"]["password"] = STRONG
        await iq.send()

    loop.call(client.xmpp.add_event_handler, "register", register)
    clients.append(client)
    client.connect()
    assert client.jid == f"slixnew@{DOMAIN}/r"


def test_a_user_changes_its_password(node, loop, clients):
    """After login a user changes its own password (not another user's, not to an
    empty or weak one); the old one stops working, the new one works."""
    olivia = login(node, loop, clients, f"olivia@{DOMAIN}/p", plugins=("xep_0077",))
    others = f"<query xmlns='{REGISTER}'><username>peggy</username><password>{STRONG}" \
        "</password></query>"
    assert condition(ask(olivia, others, to=DOMAIN, kind="set")) == "not-allowed"
    empty = f"<query xmlns='{REGISTER}'><username>olivia</username><password/></query>"
    assert condition(ask(olivia, empty, to=DOMAIN, kind="set")) == "bad-request"
    weak = f"<query xmlns='{REGISTER}'><username>olivia</username><password>abc</password>" \
        "</query>"
    assert condition(ask(olivia, weak, to=DOMAIN, kind="set")) == "not-acceptable"
    registered = ask(olivia, f"<query xmlns='{REGISTER}'/>", to=DOMAIN)
    assert registered.find(f"{{{REGISTER}}}query/{{{REGISTER}}}registered") is not None
    reply = call(olivia, lambda x: x.plugin["xep_0077"].change_password(STRONG, jid=DOMAIN))
    assert condition(reply) is None
    assert not can_log_in(node, loop, clients, f"olivia@{DOMAIN}/old", PASSWORD)
    assert can_log_in(node, loop, clients, f"olivia@{DOMAIN}/new", STRONG)


def test_removing_the_account_ends_its_sessions_and_deletes_its_data(node, db, loop,
                                                                     clients):
    """<remove/> (alone: with anything else it is a bad-request) answers, ends every
    session of the account with not-authorized, and deletes the account and its data:
    vCard, private XML, offline messages."""
    rupert = login(node, loop, clients, f"rupert@{DOMAIN}/a", presence=False,
                   plugins=("xep_0077",))
    other = login(node, loop, clients, f"rupert@{DOMAIN}/b", presence=False)
    assert condition(ask(rupert, VCARD, kind="set")) is None
    assert condition(ask(rupert, "<query xmlns='jabber:iq:private'><a xmlns='example:a'/>"
                         "</query>", kind="set")) is None
    sybil = login(node, loop, clients, f"sybil@{DOMAIN}/s")
    sybil.send_message(f"rupert@{DOMAIN}", "for later")  # no available resource: stored
    wait_until(lambda: OfflineStore(db).count("rupert", DOMAIN) == 1,
               what="the offline message stored")
    assert condition(ask(rupert, f"<query xmlns='{REGISTER}'><remove/><username>x"
                         "</username></query>", kind="set")) == "bad-request"
    reply = call(rupert, lambda x: x.plugin["xep_0077"].cancel_registration())
    assert condition(reply) is None
    wait_until(lambda: rupert.disconnected.is_set() and other.disconnected.is_set(),
               what="both sessions ended")
    assert "not-authorized" in rupert.stream_errors
    assert "not-authorized" in other.stream_errors
    assert not can_log_in(node, loop, clients, f"rupert@{DOMAIN}/again", PASSWORD)
    # The clean-ups ran before the answer was sent.
    assert VcardStore(db).get("rupert", DOMAIN) is None
    assert PrivateStore(db).get("rupert", DOMAIN, "example:a") is None
    assert OfflineStore(db).count("rupert", DOMAIN) == 0


def test_ip_access_rules_first_match_decides_and_default_is_deny():
    """mod_register's address check: the first matching rule decides, IPv4-mapped IPv6
    addresses match IPv4 rules, an address no rule matches may not register."""
    import ipaddress

    from mongoose.modules import mod_register

    saved = mod_register._rules
    mod_register._rules = ((ipaddress.ip_network("10.1.0.0/16"), False),
                           (ipaddress.ip_network("10.0.0.0/8"), True),
                           (ipaddress.ip_network("::1/128"), True))
    try:
        assert mod_register.allowed_address("10.2.3.4")
        assert not mod_register.allowed_address("10.1.3.4")
        assert mod_register.allowed_address("::ffff:10.2.3.4")
        assert mod_register.allowed_address("::1")
        assert not mod_register.allowed_address("192.168.1.1")
        assert not mod_register.allowed_address("not an address")
    finally:
        mod_register._rules = saved


def test_password_entropy():
    """Entropy is length times log2 of the alphabet the password draws on."""
    from mongoose.modules.mod_register import entropy

    assert entropy("") == 0
    assert entropy("aaaa") == pytest.approx(4 * 4.7004, rel=1e-3)
    assert entropy("aA1!") == pytest.approx(4 * 6.5699, rel=1e-3)
    assert entropy("secret-password") > 32 > entropy("abcdef")


def test_mod_register_config_is_validated():
    """ip_access rules need an address (or network) and a policy of allow or deny; the
    error names the key."""
    from mongoose import config

    loaded = config.loads('[modules.mod_register]\npassword_strength = 40\nip_access = ['
                          '{address = "10.0.0.1", policy = "deny"}, '
                          '{address = "10.0.0.0/8", policy = "allow"}]\n')
    module = loaded.modules.mod_register
    assert module.password_strength == 40
    assert [(r.address, r.policy) for r in module.ip_access] == [
        ("10.0.0.1/32", "deny"), ("10.0.0.0/8", "allow")]
    assert config.loads("[modules.mod_register]\n").modules.mod_register.ip_access == ()
    for bad in ('[{address = "10.0.0.0/8"}]', '[{address = "nowhere", policy = "allow"}]',
                '[{address = "10.0.0.0/8", policy = "maybe"}]', '"10.0.0.0/8"'):
        with pytest.raises(config.ConfigError, match=r"modules\.mod_register\.ip_access"):
            config.loads(f"[modules.mod_register]\nip_access = {bad}\n")


def test_the_modules_count_their_requests_on_the_metrics_page(node, loop, clients):
    """Each iq module emits a count per request, served (merged) on /metrics."""
    import urllib.request

    walter = login(node, loop, clients, f"walter@{DOMAIN}/metrics", plugins=("xep_0279",))
    ask(walter, "<query xmlns='jabber:iq:private'><x xmlns='example:m'/></query>", kind="set")
    ask(walter, "<vCard xmlns='vcard-temp'><FN>Walter</FN></vCard>", kind="set")
    ask(walter, "<vCard xmlns='vcard-temp'/>", to=f"walter@{DOMAIN}")
    ask(walter, "<query xmlns='jabber:iq:last'/>", to=f"walter@{DOMAIN}")
    ask(walter, "<address xmlns='urn:xmpp:sic:1'/>", to=DOMAIN)
    wanted = ("mod_private_set", "mod_vcard_set", "mod_vcard_get", "mod_last_get",
              "mod_sic_get")

    def counted() -> list[str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as r:
            page = r.read().decode()
        return [name for name in wanted if not re.search(
            rf'^{name}_count_total{{host_type="{DOMAIN}"}} [1-9]', page, re.M)]

    # Counts reach the page within a second (they are batched per second).
    wait_until(lambda: not counted(), timeout=15, what=lambda: f"not counted: {counted()}")
