"""The error codes: one table in the code, the same table in the spec, and input
paths that exist but cannot be read told apart from paths that do not exist."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import pytest

from secpack.errors import CODES, LimitError, SecpackError, resource_limit
from secpack.format.limits import DEFAULT_LIMITS
from secpack.transport.files import read_small
from secpack.transport.inputs import scan_input
from secpack.transport.spkfile import FileSource

ROOT = Path(__file__).resolve().parents[2]


def test_the_spec_lists_exactly_the_codes_the_code_raises() -> None:
    spec = (ROOT / "docs" / "FORMAT.md").read_text(encoding="utf-8")
    section = spec.split("\n## 12. Error codes\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z0-9.-]+)` \| ([^|]+) \|$", section, flags=re.MULTILINE)
    assert len(rows) == len(dict(rows))  # no code listed twice
    assert dict(rows) == CODES


def _denied(monkeypatch: pytest.MonkeyPatch, victim: str, err: int = errno.EACCES) -> None:
    """Make opening (and listing) ``victim`` fail with ``err``, as for a user
    without the permission (the tests may run as root, who is never refused)."""
    real_open, real_scandir = os.open, os.scandir

    def fake_open(path: str, *args: object, **kwargs: object) -> int:
        if os.fspath(path) == victim:
            raise OSError(err, os.strerror(err), path)
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    def fake_scandir(path: str = ".") -> object:
        if os.fspath(path) == victim:
            raise OSError(err, os.strerror(err), path)
        return real_scandir(path)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "scandir", fake_scandir)


@pytest.mark.parametrize("err", [errno.EACCES, errno.EIO])
def test_an_unreadable_key_or_package_is_input_io(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    key = tmp_path / "k.pem"
    key.write_text("x")
    _denied(monkeypatch, str(key), err)
    attempts = (lambda: read_small(str(key), "key"), lambda: FileSource(str(key)))
    for attempt in attempts:
        with pytest.raises(SecpackError) as caught:
            attempt()
        assert caught.value.code == "input.io"
        assert os.strerror(err) in caught.value.detail


def test_a_missing_path_stays_input_missing(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    for path in (str(tmp_path / "absent"), str(tmp_path / "file" / "below-a-file")):
        for attempt in (
            lambda p=path: read_small(p, "key"),
            lambda p=path: FileSource(p),
            lambda p=path: scan_input(p, DEFAULT_LIMITS),
        ):
            with pytest.raises(SecpackError) as caught:
                attempt()
            assert caught.value.code == "input.missing"


def test_an_unreadable_model_directory_or_file_is_input_io(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from secpack.api.keyfiles import load_signing_key
    from secpack.api.seal import seal

    root = tmp_path / "m"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.txt").write_text("a")
    (root / "config.json").write_text("{}")
    key = load_signing_key(str(ROOT / "keys-example" / "signing-ed25519.key"))
    for victim in (root / "sub", root / "config.json"):
        with monkeypatch.context() as m:
            _denied(m, str(victim))
            out = tmp_path / "p.spk"
            with pytest.raises(SecpackError) as caught:
                seal(str(root), str(out), encrypt=False, sign_keys=[key])
            assert caught.value.code == "input.io"
            assert "Permission denied" in caught.value.detail
            assert not out.exists()


@pytest.mark.parametrize("as_json", [False, True])
@pytest.mark.parametrize("where", ["importing", "parsing", "click-parsing"])
def test_an_interrupt_outside_a_verb_is_interrupted_not_a_traceback(
    tmp_path: Path, as_json: bool, where: str
) -> None:
    """Ctrl-C while the command line is still being imported (typer is imported
    first), or outside the verb itself, reports ``interrupted`` with exit 130."""
    import subprocess
    import sys

    argv = ["secpack", "verify", "x.spk", *(["--json"] if as_json else [])]
    if where == "importing":
        # A module named typer first on the path: its import is where the interrupt lands.
        (tmp_path / "typer.py").write_text("raise KeyboardInterrupt\n")
        code = f"import sys; sys.argv = {argv!r}; from secpack.entry import main; main()"
        env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    elif where == "parsing":
        code = (
            f"import sys; sys.argv = {argv!r}; import secpack.cli as cli\n"
            "def stop():\n    raise KeyboardInterrupt\n"
            "cli.app = stop; cli.main()"
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
    else:  # inside click, which turns it into a silent exit 130
        code = (
            f"import sys; sys.argv = {argv!r}\n"
            "import typer._click.core as core\n"
            "def stop(self, ctx, args):\n    raise KeyboardInterrupt\n"
            "core.Command.parse_args = stop\n"
            "from secpack.entry import main; main()"
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 130, done
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("error[interrupted]: ")
    if as_json:
        doc = json.loads(done.stdout)
        assert doc["ok"] is False and doc["error"]["code"] == "interrupted"
    else:
        assert done.stdout == ""


def test_an_input_that_changes_mid_seal_exits_1_not_as_a_usage_error() -> None:
    """A file rewritten or removed while it is sealed is worth a retry, unlike a
    command that cannot be carried out as given (exit 2): scripts tell them apart."""
    from secpack.cli import exit_status

    assert exit_status("input.changed") == 1
    assert exit_status("input.invalid") == 2


def test_read_errors_and_removal_during_a_seal_have_their_own_codes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from secpack.api.keyfiles import load_signing_key
    from secpack.api.seal import seal
    from secpack.transport import inputs

    root = tmp_path / "m"
    root.mkdir()
    (root / "config.json").write_text("{}")
    (root / "notes.txt").write_text("n" * 100)
    key = load_signing_key(str(ROOT / "keys-example" / "signing-ed25519.key"))
    out = tmp_path / "p.spk"

    def failing_preadv(fd: int, buffers: object, offset: int) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    with monkeypatch.context() as m:  # the disk fails under a file being sealed
        m.setattr(inputs.os, "preadv", failing_preadv)
        with pytest.raises(SecpackError) as caught:
            seal(str(root), str(out), encrypt=False, sign_keys=[key])
        assert caught.value.code == "input.io" and "Input/output error" in caught.value.detail
    assert not out.exists()

    real_scan = inputs.scan_input

    def scan_then_remove(*args: object, **kwargs: object) -> object:
        tree = real_scan(*args, **kwargs)  # type: ignore[arg-type]
        (root / "notes.txt").unlink()
        return tree

    monkeypatch.setattr("secpack.api.seal.scan_input", scan_then_remove)
    with pytest.raises(SecpackError) as caught:
        seal(str(root), str(out), encrypt=False, sign_keys=[key])
    assert caught.value.code == "input.changed" and "removed" in caught.value.detail
    assert not out.exists()


def test_a_package_read_error_is_input_io(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from secpack.transport import spkfile

    pkg = tmp_path / "p.spk"
    pkg.write_bytes(b"x" * 4096)
    src = FileSource(str(pkg))

    def failing(*args: object) -> object:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(spkfile.os, "pread", failing)
    monkeypatch.setattr(spkfile.os, "preadv", failing)
    try:
        for attempt in (
            lambda: src.read_at(0, 10),
            lambda: src.read_into(0, memoryview(bytearray(10))),
        ):
            with pytest.raises(SecpackError) as caught:
                attempt()
            assert caught.value.code == "input.io"
    finally:
        src.close()


def test_a_state_directory_without_locks_is_state_io(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from secpack.transport import state

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(state.fcntl, "flock", no_locks)
    with pytest.raises(SecpackError) as caught:
        state.VersionState(str(tmp_path)).check("m", [b"k"], 1, record=True, allow_downgrade=False)
    assert caught.value.code == "state.io"


def _every_error_class() -> list[type[SecpackError]]:
    found: list[type[SecpackError]] = []
    todo: list[type[SecpackError]] = [SecpackError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def _one_of(cls: type[SecpackError]) -> SecpackError:
    from secpack.errors import IntegrityError, NotFoundError, StdoutError

    if cls is NotFoundError:
        return NotFoundError("tensor.unknown", "no tensor 'x' in 'weights'", "x")
    if cls is IntegrityError:
        return IntegrityError("segment digest does not match the manifest")
    if cls is StdoutError:
        return StdoutError("No space left on device", broken_pipe=True)
    return cls("tensor.unknown", "no tensor 'x' in 'weights'")


@pytest.mark.parametrize("cls", _every_error_class(), ids=lambda c: c.__name__)
def test_an_error_survives_pickling_with_its_class_code_and_detail(
    cls: type[SecpackError],
) -> None:
    """Errors cross process boundaries (a process pool, a serving framework's
    workers) by pickle, which rebuilt them through a constructor that does not
    take the formatted message: unpickling raised ValueError."""
    import copy
    import pickle

    err = _one_of(cls)
    for back in (pickle.loads(pickle.dumps(err)), copy.deepcopy(err)):
        assert type(back) is cls
        assert (back.code, back.detail, str(back), back.args) == (
            err.code,
            err.detail,
            str(err),
            err.args,
        )
        assert vars(back) == vars(err)


def test_an_error_raised_in_a_worker_process_reaches_the_parent_intact(tmp_path: Path) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from secpack.api.loader import open_package

    missing = str(tmp_path / "absent.spk")
    trust = [str(ROOT / "keys-example" / "signing-ed25519.key.pub")]
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as pool:
        future = pool.submit(open_package, missing, trust=trust)
        with pytest.raises(SecpackError) as caught:
            future.result(timeout=120)
    assert caught.value.code == "input.missing" and missing in caught.value.detail


def test_a_small_file_is_read_at_its_own_size(tmp_path: Path) -> None:
    """A key of a hundred bytes is read into a hundred bytes, not into the 1 MiB
    cap: with 256 KiB of address space to spare, reading it must still work (it
    was a MemoryError). The cap itself still holds."""
    import subprocess
    import sys

    key = ROOT / "keys-example" / "signing-ed25519.key.pub"
    probe = f"""
import resource
from secpack.transport.files import read_small
with open("/proc/self/status") as f:
    held = next(int(x.split()[1]) << 10 for x in f if x.startswith("VmSize:"))
for _ in range(3):  # warm: what the first call allocates for itself
    read_small({str(key)!r}, "key")
resource.setrlimit(resource.RLIMIT_AS, (held + (256 << 10), resource.RLIM_INFINITY))
print(len(read_small({str(key)!r}, "key")))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert out.stdout.split() == [str(key.stat().st_size)], out.stderr[-1000:]
    from secpack.transport.files import MAX_SMALL_FILE

    big = tmp_path / "big.pem"
    big.write_bytes(b"x" * (MAX_SMALL_FILE + 1))
    with pytest.raises(SecpackError) as caught:
        read_small(str(big), "key")
    assert caught.value.code == "input.invalid"


def test_a_file_longer_than_its_size_says_is_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that grew after its size was taken, or that reports none (as some
    file systems' regular files do), is read to its end, not cut at the size."""
    from secpack.transport import files

    key = tmp_path / "k.pem"
    key.write_bytes(b"k" * 300)
    real = os.fstat

    def stale(fd: int) -> os.stat_result:
        st = real(fd)
        return os.stat_result((st.st_mode, *st[1:6], 0, *st[7:]))

    monkeypatch.setattr(files.os, "fstat", stale)
    assert read_small(str(key), "key") == b"k" * 300
    key.write_bytes(b"k" * (files.MAX_SMALL_FILE + 1))
    with pytest.raises(SecpackError) as caught:
        read_small(str(key), "key")
    assert caught.value.code == "input.invalid"


def test_every_limit_exceeded_says_what_asks_for_less() -> None:
    """A verb that ran out of memory said what asks for less only where Python had
    raised the error (a MemoryError); zstd's allocation error, which secpack
    raises as limit.exceeded itself, came without it."""
    hint = "--threads 1 needs less"
    own = resource_limit(LimitError("limit.exceeded", "out of memory for zstd: no"), hint)
    assert own is not None and own.code == "limit.exceeded"
    assert own.detail == f"out of memory for zstd: no; {hint}"
    assert resource_limit(own, hint) is None  # said once
    raised = resource_limit(MemoryError(), hint)
    assert raised is not None and raised.detail.endswith(hint)
    assert resource_limit(SecpackError("integrity"), hint) is None
    assert resource_limit(ValueError("no"), hint) is None
