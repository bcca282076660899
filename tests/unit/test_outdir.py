"""The output tree: directories made without recursion and without following
symlinks, a bounded number of directory descriptors, and typed errors."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from secpack.errors import OutputError
from secpack.transport import outdir
from secpack.transport.atomic import umask
from secpack.transport.outdir import OutputTree


def _write(tree: OutputTree, path: str, data: bytes) -> None:
    fd = tree.create(path, len(data), 0o644)
    tree.pwrite(fd, 0, data, path)
    tree.finish(fd, path)


def _open_descriptors(under: Path, kind: Callable[[str], bool]) -> int:
    """Descriptors this process holds below ``under`` (the root included) whose
    target passes ``kind`` (os.path.isdir, os.path.isfile)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith(str(under)) and kind(target):
            count += 1
    return count


def _open_dirs(under: Path) -> int:
    return _open_descriptors(under, os.path.isdir)


def _open_files(under: Path) -> int:
    return _open_descriptors(under, os.path.isfile)


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


def test_small_files_close_at_once_and_one_syncfs_makes_them_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if outdir._syncfs() is None:
        pytest.skip("no syncfs(2) here")
    synced: list[int] = []
    fsynced: list[int] = []
    real_syncfs, real_fsync = outdir._syncfs(), os.fsync
    assert real_syncfs is not None
    monkeypatch.setattr(outdir, "_syncfs", lambda: lambda fd: (synced.append(fd), real_syncfs(fd)))
    monkeypatch.setattr(outdir, "_fs_type", lambda fd: "ext4")  # wherever the test runs
    monkeypatch.setattr(os, "fsync", lambda fd: (fsynced.append(fd), real_fsync(fd))[-1])
    monkeypatch.setattr(outdir, "SMALL_FILE", 100)
    with OutputTree(str(tmp_path)) as tree:
        root = tree.root_fd
        for i in range(50):
            _write(tree, f"d/small{i}", b"x" * 99)
            assert _open_files(tmp_path) == 0  # closed by finish itself
        _write(tree, "big", b"y" * 100)
        tree.close()
    assert synced == [root]
    # The large file had its own fsync; the small ones none (the directories do).
    assert len(fsynced) == 1 + 2  # big, then d/ and the root
    assert (tmp_path / "d" / "small7").read_bytes() == b"x" * 99


@pytest.mark.parametrize("why", ["no syncfs", "overlay", "old kernel", "unknown"])
def test_without_a_syncfs_that_reports_errors_every_file_is_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    """syncfs is trusted only where it reports a failed writeback: not on overlayfs
    (a container's writable layer), on a file system it cannot tell, or on kernels
    before 5.8. There each small file gets its own fsync, as large ones do."""
    fsynced: list[int] = []
    real_fsync = os.fsync
    if why == "no syncfs":
        monkeypatch.setattr(outdir, "_syncfs", lambda: None)
    elif why == "old kernel":
        monkeypatch.setattr(outdir, "_fs_type", lambda fd: "ext4")
        monkeypatch.setattr(os, "uname", lambda: os.uname_result(("Linux", "h", "5.4.0-1", "", "")))
    else:
        monkeypatch.setattr(outdir, "_fs_type", lambda fd: "overlay" if why == "overlay" else None)
    monkeypatch.setattr(os, "fsync", lambda fd: (fsynced.append(fd), real_fsync(fd))[-1])
    with OutputTree(str(tmp_path)) as tree:
        for i in range(5):
            _write(tree, f"f{i}", b"x")
        tree.close()
    assert len(fsynced) == 5 + 1


def test_a_failed_syncfs_is_a_typed_error_and_leaves_no_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    if outdir._syncfs() is None:
        pytest.skip("no syncfs(2) here")
    monkeypatch.setattr(outdir, "_syncfs", lambda: failing)
    monkeypatch.setattr(outdir, "_fs_type", lambda fd: "ext4")
    with pytest.raises(OutputError) as err, OutputTree(str(tmp_path)) as tree:
        _write(tree, "a/f", b"x")
        tree.close()
    assert err.value.code == "output.io" and "flushing output" in err.value.detail
    assert _open_dirs(tmp_path) == 0 and _open_files(tmp_path) == 0


def test_files_waiting_for_fsync_hold_a_bounded_number_of_descriptors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk slower than decoding must not let finished files pile up open: the
    writer waits once MAX_CLOSING of them are queued."""
    import threading

    from secpack.transport import syncer

    gate = threading.Event()
    real_fsync = os.fsync

    def slow(fd: int) -> None:
        gate.wait(10)  # the disk stalls for a while
        real_fsync(fd)

    monkeypatch.setattr(outdir, "SMALL_FILE", 0)  # every file takes the syncer's way
    monkeypatch.setattr(os, "fsync", slow)
    count = 3 * syncer.MAX_CLOSING
    peak = 0
    with OutputTree(str(tmp_path)) as tree:
        # Without the bound, every file would be finished (and held open) long
        # before the stall ends.
        threading.Timer(0.5, gate.set).start()
        for i in range(count):
            fd = tree.create(f"f{i}", 1, 0o644)
            tree.pwrite(fd, 0, b"z", f"f{i}")
            tree.finish(fd, f"f{i}")
            peak = max(peak, _open_files(tmp_path))
        tree.close()
    assert syncer.MAX_CLOSING <= peak <= syncer.MAX_CLOSING + 1
    assert len(list(tmp_path.iterdir())) == count


@pytest.mark.parametrize(
    ("mode", "kept"), [(0o700, 0o700), (0o750, 0o750), (0o2770, 0o2750), (0o777, 0o755)]
)
def test_an_existing_empty_directory_keeps_its_mode(tmp_path: Path, mode: int, kept: int) -> None:
    """Opening into an empty directory the user made private keeps it private: the
    complete tree takes the directory's mode, not 0755, but never group- or
    world-writable."""
    import stat

    from secpack.transport.atomic import AtomicDirectory

    dest = tmp_path / "private"
    dest.mkdir()
    os.chmod(dest, mode)
    with AtomicDirectory(str(dest)) as target:
        (Path(target.tmp) / "weights.bin").write_bytes(b"secret")
        target.commit()
    assert stat.S_IMODE(dest.stat().st_mode) == kept
    assert (dest / "weights.bin").read_bytes() == b"secret"
    fresh = tmp_path / "fresh"
    with AtomicDirectory(str(fresh)) as target:
        target.commit()
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o755 & ~umask()


@pytest.mark.parametrize(
    ("mask", "stored", "written"),
    [(0o077, 0o755, 0o700), (0o022, 0o644, 0o644), (0o027, 0o600, 0o600), (0o002, 0o775, 0o755)],
)
def test_files_honour_the_umask(tmp_path: Path, mask: int, stored: int, written: int) -> None:
    """A file's stored mode, narrowed by the umask as any new file is; the owner can
    always read and write, and nothing is ever group- or world-writable."""
    import stat

    old = os.umask(mask)
    try:
        with OutputTree(str(tmp_path)) as tree:
            fd = tree.create("d/f", 1, stored)
            tree.pwrite(fd, 0, b"x", "d/f")
            tree.finish(fd, "d/f")
            tree.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "d" / "f").stat().st_mode) == written
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755 & ~mask


def test_someone_elses_empty_directory_lends_no_mode(tmp_path: Path) -> None:
    """An empty 0777 directory another user made in a shared place: the output gets
    the mode a new directory would, not theirs."""
    import stat

    from secpack.transport.atomic import AtomicDirectory

    if os.geteuid() != 0:
        pytest.skip("making a directory of another user's needs root")
    dest = tmp_path / "shared"
    dest.mkdir()
    os.chmod(dest, 0o777)
    os.chown(dest, 1234, 1234)
    with AtomicDirectory(str(dest)) as target:
        (Path(target.tmp) / "weights.bin").write_bytes(b"secret")
        target.commit()
    st = dest.stat()
    assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o755 & ~umask()
