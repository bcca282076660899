"""The background syncer: abort drops queued syncs instead of waiting for them."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from secpack.transport import syncer as syncer_mod
from secpack.transport.syncer import Syncer


def test_abort_drops_queued_syncs_and_closes_their_descriptors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Output about to be deleted needs no fsync: after a Ctrl-C, the syncs still
    queued (each could take seconds on a busy disk) are dropped, only the running
    one is waited for, and the files whose close was queued are closed anyway."""
    started = threading.Event()
    release = threading.Event()
    synced: list[int] = []

    def slow_fsync(fd: int) -> None:
        started.set()
        release.wait(5)
        synced.append(fd)

    monkeypatch.setattr(syncer_mod.os, "fsync", slow_fsync)
    s = Syncer()
    fds = [os.open(tmp_path / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o600) for i in range(6)]
    for fd in fds:
        s.finish(fd, close=True)
    assert started.wait(5)  # the first final sync runs; five wait in the queue
    threading.Timer(0.2, release.set).start()
    began = time.monotonic()
    s.abort()
    assert time.monotonic() - began < 3
    assert synced == fds[:1]  # only the one that was running
    for fd in fds:  # every descriptor is closed: by its job, or by abort
        with pytest.raises(OSError):
            os.fstat(fd)


def test_close_waits_for_every_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    monkeypatch.setattr(syncer_mod.os, "fsync", synced.append)
    s = Syncer()
    fds = [os.open(tmp_path / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o600) for i in range(3)]
    for fd in fds:
        s.finish(fd, close=True)
    s.close()
    assert synced == fds
