"""An interrupt (the command line turns SIGINT and SIGTERM into KeyboardInterrupt)
that lands just after a temporary output is made, before it is recorded, must not
leave it behind: secpack reports that nothing was left half-written."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from secpack.transport import atomic


def _interrupt_after(real: Callable[..., Any]) -> Callable[..., Any]:
    """``real``, then an interrupt, as if a signal came right after the system call
    made a temporary (Python runs signal handlers between any two steps)."""

    def call(path: str, *args: Any, **kwargs: Any) -> Any:
        result = real(path, *args, **kwargs)
        if atomic.TMP_MARKER in os.fspath(path):
            raise KeyboardInterrupt
        return result

    return call


@pytest.mark.parametrize(
    ("make", "call"),
    [
        (atomic.AtomicFile, "open"),
        (atomic.AtomicDirectory, "mkdir"),
        (atomic.WorkDirectory, "mkdir"),
    ],
)
def test_a_temporary_interrupted_as_it_is_made_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make: type[Any], call: str
) -> None:
    monkeypatch.setattr(atomic.os, call, _interrupt_after(getattr(os, call)))
    with pytest.raises(KeyboardInterrupt), make(str(tmp_path / "out")):
        pytest.fail("the block must not run")
    assert os.listdir(tmp_path) == []


def test_constructing_makes_nothing_until_the_block_is_entered(tmp_path: Path) -> None:
    """An interrupt between the constructor and the with block has nothing to leave."""
    atomic.AtomicFile(str(tmp_path / "x.spk"))
    atomic.AtomicDirectory(str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []


def test_a_second_temporary_interrupted_as_it_is_made_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """move_range makes a second temporary and copies into it (seal, moving the
    blobs when the manifest outgrew the room kept for it)."""
    with pytest.raises(KeyboardInterrupt), atomic.AtomicFile(str(tmp_path / "x.spk")) as out:
        out.pwrite(0, b"0123456789" * 100)
        monkeypatch.setattr(atomic.os, "open", _interrupt_after(os.open))
        out.move_range(0, 10, 500)
    assert os.listdir(tmp_path) == []


def test_an_interrupted_copy_into_the_second_temporary_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), atomic.AtomicFile(str(tmp_path / "x.spk")) as out:
        out.pwrite(0, b"0123456789" * 100)
        monkeypatch.setattr(atomic, "_copy_range", interrupted)
        out.move_range(0, 10, 500)
    assert os.listdir(tmp_path) == []


def test_a_name_that_is_taken_is_an_io_error_and_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A temporary's name already there (it has a random part: not this run's) is
    neither used nor removed."""
    from secpack.errors import OutputError

    for make in (atomic.AtomicFile, atomic.AtomicDirectory, atomic.WorkDirectory):
        target = make(str(tmp_path / "out"))
        Path(target.tmp).write_text("someone else's")
        with pytest.raises(OutputError) as err, target:
            pytest.fail("the block must not run")
        assert err.value.code == "output.io", err.value
        assert Path(target.tmp).read_text() == "someone else's"
        target.abort()  # a caller's abort does not remove it either
        assert Path(target.tmp).read_text() == "someone else's"
        os.unlink(target.tmp)


def test_open_interrupted_as_its_output_directory_is_made_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers import seal_example

    from secpack.api.extract import extract
    from secpack.api.keyfiles import load_identity
    from secpack.sign.policy import policy_from_keys

    keys = Path(__file__).resolve().parents[2] / "keys-example"
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"a": 1}')
    pkg = tmp_path / "m.spk"
    seal_example(model, pkg, encrypt=True)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(atomic.os, "mkdir", _interrupt_after(os.mkdir))
    with pytest.raises(KeyboardInterrupt):
        extract(
            str(pkg),
            str(out / "opened"),
            identities=[load_identity(str(keys / "recipient-x25519.key"))],
            policy=policy_from_keys([("trust", (keys / "signing-ed25519.key.pub").read_bytes())]),
        )
    assert os.listdir(out) == []


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A folder of one small float32 safetensors file, for seal --variant int8."""
    import numpy as np
    from helpers import Tensor, write_safetensors

    root = tmp_path / "model"
    root.mkdir()
    w = np.random.default_rng(1).standard_normal((16, 16)).astype("<f4")
    write_safetensors(root / "model.safetensors", {"w": Tensor("F32", (16, 16), w.tobytes())})
    return root


def test_seal_interrupted_as_its_variant_workdir_is_made_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: Path
) -> None:
    """seal --variant builds the variant files in a directory next to its output."""
    from helpers import seal_example

    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(atomic.os, "mkdir", _interrupt_after(os.mkdir))
    with pytest.raises(KeyboardInterrupt):
        seal_example(model, out / "m.spk", encrypt=False, variants=["int8"])
    assert os.listdir(out) == []


def _once(real: Callable[..., Any], before: bool = False) -> Callable[..., Any]:
    """``real``, except that its first call is interrupted: after it ran, or
    ``before`` it."""
    calls = []

    def call(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1 and before:
            raise KeyboardInterrupt
        result = real(*args, **kwargs)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return result

    return call


def test_an_interrupted_removal_of_the_variant_workdir_finishes_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: Path
) -> None:
    """The seal's last step removes its variant files: an interrupt there must not
    leave part of them (the package itself is complete by then)."""
    import shutil

    from helpers import seal_example

    out = tmp_path / "out"
    out.mkdir()
    real = shutil.rmtree

    def part_then_interrupt(path: str, ignore_errors: bool = False) -> None:
        # Some of the tree goes, then the interrupt lands.
        files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
        os.unlink(files[0])
        monkeypatch.setattr(shutil, "rmtree", real)
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", part_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        seal_example(model, out / "m.spk", encrypt=False, variants=["int8"])
    assert os.listdir(out) == ["m.spk"]


def test_an_interrupt_while_move_range_waits_for_the_old_flushes_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(KeyboardInterrupt), atomic.AtomicFile(str(tmp_path / "x.spk")) as out:
        out.pwrite(0, b"0123456789" * 100)
        monkeypatch.setattr(out, "_stop_syncer", _once(out._stop_syncer))
        out.move_range(0, 10, 500)
    assert os.listdir(tmp_path) == []


def test_an_interrupt_as_commit_closes_the_file_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closed but not yet recorded as closed: abort() must not close the number
    again (another file's by then) and must still remove the temporary."""
    with pytest.raises(KeyboardInterrupt), atomic.AtomicFile(str(tmp_path / "x.spk")) as out:
        out.pwrite(0, b"data")
        monkeypatch.setattr(atomic.os, "close", _once(os.close))
        out.commit()
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_a_second_interrupt_during_abort_still_removes_the_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C twice: the first stops the work, the second lands in abort() while
    it drops the queued flushes of a large file."""
    from secpack.transport.syncer import Syncer

    monkeypatch.setattr(Syncer, "abort", _once(Syncer.abort, before=True))
    with pytest.raises(KeyboardInterrupt), atomic.AtomicFile(str(tmp_path / "x.spk")) as out:
        out.pwrite(0, bytes(2 << 20))  # 1 MiB and up: flushed by a Syncer
        assert out._syncer is not None
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []
