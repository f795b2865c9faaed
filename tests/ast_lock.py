"""One thread at a time in ``ast.parse``: a workaround for a CPython 3.11 bug.

CPython 3.11 keeps the AST constructor's recursion counter per interpreter, not per
thread, so two threads building ASTs at once can fail with "SystemError: AST constructor
recursion depth mismatch". In this suite that happens when pytest formats a failure (or
rewrites a lazily imported module) on the main thread while a loop thread formats a
logged traceback (3.11's traceback module parses source lines to place its carets), and
the SystemError then aborts the whole run. Both go through ``ast.parse``, so one lock
around it keeps them apart. conftest.py imports this module first.
"""

from __future__ import annotations

import ast
import threading
from typing import Any

_lock = threading.RLock()
_parse = ast.parse


def _parse_one_at_a_time(*args: Any, **kwargs: Any) -> Any:
    with _lock:
        return _parse(*args, **kwargs)


ast.parse = _parse_one_at_a_time  # type: ignore[assignment]
