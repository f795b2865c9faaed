"""Structured logging on the stdlib `logging` module.

Convention
----------
A log line is an event, not a sentence. Every call names the event with a stable `what` key
and carries its data as fields, all through `extra`::

    log = logging.getLogger(__name__)
    log.info("listener started", extra={"what": "listener_started", "port": 5222})
    log.warning("auth failed", extra={"what": "auth_failed", "jid": jid, "reason": reason})
    log.error("handler crashed", exc_info=True, extra={"what": "hook_handler_crashed"})

`what` is for machines (alerts, dashboards, grep); keep it snake_case and do not change it
once released. The message is for humans and may change. Field names must not clash with
`LogRecord` attributes (`msg`, `args`, `name`, ...), which `logging` itself rejects.

Output
------
`setup(level, fmt)` installs one handler on the root logger, writing to stderr.

- `json`: one JSON object per line with `time` (ISO 8601, UTC), `level`, `logger`, `what`,
  `msg`, then every extra field; `traceback` holds the formatted exception when `exc_info` is
  given. Values JSON cannot hold are written as their `repr`. An extra field named like one of
  the fixed keys is written with an `extra_` prefix rather than overwriting it.
- `text`: `time level what key=value ... msg`, with the traceback on the following lines.
  Values containing whitespace are quoted.

Records without `what` (from libraries) get `null` in JSON and `-` in text.

Levels are MongooseIM's: debug, info, notice, warning, error, critical. `notice` is added to
`logging` as level 25, between info and warning.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any, Literal

NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")

# Names accepted by setup() and by `general.loglevel`, from most to least verbose.
LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": NOTICE,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

FORMATS = ("json", "text")

# Attributes every LogRecord has; anything else on a record came from `extra`.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_FIXED_KEYS = ("time", "level", "logger", "what", "msg", "traceback", "stack")

# The handler setup() installed, so a second call replaces it and leaves others alone
# (pytest's caplog, for one).
_installed: logging.Handler | None = None


def setup(
    level: str | int = "info",
    fmt: Literal["json", "text"] = "json",
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Send all logging at `level` and above to `stream` (stderr) in format `fmt`."""
    global _installed
    if isinstance(level, str):
        try:
            level = LEVELS[level]
        except KeyError:
            raise ValueError(f"unknown log level {level!r}") from None
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter()
    elif fmt == "text":
        formatter = TextFormatter()
    else:
        raise ValueError(f"unknown log format {fmt!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
    root.addHandler(handler)
    root.setLevel(level)
    _installed = handler
    return handler


def event_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The extra fields of `record`, without `what`, in the order they were given."""
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _RECORD_ATTRS and key != "what"
    }


def _time(record: logging.LogRecord) -> str:
    stamp = datetime.fromtimestamp(record.created, tz=UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _level(record: logging.LogRecord) -> str:
    return record.levelname.lower()


def _dumps(value: Any) -> str:
    """JSON text for `value`, falling back to the JSON string of its repr."""
    try:
        return json.dumps(value, default=repr, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError):  # non-string dict keys, NaN, cycles
        return json.dumps(repr(value), ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        fixed = {
            "time": _time(record),
            "level": _level(record),
            "logger": record.name,
            "what": getattr(record, "what", None),
            "msg": record.getMessage(),
        }
        parts = [f"{_dumps(key)}:{_dumps(value)}" for key, value in fixed.items()]
        for key, value in event_fields(record).items():
            name = f"extra_{key}" if key in _FIXED_KEYS else key
            parts.append(f"{_dumps(name)}:{_dumps(value)}")
        if record.exc_info and record.exc_info[0] is not None:
            parts.append(f'"traceback":{_dumps(self.formatException(record.exc_info))}')
        if record.stack_info:
            parts.append(f'"stack":{_dumps(self.formatStack(record.stack_info))}')
        return "{" + ",".join(parts) + "}"


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else _compact(value)
    if not text or text.startswith('"') or any(c.isspace() for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def _compact(value: Any) -> str:
    try:
        return json.dumps(value, default=repr, allow_nan=False, ensure_ascii=False,
                          separators=(",", ":"))
    except (TypeError, ValueError):
        return repr(value)


class TextFormatter(logging.Formatter):
    """`time level what key=value ... msg`, for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        words = [_time(record), _level(record), str(getattr(record, "what", None) or "-")]
        words += [f"{key}={_text_value(value)}" for key, value in event_fields(record).items()]
        words.append(record.getMessage())
        line = " ".join(words)
        if record.exc_info and record.exc_info[0] is not None:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line
