"""A bytes object written in place (secpack/_bytesbuf.c, through
secpack.api.hostmem.filled_bytes): Package.read_file holds a file once, and no
bytes handed out can change afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from secpack.api import hostmem
from secpack.errors import SecpackError

if os.environ.get("SECPACK_REQUIRE_NATIVE") == "1":  # make test: it must have been built
    from secpack import _bytesbuf as native
else:
    native = pytest.importorskip("secpack._bytesbuf")


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, (4 << 20) + 7])
def test_the_bytes_are_what_was_written(size: int) -> None:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    buf = native.BytesBuffer(size)
    assert buf.size == size
    view = np.frombuffer(memoryview(buf), dtype=np.uint8)
    assert view.flags.writeable and view.nbytes == size
    view[:] = data
    del view
    out = buf.take()
    assert type(out) is bytes and out == data.tobytes()
    assert buf.size == 0


def test_a_view_still_held_keeps_the_bytes_from_being_taken() -> None:
    """Handed out while a view could still write them, the bytes could change
    in the caller's hands: take() refuses, until every view is gone."""
    buf = native.BytesBuffer(64)
    whole = memoryview(buf)
    part = whole[8:16]
    whole.release()  # a slice keeps the export
    with pytest.raises(BufferError, match="still exported"):
        buf.take()
    array = np.frombuffer(part, dtype=np.uint8)
    del part
    with pytest.raises(BufferError, match="still exported"):
        buf.take()
    array[:] = 1
    del array
    assert buf.take()[8:16] == b"\x01" * 8


def test_once_taken_nothing_more_is_exported_or_taken() -> None:
    buf = native.BytesBuffer(16)
    out = buf.take()
    with pytest.raises(BufferError, match="taken"):
        memoryview(buf)
    with pytest.raises(BufferError, match="taken"):
        buf.take()
    assert len(out) == 16


def test_impossible_sizes_are_errors() -> None:
    with pytest.raises(ValueError, match="negative"):
        native.BytesBuffer(-1)
    with pytest.raises((MemoryError, OverflowError)):
        native.BytesBuffer(sys.maxsize)


def test_filled_bytes_refuses_a_size_there_is_no_memory_for() -> None:
    with pytest.raises(SecpackError) as caught:
        hostmem.filled_bytes(sys.maxsize // 2, lambda buffer: None)
    assert caught.value.code == "limit.exceeded"


def test_filled_bytes_copies_rather_than_hand_out_bytes_a_view_can_change() -> None:
    kept: list[np.ndarray] = []

    def fill(buffer: np.ndarray) -> None:
        buffer[:] = 5
        kept.append(buffer[:4])  # a writer with a bug: it keeps a view

    out = hostmem.filled_bytes(32, fill)
    kept[0][:] = 9
    assert out == b"\x05" * 32


def test_read_file_holds_a_large_file_once(tmp_path: Path) -> None:
    """Peak memory of read_file, in a process of its own: the file's size and a
    few segments above what the process held after opening the package. It was
    twice the file (decoded into a buffer, then copied into the bytes)."""
    from helpers import clean_env, ok

    model = tmp_path / "m"
    model.mkdir()
    size = 96 << 20
    # Random bytes: stored as they are, so the test measures the file, not a codec.
    (model / "blob.bin").write_bytes(np.random.default_rng(0).bytes(size))
    (model / "config.json").write_text("{}")
    key = tmp_path / "k"
    ok("keygen", "signing", "-o", key, "--quiet")
    pkg = tmp_path / "p.spk"
    ok("seal", model, "-o", pkg, "--sign-key", key, "--no-encrypt", "--level", "fast")
    # The peak is VmHWM, reset just before the read (clear_refs, "5"): open's own
    # peak, which the mapped package's pages may dominate, is not the read's.
    probe = f"""
from secpack.api.loader import open_package


def status(key):
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) << 10 for x in f if x.startswith(key + ":"))


with open_package({str(pkg)!r}, trust=[{str(key) + ".pub"!r}], threads=1) as p:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
    data = p.read_file("files", "blob.bin")
    peak = status("VmHWM")
print(len(data), peak - before)
"""
    env = clean_env({"SECPACK_AUDIT": "off", "SECPACK_STATE_DIR": str(tmp_path / "state")})
    res = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    length, grew = map(int, res.stdout.split())
    assert length == size
    # The bytes (96 MiB) and the thread's segment buffers (a few 4 MiB segments).
    assert size <= grew < size + (32 << 20), grew
