"""Tests of otp.transport (ZeroMQ frames between processes) and otp.curve (cluster keys).

Transports run on real event loops: a loop on a thread of the test process (``Local``) or
a whole OS process running tests/transport_peer.py (``Remote``). Tests wait for
conditions with deadlines, never for a fixed time.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import json
import logging
import os
import queue
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from helpers import wait_until
from zmq.utils.monitor import parse_monitor_message

from otp import codec, curve
from otp.curve import CurveKeys
from otp.pid import Pid, Ref
from otp.scheduler import new_event_loop
from otp.transport import Peer, Transport

PEER_SCRIPT = Path(__file__).resolve().parent / "transport_peer.py"

VALUES: list[Any] = [
    Pid("a@host", 1, 2),
    Ref("a@host", 0, 9),
    ("msg", Pid("b@host", 2, 3), (1, (2, 3)), [4, 5]),
    {"k": [b"\x00\xff", None, True], "n": {"deep": (Ref("c@h", 3, 4),)}},
    1.5,
    -(2**63),
    2**64 - 1,
    "unicode \u2713",
    [],
    (),
]

HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (a Pid is not just a tuple)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


# -- a loop on a thread of the test process ------------------------------------------------


class LoopThread:
    """An event loop (uvloop) running forever on a daemon thread."""

    def __init__(self) -> None:
        self.loop = new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 10.0) -> Any:
        """Run ``fn(*args)`` on the loop and return its result."""
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn(*args))
            except BaseException as e:
                done.set_exception(e)

        self.loop.call_soon_threadsafe(run)
        return done.result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Local:
    """A Transport on the test's loop thread, recording what it receives."""

    def __init__(self, lt: LoopThread, name: Peer, bind: list[str], **kwargs: Any) -> None:
        self.lt = lt
        self.items: list[Any] = []
        self.events: list[tuple[Peer, str]] = []

        def create() -> Transport:
            t = Transport(lt.loop, name=name, bind=bind, on_items=self.items.extend,
                          on_peer_event=lambda p, e: self.events.append((p, e)), **kwargs)
            t.start()
            return t

        self.transport: Transport = lt.call(create)
        self.addresses = self.transport.addresses

    def connect(self, peer: Peer, address: str) -> None:
        self.lt.call(self.transport.connect, peer, address)

    def send_all(self, peer: Peer, items: list[Any]) -> None:
        """Send every item in one loop turn."""

        def run() -> None:
            for item in items:
                self.transport.send(peer, item)

        self.lt.call(run)

    def stats(self) -> dict[str, Any]:
        return self.lt.call(self.transport.statistics)

    def wait_items(self, n: int, timeout: float = 10.0) -> list[Any]:
        wait_until(lambda: len(self.items) >= n, timeout, f"{n} items (have {len(self.items)})")
        return self.items

    def close(self) -> None:
        self.lt.call(self.transport.close)


# -- a transport in another OS process ---------------------------------------------------------


class Remote:
    """tests/transport_peer.py in its own process, driven by JSON lines."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(PEER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._held: dict[int, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def submit(self, cmd: str, **fields: Any) -> int:
        cid = next(self._ids)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": cid, "cmd": cmd, **fields}) + "\n")
        self.proc.stdin.flush()
        return cid

    def result(self, cid: int, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while cid not in self._held:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"peer gave no answer to command {cid} "
                                     f"within {timeout} s") from None
            if line is None:
                raise AssertionError(f"peer exited with {self.proc.wait()}")
            reply = json.loads(line)
            self._held[reply["id"]] = reply
        reply = self._held.pop(cid)
        assert "error" not in reply, reply["error"]
        return reply

    def request(self, cmd: str, timeout: float = 20.0, **fields: Any) -> dict[str, Any]:
        return self.result(self.submit(cmd, **fields), timeout)

    def start(self, name: Peer, bind: list[str], keys: Path | None = None,
              hwm: int = 10_000) -> list[str]:
        reply = self.request("start", name=list(name), bind=bind,
                             keys=str(keys) if keys else None, hwm=hwm)
        return reply["addresses"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(AssertionError):
                self.request("close", timeout=5)
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def ipc_dir() -> Iterator[Path]:
    """A short private directory (mode 0700) for ipc socket files and key files."""
    path = Path(tempfile.mkdtemp(prefix="otp-tx-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.stop()


@pytest.fixture
def local(loop_thread: LoopThread) -> Iterator[Callable[..., Local]]:
    made: list[Local] = []

    def make(name: Peer, bind: list[str], **kwargs: Any) -> Local:
        node = Local(loop_thread, name, bind, **kwargs)
        made.append(node)
        return node

    yield make
    for node in made:
        node.close()


@pytest.fixture
def remote() -> Iterator[Callable[[], Remote]]:
    made: list[Remote] = []

    def make() -> Remote:
        peer = Remote()
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.stop()


@pytest.fixture
def keys(ipc_dir: Path) -> tuple[CurveKeys, Path]:
    """The cluster's keypair and the key file that holds it."""
    pair = curve.generate()
    path = ipc_dir / "cluster.key"
    curve.save(pair, path)
    return pair, path


@pytest.fixture
def zsocket() -> Iterator[Callable[[int], zmq.Socket]]:
    """Raw ZeroMQ sockets (linger 0) for hand-made clients and sinks, closed afterwards."""
    ctx = zmq.Context()
    made: list[zmq.Socket] = []

    def make(kind: int) -> zmq.Socket:
        sock = ctx.socket(kind)
        sock.linger = 0
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close()
    ctx.term()


# -- round trips and values ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ipc", "tcp+curve"])
def test_items_round_trip_between_processes_with_values_intact(
    kind: str, ipc_dir: Path, keys: tuple[CurveKeys, Path], local: Callable[..., Local],
    remote: Callable[[], Remote],
) -> None:
    """Pids, refs, tuples and plain data go to another process and back unchanged."""
    pair, key_file = keys
    if kind == "ipc":
        here = local(("here", 1), [f"ipc://{ipc_dir}/here"])
        there = remote()
        there_addr = there.start(("there", 2), [f"ipc://{ipc_dir}/there"])[0]
    else:
        here = local(("here", 1), ["tcp://127.0.0.1:0"], curve=pair)
        there = remote()
        there_addr = there.start(("there", 2), ["tcp://127.0.0.1:0"], keys=key_file)[0]
        assert not there_addr.endswith(":0")
    there.request("connect", peer=["here", 1], address=here.addresses[0])
    there.request("echo", peer=["here", 1])
    here.connect(("there", 2), there_addr)
    here.send_all(("there", 2), VALUES)
    got = here.wait_items(len(VALUES))
    assert same(got, VALUES), got
    assert ("there", 2) in [p for p, e in here.events if e == "up"]


def test_unencodable_item_is_dropped_alone(
    ipc_dir: Path, local: Callable[..., Local], caplog: pytest.LogCaptureFixture
) -> None:
    """An item the codec refuses is dropped and counted; the rest of its batch arrives."""
    a = local(("a", 1), [f"ipc://{ipc_dir}/a"])
    b = local(("b", 1), [f"ipc://{ipc_dir}/b"])
    a.connect(("b", 1), b.addresses[0])
    a.send_all(("b", 1), [1, object(), 2])
    a.send_all(("b", 1), [3])
    assert b.wait_items(3) == [1, 2, 3]
    assert a.stats()["unencodable"] == 1
    assert any(getattr(r, "what", None) == "transport_unencodable" for r in caplog.records)


# -- ordering --------------------------------------------------------------------------------


def test_order_of_100000_items_from_one_sender_is_kept(
    ipc_dir: Path, remote: Callable[[], Remote]
) -> None:
    """100,000 items from one sender process arrive complete and in the order sent."""
    receiver, sender = remote(), remote()
    addr = receiver.start(("rx", 1), [f"ipc://{ipc_dir}/rx"])[0]
    sender.start(("tx", 1), [f"ipc://{ipc_dir}/tx"])
    sender.request("connect", peer=["rx", 1], address=addr)
    waiting = receiver.submit("wait_seq", total=100_000)
    sent = sender.request("send_seq", peer=["rx", 1], tag="a", count=100_000, per_turn=700)
    got = receiver.result(waiting, timeout=40)
    assert sent["stats"]["dropped"] == 0
    assert got["violations"] == 0
    assert got["per_tag"] == {"a": 100_000}
    assert got["others"] == 0


def test_order_is_kept_per_sender_with_three_senders_interleaved(
    ipc_dir: Path, keys: tuple[CurveKeys, Path], remote: Callable[[], Remote]
) -> None:
    """Three sender processes (two over ipc, one over CURVE tcp): each one's order is kept."""
    _, key_file = keys
    receiver = remote()
    ipc_addr, tcp_addr = receiver.start(
        ("rx", 1), [f"ipc://{ipc_dir}/rx", "tcp://127.0.0.1:0"], keys=key_file
    )
    senders = {}
    for tag, address in (("a", ipc_addr), ("b", ipc_addr), ("c", tcp_addr)):
        sender = remote()
        sender.start(("tx", ord(tag)), [], keys=key_file)
        sender.request("connect", peer=["rx", 1], address=address)
        senders[tag] = sender
    n = 50_000
    waiting = receiver.submit("wait_seq", total=3 * n)
    pending = [(s, s.submit("send_seq", peer=["rx", 1], tag=tag, count=n, per_turn=100))
               for tag, s in senders.items()]
    for sender, cid in pending:
        assert sender.result(cid, timeout=40)["stats"]["dropped"] == 0
    got = receiver.result(waiting, timeout=40)
    assert got["violations"] == 0
    assert got["per_tag"] == {"a": n, "b": n, "c": n}
    assert got["switches"] > 3, "the senders did not interleave"


# -- batching ----------------------------------------------------------------------------------


def test_sends_in_one_loop_turn_go_out_in_few_frames(
    ipc_dir: Path, local: Callable[..., Local]
) -> None:
    """10,000 sends in one loop turn make 10 frames (max_batch 1000), received in order."""
    a = local(("a", 1), [f"ipc://{ipc_dir}/a"])
    b = local(("b", 1), [f"ipc://{ipc_dir}/b"])
    a.connect(("b", 1), b.addresses[0])
    a.send_all(("b", 1), list(range(10_000)))
    assert b.wait_items(10_000) == list(range(10_000))
    sent = a.stats()
    assert sent["items_sent"] == 10_000
    assert sent["frames_sent"] == 10_000 // Transport.max_batch
    assert b.stats()["frames_received"] == sent["frames_sent"]


def test_reader_resumes_after_spending_its_budget(
    ipc_dir: Path, local: Callable[..., Local]
) -> None:
    """A reader that stops at its item budget comes back for the frames left queued."""
    a = local(("a", 1), [f"ipc://{ipc_dir}/a"])
    b = local(("b", 1), [f"ipc://{ipc_dir}/b"])
    a.transport.max_batch = 10
    b.transport.recv_budget = 10
    a.connect(("b", 1), b.addresses[0])
    a.send_all(("b", 1), list(range(5_000)))
    assert b.wait_items(5_000) == list(range(5_000))
    assert b.stats()["frames_received"] == 500


# -- security ----------------------------------------------------------------------------------


def test_clients_without_the_cluster_keys_deliver_nothing(
    keys: tuple[CurveKeys, Path], local: Callable[..., Local],
    remote: Callable[[], Remote], zsocket: Callable[[int], zmq.Socket],
) -> None:
    """No keys, another keypair, or only the public key: not one item reaches the server."""
    pair, key_file = keys
    other = curve.generate()
    server = remote()
    addr = server.start(("srv", 1), ["tcp://127.0.0.1:0"], keys=key_file)[0]

    def client(
        public: bytes | None, secret: bytes | None, server_key: bytes | None
    ) -> tuple[zmq.Socket, zmq.Socket]:
        sock = zsocket(zmq.PUSH)
        if public is not None:
            sock.curve_publickey = public
            sock.curve_secretkey = secret
            sock.curve_serverkey = server_key
        monitor = sock.get_monitor_socket()
        sock.connect(addr)
        for i in range(10):
            sock.send(codec.dumps([("bad", i)]), zmq.NOBLOCK)
        return sock, monitor

    bad = {
        "plain": client(None, None, None),
        "another keypair": client(other.public, other.secret, other.public),
        "knows the public key": client(other.public, other.secret, pair.public),
        "claims the public key": client(pair.public, other.secret, pair.public),
    }
    for what, (_, monitor) in bad.items():
        deadline = time.monotonic() + 10
        while True:
            assert time.monotonic() < deadline, f"{what}: no handshake failure seen"
            if monitor.poll(100):
                event = parse_monitor_message(monitor.recv_multipart())["event"]
                if event & HANDSHAKE_FAILED:
                    break
    for sock, monitor in bad.values():
        sock.disable_monitor()
        monitor.close(linger=0)
    # A Transport with another keypair is refused too, and says so.
    impostor = local(("impostor", 1), [], curve=other)
    impostor.connect(("srv", 1), addr)
    impostor.send_all(("srv", 1), [("bad", i) for i in range(10)])
    wait_until(lambda: (("srv", 1), "auth_failed") in impostor.events, 10, "auth_failed")
    # The legitimate client's items arrive: everything sent before has been refused.
    waiting = server.submit("wait_seq", total=10)
    member = local(("member", 1), [], curve=pair)
    member.connect(("srv", 1), addr)
    member.send_all(("srv", 1), [("good", i) for i in range(10)])
    got = server.result(waiting)
    assert got["per_tag"] == {"good": 10}
    assert got["others"] == 0
    stats = server.request("stats")["stats"]
    assert stats["items_received"] == 10
    assert stats["bad_frames"] == 0


def test_tcp_without_curve_keys_is_plain(ipc_dir: Path, local: Callable[..., Local]) -> None:
    """Without keys, tcp works unencrypted between two transports (tests, one host)."""
    a = local(("a", 1), ["tcp://127.0.0.1:0"])
    b = local(("b", 1), ["tcp://127.0.0.1:0"])
    a.connect(("b", 1), b.addresses[0])
    a.send_all(("b", 1), [("x", Pid("a", 1, 1))])
    assert same(b.wait_items(1), [("x", Pid("a", 1, 1))])


# -- high-water marks and drops ----------------------------------------------------------------


def test_slow_consumer_bounds_sender_memory_and_counts_drops(
    ipc_dir: Path, remote: Callable[[], Remote], zsocket: Callable[[int], zmq.Socket]
) -> None:
    """2M items to a peer that never reads: RSS stays flat, drops are counted, timers run."""
    sink = zsocket(zmq.PULL)
    sink.rcvhwm = 10
    sink.bind(f"ipc://{ipc_dir}/sink")  # never read
    sender = remote()
    sender.start(("tx", 1), [], hwm=10)
    sender.request("connect", peer=["sink", 0], address=f"ipc://{ipc_dir}/sink")
    n = 2_000_000
    got = sender.request("flood", timeout=50, peer=["sink", 0], count=n, per_turn=2_000)
    stats = got["stats"]
    assert stats["dropped"] > n // 2
    assert stats["dropped"] == stats["dropped_hwm"] == stats["dropped_by_peer"]["sink/0"]
    assert stats["dropped"] + stats["items_sent"] == n
    assert got["rss_after"] - got["rss_before"] < 50 * 2**20
    assert got["ticks"] >= 10, "the loop's timer did not keep firing"
    assert got["max_gap"] < 0.5, f"the loop was blocked for {got['max_gap']:.3f} s"


def test_absent_peer_queues_up_to_hwm_then_drops(
    ipc_dir: Path, local: Callable[..., Local]
) -> None:
    """Frames for a peer that is not there yet wait up to the high-water mark, then drop."""
    a = local(("a", 1), [], hwm=5)
    a.connect(("later", 1), f"ipc://{ipc_dir}/later")
    for i in range(50):
        a.send_all(("later", 1), [i])
    stats = a.stats()
    assert 5 <= stats["frames_sent"] <= 20
    assert stats["dropped"] == 50 - stats["items_sent"]
    # When the peer comes up, the queued frames are delivered, oldest first.
    later = local(("later", 1), [f"ipc://{ipc_dir}/later"])
    got = later.wait_items(stats["items_sent"])
    assert got == list(range(stats["items_sent"]))


def test_items_for_an_unconnected_peer_are_dropped_with_one_warning(
    local: Callable[..., Local], caplog: pytest.LogCaptureFixture
) -> None:
    """Sends to a peer without a socket are counted per peer; warnings are throttled."""
    caplog.set_level(logging.WARNING, logger="otp.transport")
    a = local(("a", 1), [])
    for _ in range(5):
        a.send_all(("ghost", 3), list(range(100)))
    stats = a.stats()
    assert stats["dropped"] == stats["dropped_unconnected"] == 500
    assert stats["dropped_by_peer"] == {("ghost", 3): 500}
    warnings = [r for r in caplog.records if getattr(r, "what", None) == "transport_dropped"]
    assert len(warnings) == 1
    assert warnings[0].peer == "ghost/3"
    assert warnings[0].dropped == 100


# -- peers come and go -------------------------------------------------------------------------


def test_connect_to_a_new_address_replaces_the_socket(
    ipc_dir: Path, local: Callable[..., Local]
) -> None:
    """Reconnecting a peer to a new address (a restarted worker) sends there from then on."""
    a = local(("a", 1), [])
    old = local(("w", 1), [f"ipc://{ipc_dir}/w1-old"])
    new = local(("w", 1), [f"ipc://{ipc_dir}/w1-new"])
    a.connect(("w", 1), old.addresses[0])
    a.send_all(("w", 1), ["to old"])
    assert old.wait_items(1) == ["to old"]
    a.connect(("w", 1), new.addresses[0])
    a.send_all(("w", 1), ["to new"])
    assert new.wait_items(1) == ["to new"]
    assert old.items == ["to old"]
    assert a.stats()["peers"] == {("w", 1): new.addresses[0]}


def test_peer_events_report_connection_up_and_down(
    ipc_dir: Path, local: Callable[..., Local]
) -> None:
    """on_peer_event says "up" once the handshake is done and "down" when the peer goes."""
    a = local(("a", 1), [])
    b = local(("b", 1), [f"ipc://{ipc_dir}/b"])
    a.connect(("b", 1), b.addresses[0])
    wait_until(lambda: a.events == [(("b", 1), "up")], 10, "up")
    b.close()
    wait_until(lambda: a.events == [(("b", 1), "up"), (("b", 1), "down")], 10, "down")


def test_disconnect_drops_what_is_pending(ipc_dir: Path, local: Callable[..., Local]) -> None:
    """disconnect() closes the socket; later sends to that peer are dropped and counted."""
    a = local(("a", 1), [])
    b = local(("b", 1), [f"ipc://{ipc_dir}/b"])
    a.connect(("b", 1), b.addresses[0])
    a.lt.call(lambda: (a.transport.send(("b", 1), 1), a.transport.disconnect(("b", 1))))
    a.send_all(("b", 1), [2])
    stats = a.stats()
    assert stats["dropped_unconnected"] == 2
    assert stats["peers"] == {}


# -- bad input ---------------------------------------------------------------------------------


def test_garbage_frames_are_counted_and_later_frames_arrive(
    ipc_dir: Path, local: Callable[..., Local], zsocket: Callable[[int], zmq.Socket],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Frames that do not decode to a list are dropped and counted; the reader goes on."""
    b = local(("b", 1), [f"ipc://{ipc_dir}/b"])
    push = zsocket(zmq.PUSH)
    push.connect(b.addresses[0])
    garbage = [b"\xc1", b"\x93\x01", codec.dumps(5), b"", b"\xc7\x02\x01\x01"]
    for frame in [*garbage, codec.dumps([("ok", 1)])]:
        push.send(frame)
    assert b.wait_items(1) == [("ok", 1)]
    assert b.stats()["bad_frames"] == len(garbage)
    assert sum(getattr(r, "what", None) == "transport_bad_frame" for r in caplog.records) == 5


def test_an_exception_in_on_items_does_not_stop_the_reader(
    ipc_dir: Path, loop_thread: LoopThread, local: Callable[..., Local]
) -> None:
    """on_items raising is logged; the next frames are still delivered."""
    got: list[Any] = []

    def on_items(items: list[Any]) -> None:
        if items == ["boom"]:
            raise RuntimeError("boom")
        got.extend(items)

    def create() -> Transport:
        t = Transport(loop_thread.loop, name=("b", 1), bind=[f"ipc://{ipc_dir}/b"],
                      on_items=on_items)
        t.start()
        return t

    b = loop_thread.call(create)
    try:
        a = local(("a", 1), [])
        a.connect(("b", 1), b.addresses[0])
        a.send_all(("b", 1), ["boom"])
        a.send_all(("b", 1), ["after"])
        wait_until(lambda: got == ["after"], 10, "the frame after the failing one")
    finally:
        loop_thread.call(b.close)


# -- files and lifecycle -----------------------------------------------------------------------


def test_close_removes_ipc_socket_files(ipc_dir: Path, local: Callable[..., Local]) -> None:
    """Socket files are mode 0600 while bound and gone after close()."""
    a = local(("a", 1), [f"ipc://{ipc_dir}/one", f"ipc://{ipc_dir}/two", "tcp://127.0.0.1:0"])
    for name in ("one", "two"):
        st = os.stat(ipc_dir / name)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
    a.close()
    assert not (ipc_dir / "one").exists()
    assert not (ipc_dir / "two").exists()


def test_close_leaves_a_socket_file_bound_since_by_another(
    ipc_dir: Path, local: Callable[..., Local]
) -> None:
    """A path re-bound by a successor (a restarted worker) is not removed by the old one."""
    old = local(("w", 1), [f"ipc://{ipc_dir}/w"])
    new = local(("w", 1), [f"ipc://{ipc_dir}/w"])
    old.close()
    assert (ipc_dir / "w").exists()
    new.close()
    assert not (ipc_dir / "w").exists()


def test_start_off_the_loop_is_refused(ipc_dir: Path, loop_thread: LoopThread) -> None:
    """start() must run on the transport's loop (its ZAP handler is a task there)."""
    t = Transport(loop_thread.loop, name=("a", 1), bind=[f"ipc://{ipc_dir}/a"],
                  on_items=lambda items: None)
    with pytest.raises(RuntimeError, match="loop"):
        t.start()
    t.close()


# -- key files ---------------------------------------------------------------------------------


def test_key_file_round_trips_with_mode_0600(ipc_dir: Path) -> None:
    """save() writes the keypair with mode 0600 and load() reads the same pair back."""
    pair = curve.generate()
    path = ipc_dir / "k.toml"
    curve.save(pair, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert curve.load(path) == pair
    assert pair.secret.decode() not in repr(pair)


def test_key_file_with_keys_of_two_pairs_is_refused(ipc_dir: Path) -> None:
    """A public key that does not belong to the secret key is an error at load time."""
    a, b = curve.generate(), curve.generate()
    path = ipc_dir / "k.toml"
    path.write_text(f'public = "{a.public.decode()}"\nsecret = "{b.secret.decode()}"\n')
    path.chmod(0o600)
    with pytest.raises(ValueError, match="does not belong"):
        curve.load(path)


def test_loading_a_key_file_readable_by_others_warns(
    ipc_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A key file readable by group or others loads, with a warning."""
    pair = curve.generate()
    path = ipc_dir / "k.toml"
    curve.save(pair, path)
    path.chmod(0o644)
    assert curve.load(path) == pair
    assert any(getattr(r, "what", None) == "curve_key_file_mode" for r in caplog.records)
