"""Plain-text tables for the shell and the ``mongoose`` command.

:func:`table` lays rows (dicts) out in columns, left-aligned text and right-aligned
numbers, with a header; long cells are cut with an ellipsis so a row fits a terminal
line. :func:`to_json` is the ``--json`` form of the same data: pids and other values
that JSON lacks become their printed form.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["cell", "table", "to_json"]

MAX_CELL = 60


def cell(value: Any) -> str:
    """A value as one table cell."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))
    if isinstance(value, list | tuple) and not hasattr(value, "_fields"):
        return ",".join(cell(v) for v in value)
    text = str(value)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """``rows`` as an aligned text table (``columns``: which keys, in order; default:
    the first row's keys). An empty list gives ``(none)``."""
    rows = list(rows)
    if not rows:
        return "(none)"
    columns = list(columns) if columns is not None else list(rows[0])
    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    numeric = [all(isinstance(row.get(c), int | float) or row.get(c) is None for row in rows)
               for c in columns]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w)
                 for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line([c.upper() for c in columns]), *(line(r) for r in cells)])


def to_json(data: Any) -> str:
    """``data`` as indented JSON; values JSON lacks (pids, refs) as their printed form."""
    return json.dumps(_plain(data), indent=2, sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "_fields"):  # Pid, Ref: named tuples printed <node.worker.id>
        return str(value)
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
