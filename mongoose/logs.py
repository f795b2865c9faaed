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
`setup(level, fmt, stream=None, path=None)` installs one handler on the root logger, writing
to `stream` (default stderr) or, with `path`, appending to that file (see "Log files").

- `json`: one JSON object per line with `time` (ISO 8601, UTC), `level`, `logger`, `what`,
  `msg`, then every extra field; `traceback` holds the formatted exception when `exc_info` is
  given. Values JSON cannot hold are written as their `repr`. An extra field named like one of
  the fixed keys is written with an `extra_` prefix rather than overwriting it.
- `text`: `time level what key=value ... msg`, with the traceback on the following lines.
  Values containing whitespace are quoted.

Records without `what` (from libraries) get `null` in JSON and `-` in text.

Levels are MongooseIM's: debug, info, notice, warning, error, critical. `notice` is added to
`logging` as level 25, between info and warning.

Log files
---------
The node and its worker processes all append to the same file (`general.log_file`). Each
record goes out as one `os.write` of the whole encoded line, newline included, on a file
descriptor opened with `O_APPEND` (see `AppendFileHandler` for why). The parent directory is
created (mode 0700) when missing; a file that cannot be opened is a `LogFileError` naming the
path and the reason. There is no reopen on SIGHUP: rotate with logrotate's `copytruncate`,
which works with `O_APPEND` (after the truncation every process's next write lands at the new
end of file, 0, rather than at its old offset, so no hole of NUL bytes appears; lines written
between the copy and the truncation are lost, as logrotate's manual warns).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
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


class LogFileError(Exception):
    """The log file cannot be opened; the message names the path and the reason."""

    def __init__(self, path: str | os.PathLike[str], reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot open the log file {self.path}: {reason}")


class AppendFileHandler(logging.Handler):
    """Appends each record, as one line, to a file that other processes append to as well.

    Why one `os.write` on an `O_APPEND` descriptor: with `O_APPEND` the kernel moves the
    offset to the end of the file and writes in one step, so writes from several processes
    never overwrite each other; and a write is the unit that stays whole, so the record and
    its newline must be one write. `logging.FileHandler` writes through a buffered text
    stream (TextIOWrapper over BufferedWriter): whether a record reaches the file in one
    write depends on those layers' buffer sizes and flush paths (CPython's happen to do
    it today, but nothing promises it), so this handler encodes the line and writes the
    bytes itself, and lines of two processes cannot interleave. On local file systems
    (ext4, xfs, btrfs, tmpfs) Linux serialises writes to a file, so a write of any size stays
    whole; NFS does not implement `O_APPEND` atomically and is not supported for this file.
    Threads of one process are serialised by the handler's lock (`Handler.handle`).
    """

    terminator = "\n"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            raise LogFileError(self.path, _reason(error)) from None
        try:
            self.fd: int | None = os.open(
                self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640
            )
        except (OSError, ValueError) as error:  # ValueError: a NUL in the path
            raise LogFileError(self.path, _reason(error)) from None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # backslashreplace: a lone surrogate (an undecodable file name, say) must not
            # lose the record.
            data = (self.format(record) + self.terminator).encode("utf-8", "backslashreplace")
            if self.fd is None:
                raise ValueError(f"log file {self.path} is closed")
            written = os.write(self.fd, data)
            # A regular file takes the whole buffer unless the disk fills up or a signal
            # interrupts a huge write; write what is left rather than lose it.
            while written < len(data):
                data = data[written:]
                written = os.write(self.fd, data)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        with self.lock:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
        super().close()


def _reason(error: Exception) -> str:
    return (error.strerror if isinstance(error, OSError) else None) or str(error)


def setup(
    level: str | int = "info",
    fmt: Literal["json", "text"] = "json",
    stream: IO[str] | None = None,
    path: str | os.PathLike[str] | None = None,
) -> logging.Handler:
    """Send all logging at `level` and above, in format `fmt`, to `stream` (stderr) or, with
    `path`, to the end of that file (see "Log files"). Raises ValueError for an unknown
    level or format, LogFileError when the file cannot be opened."""
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
    if stream is not None and path is not None:
        raise ValueError("give a stream or a path, not both")
    handler: logging.Handler
    if path is not None:
        handler = AppendFileHandler(path)
    else:
        handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
        _installed.close()  # a file's descriptor; a StreamHandler leaves its stream open
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
