"""Tab completion for ``mongoose shell``: Python names and attributes of the shell's
namespace, offered through prompt_toolkit.

The candidates come from the standard library's :class:`rlcompleter.Completer` (what the
plain Python prompt completes: keywords, builtins, the namespace's names, and
``obj.attr`` after evaluating ``obj`` -- only a name or a dotted path, never a call, so
completing cannot send a message to the node).
"""

from __future__ import annotations

import re
import rlcompleter
from collections.abc import Iterator
from typing import Any

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

__all__ = ["NamespaceCompleter"]

_WORD = re.compile(r"[\w.]*$")


class NamespaceCompleter(Completer):
    """Completes the dotted name before the cursor against ``namespace``."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.completer = rlcompleter.Completer(namespace)

    def get_completions(self, document: Document,
                        complete_event: CompleteEvent) -> Iterator[Completion]:
        word = _WORD.search(document.text_before_cursor)
        text = word.group(0) if word else ""
        if not text:
            return
        seen = set()
        for state in range(500):
            candidate = self.completer.complete(text, state)
            if candidate is None:
                break
            if candidate not in seen:
                seen.add(candidate)
                yield Completion(candidate, start_position=-len(text))
