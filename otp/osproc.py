"""OsProcess: one operating-system process, owned by an actor, under an OTP supervisor.

The node's root process runs its worker processes as children of an ordinary
:class:`otp.supervisor.Supervisor`. Each child is an :class:`OsProcess` actor that starts
one OS process, dies when that process dies, and stops the process when it is stopped.
So restart types, restart intensity and start/stop order are the supervisor's, exactly as
for any other child; this module only translates between an OS process and an actor.

Starting
    ``on_start`` spawns the process on the actor's loop (``loop.subprocess_exec``, the
    call under ``asyncio.create_subprocess_exec``, with a protocol of our own so that
    output and exit come as callbacks and the transport is ours to close). With
    ``ready_line``, ``on_start`` then waits until the process prints a line containing
    it on stdout, at most ``start_timeout`` seconds; so :func:`otp.started` means "the
    process is up and ready", and a supervisor starts its next child only then. If the
    process exits first, or the time runs out (the process is then killed), the start
    fails with an :class:`OsProcessStartError` naming the status and the last lines of
    output we read. A missing executable fails the start with ``FileNotFoundError``.

Output
    ``stdout``/``stderr``: ``"inherit"`` (default: the child writes to ours),
    ``"log"`` (each line is logged, ``what=os_process_output``) or ``"null"``. To see
    the ready line stdout must be read, so with ``ready_line`` an inherited stdout is a
    pipe whose lines (except the ready line) are copied to our stderr, and ``"null"``
    discards them. Stdin is ``/dev/null``: a worker does not read the terminal.

Dying with the process's exit status
    The protocol's ``process_exited`` callback runs on the loop but outside the actor's
    handlers, and an exception there would kill nothing. It sends the actor a private
    message instead; its handler logs ``what=os_process_exited`` (os_process: the name, os pid,
    status) and stops the actor with reason ``("exit_status", returncode)`` -- the
    ``waitpid`` convention: a negative number is the signal that killed it. Stopping
    from a handler (not ``otp.exit``, which a trapping actor would only receive as a
    message) runs ``on_stop`` and tells links and monitors, so the supervisor gets the
    reason and restarts the child with a new process. An exit on its own is always
    abnormal, status 0 included: even a ``transient`` child is restarted.

Stopping
    ``OsProcess`` traps exits only so that the parent's exit signal arrives as a
    message that can be handled by an async handler (``on_stop`` is synchronous and
    cannot wait for a process). On the parent's ``Exit`` (a supervisor's
    ``"shutdown"``), on ``ref.stop()``, and on any other abnormal exit signal (as a
    non-trapping actor would die of it): SIGTERM, wait up to ``term_timeout`` seconds
    (default 5), then SIGKILL; wait for the process to be reaped; then stop with the
    signal's reason (``"normal"`` for ``stop()``). ``term_timeout`` must be below the
    child spec's ``shutdown`` time, or the supervisor's ``kill`` comes first;
    :func:`os_process_spec` makes a spec with ``shutdown`` = ``term_timeout`` + 2 s.
    If the actor dies any other way (``kill``, a crash), ``on_stop``/``on_failure`` and,
    as the last word, the end of the actor's life (``_terminate``, which runs for
    every death) SIGKILL the process if it still runs. The event loop reaps every
    child when it exits, whether the actor is alive or not: no zombies.

Process group
    Each process is started in a new session (``setsid``), hence its own process
    group. A terminal's Ctrl-C sends SIGINT to its foreground process group; the root
    must decide in which order its children stop, so they must not get that SIGINT
    too. Signals from this module go to the whole group (``killpg``), so helpers the
    child forked without leaving its group are stopped with it; they are sent only
    while the process has not been reaped, so the group id cannot have been reused.

No orphans when the root is killed (Linux)
    A process killed with SIGKILL runs no cleanup, so its children would live on.
    Linux's ``PR_SET_PDEATHSIG`` makes the kernel send a signal to a process when its
    parent dies; it must be set in the child, between fork and exec. ``preexec_fn``
    could do it, but it runs Python code in the child of a multithreaded parent (the
    loop, the blocking pool), where a lock held by another thread at fork time
    deadlocks it. So the child is started through a tiny wrapper instead: ``python -I
    -S -c`` code that calls ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, checks that its
    parent is still the one that started it (it could have died before the prctl; then
    the wrapper kills itself), and ``exec``\\ s the real command, which keeps the pid
    and the death signal. The cost is one interpreter start (about 20 ms) per spawn.
    Caveat: "parent" means the thread that forked, i.e. the scheduler's loop thread,
    which lives as long as the process. On other systems there is no wrapper and no
    such guarantee.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Hashable, Sequence
from typing import Any, NamedTuple

from pykka import ActorDeadError
from pykka.messages import _ActorStop

from otp.actor import Exit, LoopActor
from otp.pid import Pid
from otp.supervisor import ChildSpec

__all__ = [
    "DEFAULT_START_TIMEOUT",
    "DEFAULT_TERM_TIMEOUT",
    "OUTPUT_MODES",
    "OsProcess",
    "OsProcessStartError",
    "describe_status",
    "os_process_spec",
]

logger = logging.getLogger("otp.osproc")

DEFAULT_START_TIMEOUT = 30.0
DEFAULT_TERM_TIMEOUT = 5.0
SHUTDOWN_MARGIN = 2.0
"""Seconds :func:`os_process_spec` adds to ``term_timeout`` for the spec's shutdown."""

OUTPUT_MODES = ("inherit", "log", "null")

_KILL_WAIT = 5.0  # seconds to wait for the reaping of a SIGKILLed process
_DRAIN_WAIT = 1.0  # seconds to wait for the last output of a process that exited
_TAIL_LINES = 20
_MAX_LINE = 65536  # a longer run of bytes without a newline is cut into lines

_LINUX = sys.platform.startswith("linux")
_PR_SET_PDEATHSIG = 1

# Runs as `python -I -S -c _WRAPPER <parent pid> <argv...>`; see the module docstring.
_WRAPPER = f"""\
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl({_PR_SET_PDEATHSIG}, signal.SIGKILL, 0, 0, 0) != 0:
    sys.stderr.write("osproc: prctl(PR_SET_PDEATHSIG) failed: %s\\n"
                     % os.strerror(ctypes.get_errno()))
    os._exit(126)
if os.getppid() != int(sys.argv[1]):
    os.kill(os.getpid(), signal.SIGKILL)
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as error:
    sys.stderr.write("osproc: cannot run %r: %s\\n" % (sys.argv[2], error))
    os._exit(127)
"""


class OsProcessStartError(RuntimeError):
    """The OS process did not become ready.

    ``status`` is its exit status if it exited (negative: killed by that signal), None
    if it was still running when ``start_timeout`` ran out. ``output`` holds the last
    lines read from its piped stdout/stderr.
    """

    def __init__(self, name: str, status: int | None, output: Sequence[str], why: str) -> None:
        message = f"{name}: {why}"
        if output:
            message += "; last output:\n  " + "\n  ".join(output)
        super().__init__(message)
        self.name = name
        self.status = status
        self.output = list(output)


def describe_status(status: int) -> str:
    """``exit status 3`` or ``killed by SIGKILL (-9)`` for a returncode."""
    if status >= 0:
        return f"exit status {status}"
    try:
        name = signal.Signals(-status).name
    except ValueError:
        name = f"signal {-status}"
    return f"killed by {name} ({status})"


class _Exited(NamedTuple):
    """The OS process exited on its own; sent by the protocol to its actor."""

    status: int


class _Protocol(asyncio.SubprocessProtocol):
    """Cuts piped output into lines and reports them and the exit to the owner."""

    def __init__(self, owner: OsProcess) -> None:
        self._owner = owner
        self._partial: dict[int, bytes] = {}
        self.transport: asyncio.SubprocessTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._owner._spawned(self.transport)  # type: ignore[arg-type]

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        if isinstance(data, str):  # pragma: no cover - we never ask for text mode
            data = data.encode()
        buffer = self._partial.get(fd, b"") + data
        *lines, rest = buffer.split(b"\n")
        while len(rest) > _MAX_LINE:
            lines.append(rest[:_MAX_LINE])
            rest = rest[_MAX_LINE:]
        self._partial[fd] = rest
        for line in lines:
            self._owner._on_line(fd, line)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        rest = self._partial.pop(fd, b"")
        if rest:
            self._owner._on_line(fd, rest)

    def process_exited(self) -> None:
        assert self.transport is not None
        status = self.transport.get_returncode()
        self._owner._on_exit(-1 if status is None else status)

    def connection_lost(self, exc: Exception | None) -> None:
        # Exited and every pipe closed: nothing more will come. Closing releases the
        # handle (a transport left open warns when collected).
        if self.transport is not None:
            self.transport.close()
        self._owner._on_finished()


class OsProcess(LoopActor):
    """An OS process as a supervised actor; see the module docstring.

    Args:
        argv: the command and its arguments; ``argv[0]`` is looked up in ``PATH``.
        env: the child's whole environment (as ``subprocess``'s ``env``); None: ours.
        cwd: the child's working directory; None: ours.
        name: for logs and errors; default: the basename of ``argv[0]``.
        ready_line: if given, the start waits for a stdout line containing it.
        start_timeout: seconds to wait for ``ready_line``.
        term_timeout: seconds between SIGTERM and SIGKILL when stopping.
        stdout, stderr: ``"inherit"``, ``"log"`` or ``"null"`` (see Output).
    """

    trap_exit = True

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        name: str = "",
        ready_line: str | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        term_timeout: float = DEFAULT_TERM_TIMEOUT,
        stdout: str = "inherit",
        stderr: str = "inherit",
    ) -> None:
        super().__init__()
        # Checked here, so that a bad argument fails in the caller, not on the loop.
        if isinstance(argv, str | bytes) or not argv or not all(isinstance(a, str) for a in argv):
            raise TypeError(f"argv must be a non-empty list of strings, got {argv!r}")
        for what, value in (("start_timeout", start_timeout), ("term_timeout", term_timeout)):
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{what} must be a number of seconds > 0, got {value!r}")
        for what, mode in (("stdout", stdout), ("stderr", stderr)):
            if mode not in OUTPUT_MODES:
                raise ValueError(
                    f"{what} must be one of {', '.join(OUTPUT_MODES)}, got {mode!r}"
                )
        if ready_line is not None and (not isinstance(ready_line, str) or not ready_line):
            raise ValueError(f"ready_line must be a non-empty string, got {ready_line!r}")
        self.argv: list[str] = list(argv)
        self.env = dict(env) if env is not None else None
        self.cwd = os.fspath(cwd) if cwd is not None else None
        self.name = name or os.path.basename(self.argv[0])
        self.ready_line = ready_line
        self.start_timeout = float(start_timeout)
        self.term_timeout = float(term_timeout)
        self._modes = {1: stdout, 2: stderr}
        self.os_pid: int | None = None
        self.started_at: float | None = None  # time.time() of the spawn
        self.returncode: int | None = None
        self._transport: asyncio.SubprocessTransport | None = None
        self._tail: deque[str] = deque(maxlen=_TAIL_LINES)
        # Made on the loop in on_start (the constructor may run on another thread).
        self._ready_fut: asyncio.Future[None] | None = None
        self._exit_fut: asyncio.Future[int] | None = None
        self._done_fut: asyncio.Future[None] | None = None
        self._is_up = False  # on_start succeeded: an exit from now on is the actor's death
        self._terminating = False  # an orderly stop is under way: the exit is expected

    # -- starting --------------------------------------------------------------------------

    async def on_start(self) -> None:
        loop = asyncio.get_running_loop()
        self._ready_fut = loop.create_future()
        self._exit_fut = loop.create_future()
        self._done_fut = loop.create_future()
        self._check_executable()
        argv = self.argv
        if _LINUX:
            argv = [sys.executable, "-I", "-S", "-c", _WRAPPER, str(os.getpid()), *argv]
        # The protocol hands over the transport as soon as the process exists (see
        # _spawned): a kill while we await here must find the process to kill it.
        await loop.subprocess_exec(
            lambda: _Protocol(self),
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=self._stdio(1),
            stderr=self._stdio(2),
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        try:
            if self.ready_line is not None:
                await self._await_ready()
        except BaseException:  # a failed start, or a kill while waiting
            self._kill_leftover()
            raise
        self._is_up = True
        if self.returncode is not None:  # exited before we were up: die of it now
            self.actor_ref.tell(_Exited(self.returncode))
            return
        logger.info(
            "os process %s started, os pid %s",
            self.name,
            self.os_pid,
            extra={
                "what": "os_process_started",
                "os_process": self.name,
                "os_pid": self.os_pid,
                "argv": self.argv,
                "actor": str(self.pid),
            },
        )

    def _check_executable(self) -> None:
        program = self.argv[0]
        if os.sep in program:
            path = os.path.join(self.cwd, program) if self.cwd is not None else program
            found = os.path.isfile(path) and os.access(path, os.X_OK)
        else:
            env = self.env if self.env is not None else os.environ
            found = shutil.which(program, path=env.get("PATH", os.defpath)) is not None
        if not found:
            raise FileNotFoundError(f"{self.name}: no executable {program!r}")

    def _stdio(self, fd: int) -> int | None:
        mode = self._modes[fd]
        if mode == "log" or (fd == 1 and self.ready_line is not None):
            return subprocess.PIPE
        if mode == "null":
            return subprocess.DEVNULL
        return None  # inherit

    async def _await_ready(self) -> None:
        ready, exited = self._ready_fut, self._exit_fut
        assert ready is not None and exited is not None
        await asyncio.wait({ready, exited}, timeout=self.start_timeout,
                           return_when=asyncio.FIRST_COMPLETED)
        if exited.done():
            await self._drain()
            status = exited.result()
            raise OsProcessStartError(
                self.name, status, list(self._tail),
                f"{describe_status(status)} before it was ready",
            )
        if ready.done():
            return
        self._kill_group(signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(exited), _KILL_WAIT)
        await self._drain()
        raise OsProcessStartError(
            self.name, None, list(self._tail),
            f"not ready within {self.start_timeout:g} s "
            f"(no line containing {self.ready_line!r} on stdout); killed it",
        )

    async def _drain(self) -> None:
        """Wait a little for the output of an exited process to be read to its end."""
        assert self._done_fut is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._done_fut), _DRAIN_WAIT)

    # -- callbacks from the protocol (on the loop, outside the actor's handlers) -----------

    def _spawned(self, transport: asyncio.SubprocessTransport) -> None:
        self._transport = transport
        self.os_pid = transport.get_pid()
        self.started_at = time.time()

    def _on_line(self, fd: int, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        ready = self._ready_fut
        if (
            fd == 1
            and ready is not None
            and not ready.done()
            and self.ready_line is not None
            and self.ready_line in text
        ):
            ready.set_result(None)
            return
        self._tail.append(text)
        mode = self._modes[fd]
        if mode == "log":
            stream = "stdout" if fd == 1 else "stderr"
            logger.info(
                "%s %s: %s",
                self.name,
                stream,
                text,
                extra={
                    "what": "os_process_output",
                    "os_process": self.name,
                    "os_pid": self.os_pid,
                    "stream": stream,
                    "line": text,
                },
            )
        elif mode == "inherit":  # stdout piped only to see the ready line
            with contextlib.suppress(Exception):
                sys.stderr.write(text + "\n")
                sys.stderr.flush()

    def _on_exit(self, status: int) -> None:
        self.returncode = status
        if self._exit_fut is not None and not self._exit_fut.done():
            self._exit_fut.set_result(status)
        if self._is_up and not self._terminating and not self.actor_stopped.is_set():
            with contextlib.suppress(ActorDeadError):
                self.actor_ref.tell(_Exited(status))

    def _on_finished(self) -> None:
        if self._done_fut is not None and not self._done_fut.done():
            self._done_fut.set_result(None)

    # -- exits and stops -------------------------------------------------------------------

    def _handle_receive(self, message: Any) -> Any:
        cls = message.__class__
        if cls is _Exited:
            return self._exited_alone(message.status)
        if cls is Exit and message.pid is not None and message.pid == self.parent:
            return self._shut_down(message.reason)
        if cls is _ActorStop:
            return self._shut_down("normal")
        return super()._handle_receive(message)

    def handle_exit(self, pid: Pid | None, reason: Any) -> Any:
        """An exit signal from another than the parent: die of it unless it is normal,
        as a non-trapping actor would (we trap only to stop the process first)."""
        if reason == "normal":
            return None
        return self._shut_down(reason)

    def _exited_alone(self, status: int) -> None:
        logger.warning(
            "os process %s (os pid %s) exited: %s",
            self.name,
            self.os_pid,
            describe_status(status),
            extra={
                "what": "os_process_exited",
                "os_process": self.name,
                "os_pid": self.os_pid,
                "status": status,
                "actor": str(self.pid),
                "supervisor": str(self.parent) if self.parent is not None else None,
            },
        )
        if self._exit_reason is None:
            self._exit_reason = ("exit_status", status)
        self._stop()

    async def _shut_down(self, reason: Any) -> None:
        """Terminate the process (SIGTERM, then SIGKILL), then stop with ``reason``."""
        self._terminating = True
        await self._terminate_process()
        if self._exit_reason is None:
            self._exit_reason = reason
        self._stop()

    async def _terminate_process(self) -> None:
        exited = self._exit_fut
        if exited is None or exited.done() or self._transport is None:
            return
        self._kill_group(signal.SIGTERM)
        killed = False
        try:
            await asyncio.wait_for(asyncio.shield(exited), self.term_timeout)
        except TimeoutError:
            killed = True
            self._kill_group(signal.SIGKILL)
            try:
                await asyncio.wait_for(asyncio.shield(exited), _KILL_WAIT)
            except TimeoutError:
                logger.error(
                    "os process %s (os pid %s) survived SIGKILL for %s s",
                    self.name,
                    self.os_pid,
                    _KILL_WAIT,
                    extra={"what": "os_process_unkillable", "os_process": self.name,
                           "os_pid": self.os_pid},
                )
                return
        status = exited.result()
        log = logger.warning if killed else logger.info
        log(
            "os process %s (os pid %s) stopped: %s",
            self.name,
            self.os_pid,
            describe_status(status),
            extra={
                "what": "os_process_stopped",
                "os_process": self.name,
                "os_pid": self.os_pid,
                "status": status,
                "killed": killed,
                "term_timeout": self.term_timeout,
            },
        )

    def _kill_group(self, signum: int) -> None:
        """Send ``signum`` to the process's group, unless the process has been reaped."""
        transport = self._transport
        if transport is None or transport.get_returncode() is not None:
            return
        if self.returncode is not None or self.os_pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.os_pid, signum)

    def _kill_leftover(self) -> None:
        """SIGKILL the process if it still runs (cleanup of an abnormal end)."""
        if self._transport is not None and self.returncode is None:
            self._kill_group(signal.SIGKILL)

    def on_stop(self) -> None:
        self._kill_leftover()

    def on_failure(self, *_exc_info: Any) -> None:
        self._kill_leftover()

    def _terminate(self) -> None:
        # Every death ends here, a kill included: the last chance not to leave the
        # process behind. (A subclass's on_stop may forget to call ours.)
        super()._terminate()
        self._kill_leftover()

    # -- introspection ---------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """:meth:`LoopActor.info` plus the OS process: os pid, argv, start time, status."""
        data = super().info()
        data.update(
            {
                "name": self.name,
                "os_pid": self.os_pid,
                "argv": list(self.argv),
                "started_at": self.started_at,
                "ready": self._is_up,
                "returncode": self.returncode,
            }
        )
        return data


def os_process_spec(
    id: Hashable,
    argv: Sequence[str],
    *,
    restart: str = "permanent",
    term_timeout: float = DEFAULT_TERM_TIMEOUT,
    **kwargs: Any,
) -> ChildSpec:
    """A worker child spec for ``OsProcess(argv, **kwargs)``.

    Its ``shutdown`` is ``term_timeout`` plus :data:`SHUTDOWN_MARGIN`, so the process
    gets its SIGTERM, then its SIGKILL, before the supervisor resorts to a ``kill``.
    ``name`` defaults to ``str(id)``.
    """
    kwargs.setdefault("name", str(id))
    start = functools.partial(OsProcess.start, list(argv), term_timeout=term_timeout, **kwargs)
    shutdown = int((term_timeout + SHUTDOWN_MARGIN) * 1000)
    return ChildSpec(id, start, restart=restart, shutdown=shutdown)
