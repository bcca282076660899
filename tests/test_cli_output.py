"""What the command line reports, and with which exit status.

When stdout cannot take its report (a full disk, a reader that closed the pipe,
a stdout closed at start), the operation's own outcome stays what the exit
status and the error code say, and nothing ends in a traceback. Usage errors
are reported as every other error, under --json too, and equivalent errors exit
with the same status."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pytest
from helpers import KeyPair, assert_same_tree, clean_env, fails, just_short, ok, run_cli

ROOT = Path(__file__).resolve().parents[1]

# The exit statuses the README documents for a report that stdout did not take.
STDOUT_IO = 74
BROKEN_PIPE = 141

needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")


def _secpack(
    *args: str | os.PathLike[str], stdout: int | IO[bytes], close_stdout: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``secpack ARGS`` in a process of its own, stdout as given, stderr captured.
    It runs this tree's code (``python -m secpack`` on PYTHONPATH): the installed
    console script may belong to another checkout."""
    cmd = [sys.executable, "-m", "secpack", *(os.fspath(a) for a in args)]
    if close_stdout:
        cmd = ["sh", "-c", 'exec "$@" >&-', "sh", *cmd]
    return subprocess.run(
        cmd,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env({"PYTHONPATH": str(ROOT)}),
        timeout=120,
        check=False,
    )


@pytest.fixture
def full() -> Iterator[IO[bytes]]:
    """A stdout on which every write fails with ENOSPC."""
    with open("/dev/full", "wb") as fh:
        yield fh


@pytest.fixture
def no_reader() -> Iterator[int]:
    """A pipe's write end whose read end is already closed: every write is EPIPE,
    whenever it comes (no race with a reader that closes it later)."""
    r, w = os.pipe()
    os.close(r)
    yield w
    os.close(w)


def _stdout_io(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == STDOUT_IO, done
    assert done.stderr.startswith("error[stdout.io]: "), done
    assert "succeeded" in done.stderr, done
    assert "Traceback" not in done.stderr, done


@needs_dev_full
@pytest.mark.parametrize("as_json", [False, True])
def test_a_seal_whose_report_stdout_cannot_take_is_stdout_io_not_output_io(
    tmp_path: Path,
    model_dir: Path,
    release_key: KeyPair,
    server_key: KeyPair,
    full: IO[bytes],
    as_json: bool,
) -> None:
    pkg = tmp_path / "m.spk"
    keys = ("--sign-key", release_key.private, "--recipient", server_key.public)
    done = _secpack("seal", model_dir, "-o", pkg, *keys, *(["--json"] * as_json), stdout=full)
    _stdout_io(done)
    # The package was written whole: it verifies.
    ok("verify", pkg, "--trust", release_key.public)


@needs_dev_full
@pytest.mark.parametrize("as_json", [False, True])
def test_verify_with_a_full_stdout_is_stdout_io_without_a_traceback(
    sealed: Path, release_key: KeyPair, full: IO[bytes], as_json: bool
) -> None:
    args = ("verify", sealed, "--trust", release_key.public, *(["--json"] * as_json))
    _stdout_io(_secpack(*args, stdout=full))


def test_a_reader_that_closed_the_pipe_ends_an_open_quietly(
    tmp_path: Path,
    model_dir: Path,
    sealed: Path,
    release_key: KeyPair,
    server_key: KeyPair,
    no_reader: int,
) -> None:
    out = tmp_path / "out"
    args = ("--identity", server_key.private, "--trust", release_key.public)
    done = _secpack("open", sealed, "-o", out, *args, stdout=no_reader)
    assert done.returncode == BROKEN_PIPE, done
    assert done.stderr == "", done
    assert_same_tree(model_dir, out)


def test_verify_json_into_a_closed_pipe_ends_quietly(
    sealed: Path, release_key: KeyPair, no_reader: int
) -> None:
    done = _secpack("verify", sealed, "--trust", release_key.public, "--json", stdout=no_reader)
    assert done.returncode == BROKEN_PIPE, done
    assert done.stderr == "", done


@pytest.mark.parametrize("as_json", [False, True])
def test_a_closed_stdout_is_stdout_io_not_internal(
    sealed: Path, release_key: KeyPair, as_json: bool
) -> None:
    args = ("verify", sealed, "--trust", release_key.public, *(["--json"] * as_json))
    done = _secpack(*args, stdout=subprocess.DEVNULL, close_stdout=True)
    _stdout_io(done)
    assert "stdout is closed" in done.stderr, done


def test_quiet_needs_no_stdout(sealed: Path, release_key: KeyPair) -> None:
    args = ("verify", sealed, "--trust", release_key.public, "--quiet")
    done = _secpack(*args, stdout=subprocess.DEVNULL, close_stdout=True)
    assert done.returncode == 0 and done.stderr == "", done


@needs_dev_full
@pytest.mark.parametrize("how", ["full", "closed", "no reader"])
def test_a_failure_stays_that_failure_whatever_stdout_is(
    tmp_path: Path, release_key: KeyPair, how: str, no_reader: int
) -> None:
    """With --json the error's object goes to stdout too; when stdout cannot take
    it, the error line on stderr and the exit status still report the failure."""
    args = ("verify", tmp_path / "missing.spk", "--trust", release_key.public, "--json")
    if how == "full":
        with open("/dev/full", "wb") as fh:
            done = _secpack(*args, stdout=fh)
    elif how == "closed":
        done = _secpack(*args, stdout=subprocess.DEVNULL, close_stdout=True)
    else:
        done = _secpack(*args, stdout=no_reader)
    assert done.returncode == 1, done
    assert done.stderr.startswith("error[input.missing]: "), done
    assert "Traceback" not in done.stderr, done


@needs_dev_full
@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_version_and_help_into_a_full_stdout(flag: str, full: IO[bytes]) -> None:
    done = _secpack(flag, stdout=full)
    assert done.returncode == STDOUT_IO, done
    assert done.stderr.startswith("error[stdout.io]: "), done
    assert "Traceback" not in done.stderr, done


# --- usage errors and exit statuses ---------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("verify", "x.spk", "--bogus"), "No such option: --bogus"),
        (("trust", "update"), "Missing option '--output'"),
        (("seal", "m"), "Missing option '--output'"),
        (("verify",), "Missing argument"),
        (("keygen", "signing"), "Missing option '--output'"),
        (("bogus",), "No such command 'bogus'"),
        (("verify", "x.spk", "--threads", "abc"), "'abc' is not a valid int"),
    ],
)
@pytest.mark.parametrize("as_json", [False, True])
def test_usage_errors_are_input_invalid_with_their_json_object(
    args: tuple[str, ...], said: str, as_json: bool
) -> None:
    res = fails("input.invalid", *args, *(["--json"] * as_json))
    assert res.returncode == 2, str(res)
    assert said in res.stderr, str(res)
    # For people: click's usage line and where to find help, after the error line.
    assert "Usage: " in res.stderr and " -h' for help." in res.stderr, str(res)
    if as_json:
        assert said in res.json()["error"]["message"], str(res)
    else:
        assert res.stdout == "", str(res)


def test_no_arguments_still_shows_the_help() -> None:
    res = run_cli()
    assert res.returncode == 2 and "Commands:" in res.stdout + res.stderr, str(res)


def _value_params() -> Iterator[tuple[str, str, str | None]]:
    """(command path, parameter, metavar) for every argument and every option that
    takes a value, in every command and sub-command."""
    import typer

    from secpack.cli import app

    # typer may bring its own copy of click, so parameters are told apart by what
    # they say they are rather than by click's classes.
    def walk(cmd: Any, path: str) -> Iterator[tuple[str, str, str | None]]:
        for p in cmd.params:
            if p.param_type_name == "argument" or (
                p.param_type_name == "option" and not p.is_flag and not p.count
            ):
                yield path, p.opts[0], p.metavar
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, f"{path} {name}")

    return walk(typer.main.get_command(app), "secpack")


def test_every_value_in_the_help_is_named() -> None:
    """Each argument and each option that takes a value names what it takes (FILE,
    N, fast|balanced|max), so the help reads the same whatever typer renders for an
    unnamed one (``<str>``, ``TEXT``)."""
    params = list(_value_params())
    assert len(params) > 40, params  # the walk reached the sub-commands
    unnamed = [(c, p) for c, p, metavar in params if not metavar]
    assert unnamed == []


@pytest.mark.parametrize(
    "bad",
    [
        ("--segment-size", "0"),
        ("--level", "foo"),
        ("--threads", "-1"),
        ("--threads", "abc"),
        ("--version", "0"),
        ("--recipient", "config="),
        ("--component", "weights"),
    ],
)
def test_bad_option_values_all_exit_2(
    tmp_path: Path, model_dir: Path, release_key: KeyPair, server_key: KeyPair, bad: tuple[str, str]
) -> None:
    """One code, one exit status: a value that click refuses and one that secpack
    refuses, before or deep inside the seal, are the same kind of error."""
    recipient = () if bad[0] == "--recipient" else ("--recipient", server_key.public)
    args = ("seal", model_dir, "-o", tmp_path / "m.spk", "--sign-key", release_key.private)
    res = fails("input.invalid", *args, *recipient, *bad, "--json")
    assert res.returncode == 2, str(res)
    assert not (tmp_path / "m.spk").exists()


@pytest.mark.parametrize("mib", ["0", "17", "-1", "4096"])
def test_a_segment_size_out_of_range_is_told_in_mib(
    tmp_path: Path, model_dir: Path, release_key: KeyPair, mib: str
) -> None:
    """--segment-size takes MiB; the refusal says so, not the library's bytes."""
    args = ("seal", model_dir, "-o", tmp_path / "m.spk", "--sign-key", release_key.private)
    res = fails("input.invalid", *args, "--no-encrypt", "--segment-size", mib)
    assert f"from 1 to 16 (MiB), not {mib}" in res.stderr, str(res)
    # Before any key is read: not a missing key's error.
    missing = ("seal", model_dir, "-o", tmp_path / "m.spk", "--sign-key", tmp_path / "no.key")
    res = fails("input.invalid", *missing, "--no-encrypt", "--segment-size", mib)
    assert "(MiB)" in res.stderr, str(res)
    assert "1048576" not in res.stderr


def test_a_refusal_of_the_operation_still_exits_1(tmp_path: Path, release_key: KeyPair) -> None:
    res = fails("input.missing", "verify", tmp_path / "missing.spk", "--trust", release_key.public)
    assert res.returncode == 1, str(res)


def _under_address_limit(
    mib: int, args: Sequence[str | os.PathLike[str]]
) -> tuple[int, dict[str, Any]]:
    """``secpack ARGS --json`` in a process limited to ``mib`` MiB of address space
    (RLIMIT_AS, ``ulimit -v``): its exit status and its JSON report ({} if none)."""
    import json
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (mib << 20, mib << 20))

    res = subprocess.run(
        [sys.executable, "-m", "secpack", *(os.fspath(a) for a in args), "--json"],
        env=clean_env({"SECPACK_AUDIT": "off"}),
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in res.stderr, res.stderr
    try:
        return res.returncode, json.loads(res.stdout)
    except ValueError:
        return res.returncode, {}


@pytest.mark.parametrize("verb", ["seal", "open"])
def test_just_too_little_memory_is_limit_exceeded(
    tmp_path: Path,
    model_dir: Path,
    sealed: Path,
    release_key: KeyPair,
    server_key: KeyPair,
    verb: str,
) -> None:
    """Run out of memory, and the report was ``error[internal]`` with a Python type
    name (a MemoryError, a thread that would not start, zstd's allocation error),
    or ``output.io`` for a library that could not be mapped. Found by halving the
    address-space limit between one that is enough and one that is not, the run
    1 MiB below enough fails inside secpack's own work: it must say
    ``limit.exceeded`` and what asks for less, and leave nothing behind. (Near
    there a seal also crashed, SIGSEGV, in cryptography's OpenSSL, at limits that
    moved with the process's layout: secpack.entry.one_malloc_arena.)"""
    out = tmp_path / "out"
    args: tuple[str | os.PathLike[str], ...]
    if verb == "seal":
        args = ("seal", model_dir, "-o", out, "--sign-key", release_key.private)
        args += ("--recipient", server_key.public)
    else:
        args = ("open", sealed, "-o", out, "--identity", server_key.private)
        args += ("--trust", release_key.public)

    def remove() -> None:
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink()

    def run(mib: int) -> dict[str, Any] | None:
        rc, report = _under_address_limit(mib, args)
        if rc != 0:
            return report
        remove()
        return None

    last = just_short(run, 2048, 32, within=1)
    assert last.get("error", {}).get("code") == "limit.exceeded", last
    assert "--threads 1" in last["error"]["message"]
    # Only seal has a segment size to make smaller.
    assert ("--segment-size" in last["error"]["message"]) == (verb == "seal")
    assert list(tmp_path.iterdir()) == []


def test_what_counts_as_out_of_memory_or_threads(tmp_path: Path) -> None:
    """Resource errors are named by what they are, and followed through explicit
    causes; an error raised while handling one (a disk's, a bug's) is itself."""
    import errno

    from secpack.errors import out_of_resources as _out_of_resources

    def during(inner: BaseException, outer: BaseException) -> BaseException:
        try:
            try:
                raise inner
            except BaseException:
                raise outer  # noqa: B904 -- raised while handling, on purpose
        except BaseException as caught:
            return caught

    assert _out_of_resources(MemoryError())
    assert _out_of_resources(OSError(errno.ENOMEM, "Cannot allocate memory"))
    assert _out_of_resources(RuntimeError("can't start new thread"))
    wrapped = ImportError("numpy failed")
    wrapped.__cause__ = OSError(errno.ENOMEM, "Cannot allocate memory")
    assert _out_of_resources(wrapped)
    assert not _out_of_resources(during(MemoryError(), OSError(errno.ENOSPC, "disk full")))
    assert not _out_of_resources(
        during(RuntimeError("can't start new thread"), AttributeError("a bug"))
    )
    assert not _out_of_resources(OSError(errno.ENOSPC, "No space left on device"))
    assert not _out_of_resources(RuntimeError("something else"))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a noexec tmpfs: needs root")
def test_a_library_on_a_noexec_mount_is_not_called_out_of_memory(tmp_path: Path) -> None:
    """glibc says "failed to map segment" for a noexec mount as for want of memory;
    the mount's flag tells them apart."""
    from secpack.errors import out_of_resources as _out_of_resources

    mnt = tmp_path / "noexec"
    mnt.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "noexec,size=1m", "tmpfs", str(mnt)], check=False
    ).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        lib = mnt / "lib.so"
        lib.write_bytes(b"")
        text = f"{lib}: failed to map segment from shared object"
        assert not _out_of_resources(ImportError(text, path=str(lib)))
        elsewhere = tmp_path / "lib.so"
        elsewhere.write_bytes(b"")
        assert _out_of_resources(ImportError(text, path=str(elsewhere)))
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
