"""Holding SIGINT and SIGTERM while a finished output is put in place.

The command line turns both signals into KeyboardInterrupt, which unwinds through
every cleanup and reports ``interrupted``. That is right while the work is under
way: the output's temporary is removed and nothing is left. Once the output has
been renamed into place it is wrong: the work is done, and "interrupted" (with an
audit record that says the verb failed) would tell the user otherwise. So an
output's commit holds these signals from just before its rename (:func:`held`)
to the end of its verb (:func:`verb`), which finishes as it would have: its audit
record says what it did. Then what came meanwhile is

- given, in a library (``verb(deliver=True)``, around each audited verb), to the
  handler that was there before, called once per signal: the caller sees its
  interrupt once the output is whole and recorded (a host that also watches a
  wakeup fd, as asyncio does, was told at once and is not told twice);
- dropped, under the console script (the outermost ``verb(deliver=False)`` after
  :func:`hold_to_exit`), which reports the verb's own outcome and exits with its
  status; the hold then lasts until the process exits, since only the report and
  the exit are left.

A second signal while one is held is not held: the user insists (a verb that
hangs after its commit, on a log another process keeps locked, can still be
stopped with a second Ctrl-C, or by a supervisor's second SIGTERM). It waits
only for a firm hold, the few milliseconds in which an audit record and its
head are written, so that a record is never left without what it records; and
after the console script's verb, when only the exit is left.

Only the main thread can change signal handlers; elsewhere nothing is held.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["held", "hold_to_exit", "verb"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
    def __init__(self) -> None:
        self.depth = 0  # held() blocks entered and not yet left, on the main thread
        # The verb() blocks entered, innermost last: whether each delivers. Under
        # one, a hold once begun lasts until the outermost has ended.
        self.verbs: list[bool] = []
        self.to_exit = False  # the console script: hold from a verb's end to the exit
        self.firm = 0  # held(firm=True) blocks entered: not even a second signal lands
        self.releasing = False  # _release under way (a signal then is only noted)


_state = _State()
_saved: dict[int, Any] = {}  # the handlers _install replaced, to put back
_pending: list[int] = []  # signals that came while held


def _note(signum: int, frame: FrameType | None) -> None:
    _pending.append(signum)
    if _insists():  # a second signal: given at once (see the module's note)
        _release(deliver=True)


def _insists() -> bool:
    """Whether what is held is given now: a second signal, outside a firm hold and
    a release, while a verb is under way (after the console script's verb only
    the exit is left, and a signal there would interrupt that)."""
    after_the_verb = _state.to_exit and not _state.verbs
    return len(_pending) > 1 and not _state.firm and not _state.releasing and not after_the_verb


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


def _put_back(items: list[tuple[int, Any]]) -> None:
    """Each handler back, the rest even when a signal raises out of one (a real
    handler put back runs as soon as its signal comes). signal.signal runs the
    handlers of signals already come before it swaps: one that raises there
    leaves the swap undone, so it is made again."""
    if not items:
        return
    (signum, handler), rest = items[0], items[1:]
    try:
        try:
            signal.signal(signum, handler)
        except BaseException:
            signal.signal(signum, handler)
            raise
    finally:
        _put_back(rest)


def _call(signals: list[int], handlers: dict[int, Any]) -> None:
    """Each signal's own handler, once, in the order they came; all of them even
    when one raises (KeyboardInterrupt), as they would have run unheld."""
    if not signals:
        return
    signum, rest = signals[0], signals[1:]
    try:
        handler = handlers.get(signum)  # only signals whose handler was ours come
        if callable(handler) and handler is not _note:
            handler(signum, None)
        elif handler == signal.SIG_DFL:
            signal.raise_signal(signum)  # its default action: the process ends
    finally:
        _call(rest, handlers)


def _release(deliver: bool) -> None:
    """Put the handlers back and give (or drop) what came while held. Not
    re-entered: a signal while it runs is noted, and given with the rest."""
    if _state.releasing:
        return
    _state.releasing = True
    items = list(_saved.items())
    try:
        _put_back(items)
    finally:
        _saved.clear()
        _state.releasing = False
        came = list(dict.fromkeys(_pending))  # each signal once, in the order they came
        _pending.clear()
        if deliver:
            _call(came, dict(items))


@contextmanager
def held(firm: bool = False) -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block has ended (see the module's note);
    ``firm``: a second signal too, for a few milliseconds of local writes that
    must not be cut in two (an audit record and its head)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.depth += 1
    _state.firm += firm
    try:
        if _state.depth == 1 and not _saved:
            _install()
        yield
    finally:
        _state.firm -= firm
        _state.depth -= 1
        # Given at the end of the last hold outside a verb, or now if a second
        # signal waited for a firm block.
        if (_state.depth == 0 and not _state.verbs) or _insists():
            _release(deliver=True)


@contextmanager
def verb(deliver: bool) -> Iterator[None]:
    """One verb: a hold begun inside it lasts until the outermost verb ends; then
    the handlers are put back, and what came while held is given or dropped as
    that verb says (the console script's keeps holding: see hold_to_exit)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.verbs.append(deliver)
    try:
        yield
    finally:
        _state.verbs.pop()
        if not _state.verbs and _state.depth == 0:
            if _state.to_exit and not deliver:
                # The verb has its outcome; only its report and the exit are left,
                # and a signal now would report "interrupted" after it.
                if not _saved:
                    _install()
                _pending.clear()
            else:
                _release(deliver)


def hold_to_exit() -> None:
    """The console script, which exits as soon as its verb has reported: from the
    end of the verb to the exit, no signal changes anything (see _insists)."""
    _state.to_exit = True
