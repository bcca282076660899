"""The output tree: directories made without recursion and without following
symlinks, a bounded number of directory descriptors, and typed errors."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from secpack.errors import OutputError
from secpack.transport import outdir
from secpack.transport.outdir import OutputTree


def _write(tree: OutputTree, path: str, data: bytes) -> None:
    fd = tree.create(path, len(data), 0o644)
    tree.pwrite(fd, 0, data, path)
    tree.finish(fd, path)


def _open_dirs(under: Path) -> int:
    """Directory descriptors this process holds below ``under`` (the root included)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith(str(under)) and os.path.isdir(target):
            count += 1
    return count


def _flatten_away(root: Path, name: str) -> None:
    """Remove root/name/name/... without recursing, one level at a time, so that no
    tool (pytest's own clean-up included) meets the deep tree."""
    while (root / name).is_dir():
        os.rename(root / name, root / "up")
        for entry in os.listdir(root / "up"):
            if entry == name:
                os.rename(root / "up" / name, root / name)
            else:
                os.unlink(root / "up" / entry)
        os.rmdir(root / "up")


def test_a_deep_path_is_made_without_recursion(tmp_path: Path) -> None:
    # The path rules allow 64 levels; the tree itself must not depend on that.
    deep = "/".join(["d"] * 3000) + "/leaf"  # deeper than the interpreter's stack
    try:
        with OutputTree(str(tmp_path)) as tree:
            _write(tree, deep, b"x")
            _write(tree, deep.replace("leaf", "other"), b"y")
            tree.close()
        fd = os.open(tmp_path, os.O_RDONLY)
        try:
            for _ in range(3000):
                nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = nxt
            assert sorted(os.listdir(fd)) == ["leaf", "other"]
        finally:
            os.close(fd)
    finally:
        _flatten_away(tmp_path, "d")
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc")
def test_directory_descriptors_stay_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outdir, "_MAX_OPEN_DIRS", 8)
    most = 0
    with OutputTree(str(tmp_path)) as tree:
        for i in range(200):
            _write(tree, f"d{i:03}/sub/f", bytes([i]))
            most = max(most, _open_dirs(tmp_path))
        # A directory let go is opened again when more goes into it.
        _write(tree, "d000/sub/g", b"again")
        tree.close()
    assert most == 8 + 1  # the root is held throughout
    assert _open_dirs(tmp_path) == 0
    assert (tmp_path / "d000" / "sub" / "g").read_bytes() == b"again"
    assert all((tmp_path / f"d{i:03}" / "sub" / "f").read_bytes() == bytes([i]) for i in range(200))


def test_a_planted_symlink_is_refused_even_for_a_directory_let_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outdir, "_MAX_OPEN_DIRS", 2)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    with OutputTree(str(root)) as tree:
        _write(tree, "a/f", b"1")
        _write(tree, "b/f", b"2")
        _write(tree, "c/f", b"3")  # "a" is let go
        os.rename(root / "a", tmp_path / "moved")
        (root / "a").symlink_to(elsewhere)
        with pytest.raises(OutputError) as err:
            _write(tree, "a/g", b"4")
        assert err.value.code == "output.unsafe"
    assert list(elsewhere.iterdir()) == []


def test_running_out_of_descriptors_is_an_io_error() -> None:
    assert outdir._error("x", OSError(errno.EMFILE, "Too many open files")).code == "output.io"
    assert outdir._error("x", OSError(errno.ELOOP, "loop")).code == "output.unsafe"


def test_a_failed_fsync_of_the_root_is_a_typed_error_and_closes_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = OutputTree(str(tmp_path))
    root = tree.root_fd
    real_fsync = os.fsync

    def failing(fd: int) -> None:
        if fd == root:
            raise OSError(errno.EIO, "I/O error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OutputError) as err, tree:
        _write(tree, "a/f", b"x")
        tree.close()
    assert err.value.code == "output.io"
    with pytest.raises(OSError):
        os.fstat(root)  # closed, and only once: no other descriptor was hit
