"""Flushing written data to disk in the background while work goes on.

Output is made durable (fsync) before it is renamed into place. Doing all of
that at the end would stall for as long as the disk needs to absorb the whole
package; instead, write-back is started every ``every`` bytes on a background
thread, so the final fsync only waits for the tail. One worker thread runs the
requests in order, so a file's last fsync always runs after its earlier syncs
and before its close.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait

from secpack.errors import OutputError

__all__ = ["Syncer"]

# Large enough that the sync calls are few, small enough that the tail is short.
SYNC_EVERY = 64 << 20
# Files whose fsync and close may wait in the queue at once, each holding its
# descriptor: when decoding outruns the disk, the caller waits instead, so that
# thousands of finished files never run the process out of descriptors (the
# usual soft limit is 1024).
MAX_CLOSING = 64


class Syncer:
    def __init__(self, every: int = SYNC_EVERY) -> None:
        self.every = every
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="secpack-sync")
        self._lock = threading.Lock()
        self._unsynced: dict[int, int] = {}
        self._futures: list[Future[None]] = []
        self._closing: deque[Future[None]] = deque()
        # The descriptor each queued final fsync is to close (see abort).
        self._closes: dict[Future[None], int] = {}

    def wrote(self, fd: int, n: int) -> None:
        with self._lock:
            pending = self._unsynced.get(fd, 0) + n
            if pending < self.every:
                self._unsynced[fd] = pending
                return
            self._unsynced[fd] = 0
            self._futures.append(self._pool.submit(os.fdatasync, fd))

    def forget(self, fd: int) -> None:
        """Drop ``fd``'s count of unsynced bytes: its owner syncs it another way."""
        with self._lock:
            self._unsynced.pop(fd, None)

    def finish(self, fd: int, close: bool) -> None:
        """Queue the file's final fsync (and close, which then belongs to the syncer)."""

        def job() -> None:
            try:
                os.fsync(fd)
            finally:
                if close:
                    os.close(fd)

        with self._lock:
            self._unsynced.pop(fd, None)
            future = self._pool.submit(job)
            self._futures.append(future)
            if close:
                self._closes[future] = fd
        self._closing.append(future)
        while len(self._closing) > MAX_CLOSING:
            # Its error, if any, is raised by wait(), which sees every future.
            done = self._closing.popleft()
            wait([done])
            with self._lock:
                self._closes.pop(done, None)

    def wait(self) -> None:
        """Wait for every queued sync; raise ``output.io`` if any failed."""
        with self._lock:
            futures, self._futures = self._futures, []
        errors = [f.exception() for f in futures]
        with self._lock:
            for future in futures:
                self._closes.pop(future, None)
        failed = next((e for e in errors if e is not None), None)
        if isinstance(failed, OSError):
            raise OutputError("output.io", f"flushing output to disk: {failed.strerror}")
        if failed is not None:
            raise failed

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)

    def abort(self) -> None:
        """Stop without making anything durable, for output about to be deleted: the
        syncs still queued are dropped (each can take seconds on a busy disk, and
        an interrupted `open` waited for all of them before it stopped), only the
        one running is waited for, and the descriptors that dropped final syncs
        were to close are closed here."""
        with self._lock:
            futures, self._futures = self._futures, []
            closes, self._closes = self._closes, {}
        for future in futures:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._closing.clear()
        for future, fd in closes.items():
            if future.cancelled():
                with contextlib.suppress(OSError):
                    os.close(fd)
