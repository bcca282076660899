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
    assert "secpack open" in caught.value.detail  # what needs less, for a file


def test_filled_bytes_copies_rather_than_hand_out_bytes_a_view_can_change() -> None:
    kept: list[np.ndarray] = []

    def fill(buffer: np.ndarray) -> None:
        buffer[:] = 5
        kept.append(buffer[:4])  # a writer with a bug: it keeps a view

    out = hostmem.filled_bytes(32, fill)
    kept[0][:] = 9
    assert out == b"\x05" * 32


@pytest.mark.parametrize(
    ("read", "call"),
    [
        ("read_file", 'len(p.read_file("weights", "model.safetensors"))'),
        ("export_safetensors", "len(p.export_safetensors())"),
        ("export_safetensors to a file", "p.export_safetensors(path=OUT) or os.path.getsize(OUT)"),
    ],
)
def test_a_large_read_holds_the_model_once(tmp_path: Path, read: str, call: str) -> None:
    """Peak memory of a read that builds a whole file, in a process of its own:
    the file's size and a few segments above what the process held after opening
    the package. read_file held the file twice (decoded into a buffer, then
    copied into the bytes); export_safetensors three times (and twice where it
    wrote to a path)."""
    from helpers import Tensor, clean_env, ok, write_safetensors

    model = tmp_path / "m"
    model.mkdir()
    size = 96 << 20
    # Random bits: stored as they are, so the test measures the read, not a codec.
    data = np.random.default_rng(0).bytes(size)
    write_safetensors(model / "model.safetensors", {"w": Tensor("U8", (size,), data)})
    (model / "config.json").write_text("{}")
    key = tmp_path / "k"
    ok("keygen", "signing", "-o", key, "--quiet")
    pkg = tmp_path / "p.spk"
    ok("seal", model, "-o", pkg, "--sign-key", key, "--no-encrypt", "--level", "fast")
    # The peak is VmHWM, reset just before the read (clear_refs, "5"): open's own
    # peak, which the mapped package's pages may dominate, is not the read's.
    probe = f"""
import os
from secpack.api.loader import open_package

OUT = {str(tmp_path / "out.safetensors")!r}


def status(key):
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) << 10 for x in f if x.startswith(key + ":"))


with open_package({str(pkg)!r}, trust=[{str(key) + ".pub"!r}], threads=1) as p:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
    length = {call}
    peak = status("VmHWM")
print(length, peak - before)
"""
    env = clean_env({"SECPACK_AUDIT": "off", "SECPACK_STATE_DIR": str(tmp_path / "state")})
    res = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    length, grew = map(int, res.stdout.split())
    assert size < length < size + 4096  # the tensor and a safetensors header
    # The model (96 MiB) and the thread's segment buffers (a few 4 MiB segments).
    assert size <= grew < size + (32 << 20), grew
