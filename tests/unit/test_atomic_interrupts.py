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


def test_a_file_interrupted_as_it_is_made_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(atomic.os, "open", _interrupt_after(os.open))
    with pytest.raises(KeyboardInterrupt), atomic.AtomicFile(str(tmp_path / "x.spk")):
        pytest.fail("the block must not run")
    assert os.listdir(tmp_path) == []


def test_a_directory_interrupted_as_it_is_made_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(atomic.os, "mkdir", _interrupt_after(os.mkdir))
    with pytest.raises(KeyboardInterrupt), atomic.AtomicDirectory(str(tmp_path / "out")):
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
    """move_range makes a second temporary and copies into it (sign, rewriting a
    package whose header outgrew its room)."""
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

    for make in (atomic.AtomicFile, atomic.AtomicDirectory):
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


def test_seal_interrupted_as_its_variant_workdir_is_made_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """seal --variant builds the variant files in a directory next to its output."""
    import numpy as np
    from helpers import Tensor, seal_example, write_safetensors

    from secpack.api import variants

    model = tmp_path / "model"
    model.mkdir()
    w = np.random.default_rng(1).standard_normal((16, 16)).astype("<f4")
    write_safetensors(model / "model.safetensors", {"w": Tensor("F32", (16, 16), w.tobytes())})
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(variants.os, "mkdir", _interrupt_after(os.mkdir))
    with pytest.raises(KeyboardInterrupt):
        seal_example(model, out / "m.spk", encrypt=False, variants=["int8"])
    assert os.listdir(out) == []
