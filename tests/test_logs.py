"""Structured logging (mongoose/logs.py)."""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import datetime

import pytest

from mongoose import logs


@pytest.fixture
def capture():
    """setup() onto a StringIO; restores the root logger afterwards."""
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    handlers = []

    def start(fmt, level="debug"):
        handlers.append(logs.setup(level, fmt, stream=stream))
        return stream

    yield start
    for handler in handlers:
        root.removeHandler(handler)
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
