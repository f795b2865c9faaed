"""Structured logging (mongoose/logs.py)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import stat
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from mongoose import logs

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def capture():
    """setup() onto a StringIO; restores the root logger afterwards."""
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    handlers = []

    def start(fmt, level="debug", path=None):
        if path is None:
            handlers.append(logs.setup(level, fmt, stream=stream))
        else:
            handlers.append(logs.setup(level, fmt, path=path))
        return stream

    yield start
    for handler in handlers:
        root.removeHandler(handler)
        handler.close()
    logs._installed = None
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_line_has_fixed_and_extra_fields(capture):
    """A JSON line carries time, level, logger, what, msg and every extra field."""
    stream = capture("json")
    logging.getLogger("mongoose.c2s").info(
        "user %s logged in", "alice", extra={"what": "c2s_login", "jid": "alice@localhost", "n": 3}
    )
    [line] = lines(stream)
    event = json.loads(line)
    assert list(event)[:5] == ["time", "level", "logger", "what", "msg"]
    assert event["level"] == "info"
    assert event["logger"] == "mongoose.c2s"
    assert event["what"] == "c2s_login"
    assert event["msg"] == "user alice logged in"
    assert event["jid"] == "alice@localhost"
    assert event["n"] == 3
    assert "traceback" not in event


def test_json_time_is_iso8601_utc(capture):
    """`time` is ISO 8601 in UTC."""
    stream = capture("json")
    logging.getLogger("t").info("x", extra={"what": "x"})
    stamp = json.loads(lines(stream)[0])["time"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
    assert datetime.fromisoformat(stamp).utcoffset().total_seconds() == 0


def test_json_non_json_values_use_repr(capture):
    """Values JSON cannot hold are written as their repr, and the line stays valid JSON."""
    stream = capture("json")

    class Pid:
        def __repr__(self):
            return "<0.42.0>"

    logging.getLogger("t").info(
        "x", extra={"what": "x", "pid": Pid(), "nan": float("nan"), "keys": {(1, 2): "a"}}
    )
    event = json.loads(lines(stream)[0])
    assert event["pid"] == "<0.42.0>"
    assert event["nan"] == "nan"
    assert event["keys"] == "{(1, 2): 'a'}"


def test_json_extra_cannot_overwrite_fixed_keys(capture):
    """An extra field named like a fixed key is written with an extra_ prefix."""
    stream = capture("json")
    logging.getLogger("t").info("x", extra={"what": "x", "level": "mine"})
    event = json.loads(lines(stream)[0])
    assert event["level"] == "info"
    assert event["extra_level"] == "mine"


def test_json_traceback_present_with_exc_info(capture):
    """A record with exc_info carries the formatted traceback, still on one line."""
    stream = capture("json")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("t").exception("failed", extra={"what": "thing_failed"})
    [line] = lines(stream)
    event = json.loads(line)
    assert event["level"] == "error"
    assert event["traceback"].startswith("Traceback (most recent call last):")
    assert "ValueError: boom" in event["traceback"]


def test_missing_what_is_null(capture):
    """A record without `what` (from a library) still gets the key, as null."""
    stream = capture("json")
    logging.getLogger("lib").warning("plain")
    assert json.loads(lines(stream)[0])["what"] is None


def test_notice_level(capture):
    """`notice` sits between info and warning and is named in output."""
    stream = capture("json", level="notice")
    logger = logging.getLogger("t")
    logger.info("hidden", extra={"what": "hidden"})
    logger.log(logs.NOTICE, "shown", extra={"what": "shown"})
    [line] = lines(stream)
    assert json.loads(line)["level"] == "notice"


def test_text_format(capture):
    """Text lines read `time level what key=value ... msg`, quoting values with spaces."""
    stream = capture("text")
    logging.getLogger("t").warning(
        "auth failed", extra={"what": "auth_failed", "user": "bob", "reason": "bad password"}
    )
    [line] = lines(stream)
    stamp, rest = line.split(" ", 1)
    assert stamp.endswith("Z")
    assert rest == 'warning auth_failed user=bob reason="bad password" auth failed'


def test_text_format_traceback_follows(capture):
    """In text format the traceback follows the event line."""
    stream = capture("text")
    try:
        raise KeyError("k")
    except KeyError:
        logging.getLogger("t").error("oops", exc_info=True, extra={"what": "oops"})
    first, *rest = lines(stream)
    assert first.endswith(" error oops oops")
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "KeyError: 'k'"


def test_setup_replaces_its_own_handler(capture):
    """Calling setup() again replaces the handler it installed instead of adding one."""
    stream = capture("json")
    capture("text")
    logging.getLogger("t").info("once", extra={"what": "once"})
    assert len(lines(stream)) == 1
    assert not lines(stream)[0].startswith("{")


def test_setup_rejects_unknown_level_and_format():
    """Unknown levels and formats are ValueErrors, not silently ignored."""
    with pytest.raises(ValueError, match="level"):
        logs.setup("loud")
    with pytest.raises(ValueError, match="format"):
        logs.setup("info", "xml")  # type: ignore[arg-type]


# -- log files -----------------------------------------------------------------------------


def test_file_gets_json_then_text_lines_appended(capture, tmp_path):
    """With a path, records are appended to the file as lines; a second setup() (here in
    text format) appends after what is there and closes the first file descriptor."""
    path = tmp_path / "node.log"
    path.write_text("earlier line\n")
    first = capture("json", path=path)
    logging.getLogger("t").info("one", extra={"what": "first", "n": 1})
    handler = logs._installed
    capture("text", path=path)
    assert handler.fd is None
    logging.getLogger("t").warning("two", extra={"what": "second", "reason": "a b"})
    old, json_line, text_line = path.read_text().splitlines()
    assert old == "earlier line"
    event = json.loads(json_line)
    assert (event["what"], event["n"], event["msg"]) == ("first", 1, "one")
    assert text_line.split(" ", 1)[1] == 'warning second reason="a b" two'
    assert first.getvalue() == ""  # nothing went to the stream


def test_file_traceback_stays_in_the_one_write(capture, tmp_path):
    """A text record with a traceback is one write of several lines, ending in a newline."""
    path = tmp_path / "node.log"
    capture("text", path=path)
    try:
        raise KeyError("k")
    except KeyError:
        logging.getLogger("t").error("oops", exc_info=True, extra={"what": "oops"})
    text = path.read_text()
    assert text.endswith("KeyError: 'k'\n")
    assert text.splitlines()[1] == "Traceback (most recent call last):"


def test_file_parent_directory_is_created_private(capture, tmp_path):
    """Missing parent directories of the log file are created, mode 0700."""
    path = tmp_path / "logs" / "deeper" / "node.log"
    capture("json", path=path)
    logging.getLogger("t").info("x", extra={"what": "x"})
    assert json.loads(path.read_text())["what"] == "x"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_file_that_cannot_be_opened_names_path_and_reason(tmp_path):
    """An unusable path is a LogFileError naming it and why; the old handler stays."""
    installed = logs._installed
    with pytest.raises(logs.LogFileError) as info:
        logs.setup("info", "json", path=tmp_path)  # a directory
    assert str(info.value) == f"cannot open the log file {tmp_path}: Is a directory"
    assert info.value.path == str(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(logs.LogFileError, match=f"^cannot open the log file {blocker}/x/n.log: "
                       "Not a directory$"):
        logs.setup("info", "json", path=blocker / "x" / "n.log")
    assert logs._installed is installed


def test_stream_and_path_are_exclusive(tmp_path):
    """setup() writes to a stream or to a file, not both."""
    with pytest.raises(ValueError, match="not both"):
        logs.setup("info", "json", stream=io.StringIO(), path=tmp_path / "n.log")


APPENDER = """
import logging, sys
from mongoose import logs

logs.setup("info", "json", path=sys.argv[1])
name, count = sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
log = logging.getLogger(name)
pad = name[-1] * 5120
for seq in range(count):
    log.info("record", extra={"what": "append_test", "proc": name, "seq": seq, "pad": pad})
"""


@pytest.mark.timeout(120)
def test_processes_appending_to_one_file_leave_whole_lines(tmp_path):
    """Two OS processes logging 2,000 records of over 5 KiB each to the same file at once
    leave only whole lines: every record once, intact, in each process's order."""
    path = tmp_path / "shared.log"
    count = 2000
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", APPENDER, str(path), name, str(count)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True,
        )
        for name in ("proc-a", "proc-b")
    ]
    try:
        for proc in procs:  # both have the file open before either writes
            assert proc.stdout.readline() == "ready\n"
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.close()
        for proc in procs:
            assert proc.wait(timeout=100) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
    data = path.read_bytes()
    assert data.endswith(b"\n")
    seen: dict[str, list[int]] = {"proc-a": [], "proc-b": []}
    for number, line in enumerate(data.split(b"\n")[:-1]):
        try:
            event = json.loads(line)
        except ValueError:
            pytest.fail(f"line {number} is not a whole record: {line[:100]!r}...")
        assert event["pad"] == event["proc"][-1] * 5120
        seen[event["proc"]].append(event["seq"])
    assert seen == {"proc-a": list(range(count)), "proc-b": list(range(count))}
