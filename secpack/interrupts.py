"""Holding SIGINT and SIGTERM while a finished output is put in place.

The command line turns both signals into KeyboardInterrupt, which unwinds through
every cleanup and reports ``interrupted``. That is right while the work is under
way: the output's temporary is removed and nothing is left. Once the output has
been renamed into place it is wrong: the work is done, and "interrupted" (with an
audit record that says the verb failed) would tell the user otherwise. So an
output's commit holds these signals from just before its rename (:func:`held`)
to the end of its verb (:func:`verb`), which finishes as it would have: its audit
record says what it did. Then what came meanwhile is

- delivered, in a library (``verb(deliver=True)``, around each audited verb), to
  the handler that was there before: the caller sees its interrupt, once the
  output is whole and recorded;
- dropped, under the command line (the outermost ``verb(deliver=False)``), which
  reports the verb's own outcome and exits with its status: the process is about
  to end anyway, and nothing is left to stop.

Only the main thread can change signal handlers; elsewhere nothing is held.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["held", "verb"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
    def __init__(self) -> None:
        self.depth = 0  # held() blocks entered and not yet left, on the main thread
        # The verb() blocks entered, innermost last: whether each delivers. Under
        # one, a hold once begun lasts until the outermost has ended.
        self.verbs: list[bool] = []


_state = _State()
_saved: dict[int, Any] = {}  # the handlers held() replaced, to put back
_pending: list[int] = []  # signals that came while held


def _note(signum: int, frame: FrameType | None) -> None:
    _pending.append(signum)


def _install() -> None:
    for signum in _SIGNALS:
        previous = signal.getsignal(signum)
        # An ignored signal stays ignored; None is a handler set outside Python,
        # which cannot be put back once replaced, so it is left alone.
        if previous in (signal.SIG_IGN, None):
            continue
        _saved[signum] = previous  # before the swap: an interrupt between the two
        try:  # finds the handler to put back recorded
            signal.signal(signum, _note)
        except ValueError:  # not the main interpreter: its handlers are not ours
            del _saved[signum]


def _restore(deliver: bool) -> None:
    for signum, handler in list(_saved.items()):
        signal.signal(signum, handler)
        del _saved[signum]
    came = list(dict.fromkeys(_pending))  # each signal once, in the order they came
    _pending.clear()
    if deliver:
        for signum in came:
            # To the handler just put back: Python's raises KeyboardInterrupt here;
            # SIG_DFL for SIGTERM (a library's host that set none) ends the process.
            signal.raise_signal(signum)


@contextmanager
def held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block has ended (see the module's note)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.depth += 1
    try:
        if _state.depth == 1 and not _saved:
            _install()
        yield
    finally:
        _state.depth -= 1
        if _state.depth == 0 and not _state.verbs:
            _restore(deliver=True)


@contextmanager
def verb(deliver: bool) -> Iterator[None]:
    """One verb: a hold begun inside it lasts until the outermost verb ends; then
    the handlers are put back, and what came while held is delivered or dropped
    as that verb says."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.verbs.append(deliver)
    try:
        yield
    finally:
        _state.verbs.pop()
        if not _state.verbs and _state.depth == 0:
            _restore(deliver=deliver)
