"""What a model logs as a warning while it answers one request (a question cut to the model's length, choices it
cannot score, a question a yes/no model cannot answer), collected so the HTTP reply can say it too: the CLI shows
these on stderr, and an API client sees no server log."""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable


class _ThreadWarnings(logging.Handler):
    """Keeps the WARNING-or-worse messages logged from one thread (the model thread runs one call at a time)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread, self.messages = threading.get_ident(), []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


def with_warnings(fn: Callable, *args) -> tuple[Any, list[str]]:
    """fn(*args) and the warnings polymodal logged while it ran on this thread."""
    handler, logger = _ThreadWarnings(), logging.getLogger("polymodal")
    logger.addHandler(handler)
    try:
        return fn(*args), handler.messages
    finally:
        logger.removeHandler(handler)
