"""otp.osproc: OS processes as supervised actors, started and stopped the OTP way."""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ProbeHandle, wait_until

import otp
from otp import supervisor as sup_mod
from otp.osproc import OsProcess, OsProcessStartError, os_process_spec
from otp.supervisor import Supervisor

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and prctl"),
]

T = 10.0  # seconds: deadline for any single wait
ROOT = Path(__file__).resolve().parent.parent

# A child process driven by key=value arguments. It writes marker files named
# <what>.<its pid> into dir=: "pid" at start, "term" on SIGTERM (then exits 0), "int"
# on SIGINT (and goes on). say= prints comma-separated lines on stdout first; exit=N
# writes an error on stderr and exits N; wait_for=PATH waits for that file; then it
# prints READY (unless ready=no) and waits for signals. term=ignore ignores SIGTERM.
CHILD = r"""
import os, signal, sys, time
opts = dict(arg.split("=", 1) for arg in sys.argv[1:])
def mark(what):
    with open(os.path.join(opts["dir"], f"{what}.{os.getpid()}"), "w") as f:
        f.write(str(os.getpid()))
def on_term(signum, frame):
    mark("term")
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if opts.get("term") == "ignore" else on_term)
signal.signal(signal.SIGINT, lambda signum, frame: mark("int"))
mark("pid")
for line in filter(None, opts.get("say", "").split(",")):
    print(line, flush=True)
if "exit" in opts:
    print("bad config: no such option", file=sys.stderr, flush=True)
    sys.exit(int(opts["exit"]))
while "wait_for" in opts and not os.path.exists(opts["wait_for"]):
    time.sleep(0.01)
if opts.get("ready") != "no":
    print("READY", flush=True)
while True:
    signal.pause()
"""

# A root process (the node's stand-in): a supervisor with one OsProcess child running the
# argv given on its command line. It prints the child's os pid, waits for SIGINT, stops
# the supervisor, and prints "stopped".
ROOT_SCRIPT = r"""
import os, signal, sys
import otp
from otp import supervisor
from otp.osproc import os_process_spec
# SIGINT wakes the main thread through a pipe the C-level handler writes to: a Python
# handler that sets a threading.Event could deadlock on the Event's lock if the signal
# came while the main thread held it, entering wait().
wake_r, wake_w = os.pipe()
os.set_blocking(wake_w, False)
signal.set_wakeup_fd(wake_w)
signal.signal(signal.SIGINT, lambda signum, frame: None)
sup = supervisor.Supervisor.start(
    "one_for_one", 1, 5, [os_process_spec("w", sys.argv[1:], ready_line="READY")])
otp.started(sup).get(timeout=30)
(child,) = supervisor.which_children(sup).get(timeout=30)
print(otp.current().lookup(child.pid).os_pid, flush=True)
os.read(wake_r, 1)
sup.stop(timeout=30)
print("stopped", flush=True)
"""


def child_argv(directory: Path, **opts: Any) -> list[str]:
    return [sys.executable, "-c", CHILD, f"dir={directory}", *(f"{k}={v}" for k, v in opts.items())]


def marks(directory: Path, what: str) -> list[int]:
    """Pids of the children that wrote a ``what`` marker."""
    return [int(p.name.split(".")[1]) for p in directory.glob(f"{what}.*")]


def proc_state(pid: int) -> str | None:
    """The /proc state letter of ``pid`` (Z: zombie), None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def running(pid: int) -> bool:
    """True if ``pid`` is a process that has not exited (a zombie has)."""
    return proc_state(pid) not in (None, "Z", "X")


def reaped(pid: int) -> bool:
    return proc_state(pid) is None


def our_zombies() -> list[int]:
    zombies = []
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] == "Z" and fields[1] == me:
            zombies.append(int(entry.name))
    return zombies


@pytest.fixture(autouse=True)
def no_zombies() -> Iterator[None]:
    """Every test must leave no unreaped child of this process behind."""
    yield
    wait_until(lambda: not our_zombies(), T, "no zombie children")


def info(pid: otp.Pid) -> dict[str, Any]:
    scheduler = otp.current()

    def run() -> dict[str, Any]:
        actor = scheduler.lookup(pid)
        assert actor is not None, f"{pid} is not alive"
        return actor.info()

    return scheduler.run_sync(run)


def only_child(sup: otp.ActorRef) -> otp.Pid:
    (child,) = sup_mod.which_children(sup).get(timeout=T)
    assert isinstance(child.pid, otp.Pid)
    return child.pid


def restarted(sup: otp.ActorRef, old: otp.Pid) -> otp.Pid:
    def new_pid() -> otp.Pid | None:
        (child,) = sup_mod.which_children(sup).get(timeout=T)
        return child.pid if isinstance(child.pid, otp.Pid) and child.pid != old else None

    return wait_until(new_pid, T, "the child restarted")


def events(caplog: pytest.LogCaptureFixture, what: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "what", None) == what]


def start_error(ref: otp.ActorRef) -> Any:
    with pytest.raises(otp.StartError) as raised:
        otp.started(ref).get(timeout=T)
    return raised.value.reason


class Lines:
    """The stdout lines of a subprocess, to be awaited with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        threading.Thread(target=self._read, args=(proc.stdout,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        with stream:
            for line in stream:
                self._lines.put(line)

    def next(self) -> str:
        try:
            return self._lines.get(timeout=T).strip()
        except queue.Empty:
            raise AssertionError(f"no line within {T} s") from None


def start_root(tmp_path: Path, **popen: Any) -> tuple[subprocess.Popen[str], Lines]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    root = subprocess.Popen(
        [sys.executable, "-c", ROOT_SCRIPT, *child_argv(tmp_path)],
        stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT, **popen,
    )
    return root, Lines(root)


# -- starting --------------------------------------------------------------------------------


def test_ready_line_gates_the_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The start completes only on the ready line; earlier stdout lines are just output."""
    caplog.set_level(logging.INFO, logger="otp.osproc")
    go = tmp_path / "go"
    argv = child_argv(tmp_path, say="warming up", wait_for=go)
    ref = OsProcess.start(argv, ready_line="READY", stdout="log")
    started = otp.started(ref)
    wait_until(lambda: any(r.line == "warming up" for r in events(caplog, "os_process_output")),
               T, "the child's first line")
    assert not started.done()
    go.touch()
    started.get(timeout=T)
    details = info(ref.pid)
    assert details["os_pid"] == marks(tmp_path, "pid")[0]
    assert details["argv"] == argv and details["ready"] and details["started_at"] <= time.time()
    ref.stop(timeout=T)


def test_exit_before_ready_fails_the_start_with_status_and_output(tmp_path: Path) -> None:
    """A child that exits before its ready line fails the start with status and stderr."""
    ref = OsProcess.start(child_argv(tmp_path, exit=3), ready_line="READY", stderr="log")
    reason = start_error(ref)
    assert isinstance(reason, OsProcessStartError)
    assert reason.status == 3
    assert "bad config: no such option" in reason.output
    assert "exit status 3 before it was ready" in str(reason)


def test_not_ready_in_time_fails_the_start_and_kills_the_process(tmp_path: Path) -> None:
    """A child silent past start_timeout is killed and the start fails with status None."""
    ref = OsProcess.start(child_argv(tmp_path, ready="no"), ready_line="READY", start_timeout=0.5)
    reason = start_error(ref)
    assert isinstance(reason, OsProcessStartError) and reason.status is None
    assert "not ready within 0.5 s" in str(reason)
    (pid,) = marks(tmp_path, "pid")
    wait_until(lambda: reaped(pid), T, "the child reaped")


def test_missing_executable_fails_the_start() -> None:
    """An argv[0] that is not an executable fails the start with FileNotFoundError."""
    ref = OsProcess.start(["no-such-program-for-osproc-tests"])
    assert isinstance(start_error(ref), FileNotFoundError)


def test_bad_arguments_are_refused_in_the_caller() -> None:
    """Invalid argv, timeouts or output modes raise at once in the caller."""
    with pytest.raises(TypeError, match="argv"):
        OsProcess.start("python")
    with pytest.raises(ValueError, match="term_timeout"):
        OsProcess.start(["true"], term_timeout=0)
    with pytest.raises(ValueError, match="stdout must be one of"):
        OsProcess.start(["true"], stdout="pipe")


# -- dying with the process ------------------------------------------------------------------


def test_kill_9_of_the_process_kills_the_actor_with_its_status(
    tmp_path: Path, probe: ProbeHandle, caplog: pytest.LogCaptureFixture
) -> None:
    """kill -9 of the OS process: the actor dies with ("exit_status", -9), logged."""
    caplog.set_level(logging.INFO, logger="otp.osproc")
    ref = OsProcess.start(child_argv(tmp_path), ready_line="READY", name="victim")
    otp.started(ref).get(timeout=T)
    os_pid = info(ref.pid)["os_pid"]
    mref = probe.monitor(ref.pid)
    os.kill(os_pid, signal.SIGKILL)
    assert probe.down(mref, T) == ("exit_status", -9)
    (event,) = events(caplog, "os_process_exited")
    assert (event.os_process, event.os_pid, event.status) == ("victim", os_pid, -9)
    assert event.levelno == logging.WARNING


def test_exit_on_its_own_without_ready_line_kills_the_actor(
    tmp_path: Path, probe: ProbeHandle
) -> None:
    """Without a ready line the start is the spawn; a later exit is the actor's death."""
    ref = OsProcess.start(child_argv(tmp_path, exit=5), stderr="null")
    mref = probe.monitor(ref.pid)
    assert probe.down(mref, T) == ("exit_status", 5)


def test_supervisor_replaces_killed_processes_until_its_intensity(
    tmp_path: Path, probe: ProbeHandle
) -> None:
    """Each kill -9 brings a new OS process; one kill too many and the supervisor gives up."""
    spec = os_process_spec("w", child_argv(tmp_path), ready_line="READY")
    sup = Supervisor.start("one_for_one", 2, 60, [spec])
    otp.started(sup).get(timeout=T)
    sup_down = probe.monitor(sup.pid)
    actor = only_child(sup)
    os_pids = [info(actor)["os_pid"]]
    for _ in range(2):
        os.kill(os_pids[-1], signal.SIGKILL)
        actor = restarted(sup, actor)
        os_pids.append(info(actor)["os_pid"])
        assert os_pids[-1] != os_pids[-2]
        assert running(os_pids[-1]) and not running(os_pids[-2])
    os.kill(os_pids[-1], signal.SIGKILL)
    assert probe.down(sup_down, T) == "shutdown"
    assert sorted(marks(tmp_path, "pid")) == sorted(os_pids)
    wait_until(lambda: not any(running(p) for p in os_pids), T, "no child left")


# -- stopping --------------------------------------------------------------------------------


def test_supervisor_shutdown_stops_the_process_with_sigterm(
    tmp_path: Path, probe: ProbeHandle
) -> None:
    """The supervisor's shutdown reaches the child as SIGTERM; it is reaped before the
    actor dies with reason shutdown."""
    sup = Supervisor.start("one_for_one", 1, 5, [os_process_spec("w", child_argv(tmp_path),
                                                                 ready_line="READY")])
    otp.started(sup).get(timeout=T)
    actor = only_child(sup)
    os_pid = info(actor)["os_pid"]
    mref = probe.monitor(actor)
    sup.stop(timeout=T)
    assert probe.down(mref, T) == "shutdown"
    assert marks(tmp_path, "term") == [os_pid]
    assert reaped(os_pid)


def test_stop_terminates_the_process(tmp_path: Path) -> None:
    """ref.stop() sends SIGTERM, waits for the process, and stops with reason normal."""
    ref = OsProcess.start(child_argv(tmp_path), ready_line="READY")
    otp.started(ref).get(timeout=T)
    os_pid = info(ref.pid)["os_pid"]
    ref.stop(timeout=T)
    assert ref.exit_reason == "normal"
    assert marks(tmp_path, "term") == [os_pid]
    assert reaped(os_pid)


def test_process_ignoring_sigterm_is_killed_after_term_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A child that ignores SIGTERM gets SIGKILL after term_timeout, and that is logged."""
    caplog.set_level(logging.INFO, logger="otp.osproc")
    ref = OsProcess.start(child_argv(tmp_path, term="ignore"), ready_line="READY",
                          term_timeout=0.5)
    otp.started(ref).get(timeout=T)
    os_pid = info(ref.pid)["os_pid"]
    began = time.monotonic()
    ref.stop(timeout=T)
    assert time.monotonic() - began >= 0.5
    assert reaped(os_pid)
    (event,) = events(caplog, "os_process_stopped")
    assert (event.status, event.killed) == (-9, True)


def test_killed_actor_leaves_no_process(tmp_path: Path, probe: ProbeHandle) -> None:
    """An actor killed outright (no cleanup handlers) still SIGKILLs its process."""
    ref = OsProcess.start(child_argv(tmp_path), ready_line="READY")
    otp.started(ref).get(timeout=T)
    os_pid = info(ref.pid)["os_pid"]
    mref = probe.monitor(ref.pid)
    otp.exit(ref.pid, "kill")
    assert probe.down(mref, T) == "killed"
    wait_until(lambda: reaped(os_pid), T, "the process reaped")
    assert marks(tmp_path, "term") == []


def test_abnormal_exit_signal_from_a_link_stops_the_process(
    tmp_path: Path, probe: ProbeHandle
) -> None:
    """An abnormal exit signal from a non-parent: terminate the process, die of it."""
    ref = OsProcess.start(child_argv(tmp_path), ready_line="READY")
    otp.started(ref).get(timeout=T)
    os_pid = info(ref.pid)["os_pid"]
    mref = probe.monitor(ref.pid)
    otp.exit(ref.pid, "normal")
    otp.exit(ref.pid, ("shutdown", "maintenance"))
    assert probe.down(mref, T) == ("shutdown", "maintenance")
    assert marks(tmp_path, "term") == [os_pid]


# -- the root process ------------------------------------------------------------------------


def test_kill_9_of_the_root_kills_its_os_processes(tmp_path: Path) -> None:
    """When the root OS process is SIGKILLed, the kernel kills its children (pdeathsig)."""
    root, lines = start_root(tmp_path)
    try:
        child = int(lines.next())
        assert running(child)
        assert proc_state(child) is not None and _ppid(child) == root.pid
        os.kill(root.pid, signal.SIGKILL)
        root.wait(timeout=T)
        wait_until(lambda: not running(child), T, "the orphan killed")
        assert marks(tmp_path, "term") == []
    finally:
        if root.poll() is None:
            root.kill()
            root.wait()


def test_terminal_sigint_reaches_the_root_not_its_children(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the root's process group) misses the children, which live in
    their own sessions; they get SIGTERM when the root stops its tree."""
    root, lines = start_root(tmp_path, start_new_session=True)
    try:
        child = int(lines.next())
        assert os.getpgid(child) == child != os.getpgid(root.pid)
        os.killpg(root.pid, signal.SIGINT)
        assert lines.next() == "stopped"
        assert root.wait(timeout=T) == 0
        assert marks(tmp_path, "term") == [child]
        assert marks(tmp_path, "int") == []
    finally:
        if root.poll() is None:
            root.kill()
            root.wait()


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
