"""An interrupt that comes once a verb's output is in place: the verb finishes, its
audit record says what it did, and the command line reports its own outcome; a
library caller gets the interrupt once the output is whole and recorded."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import EXAMPLE_KEYS, assert_same_tree, build_model, ok, run_cli

from secpack.audit.log import read_log
from secpack.interrupts import held, verb
from secpack.transport import atomic


@pytest.fixture(autouse=True)
def _handlers_as_they_were() -> Iterator[None]:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


def _no_hold_left() -> None:
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_signal_while_held_comes_at_the_end_of_the_block() -> None:
    steps = []
    with pytest.raises(KeyboardInterrupt), held():
        signal.raise_signal(signal.SIGINT)
        steps.append("after the signal")
        with held():  # nested: the inner end delivers nothing
            pass
        steps.append("after the inner block")
    assert steps == ["after the signal", "after the inner block"]
    _no_hold_left()


def test_a_held_signal_goes_to_the_handler_that_was_there_before() -> None:
    came: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: came.append(signum))
    with held():
        signal.raise_signal(signal.SIGTERM)
        assert came == []
    assert came == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    _no_hold_left()


def test_a_second_signal_is_not_held() -> None:
    # The user insists (a verb stuck after its commit can still be stopped).
    came: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: came.append(signum))
    steps = []
    with pytest.raises(KeyboardInterrupt), held():
        signal.raise_signal(signal.SIGTERM)
        steps.append("held")
        signal.raise_signal(signal.SIGINT)  # both given here, each to its own handler
        steps.append("not reached")
    assert steps == ["held"] and came == [signal.SIGTERM]
    _no_hold_left()


def test_a_host_told_through_a_wakeup_fd_is_not_told_twice() -> None:
    # asyncio's add_signal_handler: a no-op handler and a wakeup fd, which the
    # signal writes to as it comes, held or not.
    import socket

    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    calls: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
    old = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    try:
        with held():
            signal.raise_signal(signal.SIGINT)
        assert calls == [signal.SIGINT]
        assert reader.recv(16) == bytes([signal.SIGINT])  # once
    finally:
        signal.set_wakeup_fd(old)
        reader.close()
        writer.close()


def test_a_signal_while_the_handlers_are_put_back_leaves_none_of_ours(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from secpack import interrupts

    real = signal.signal
    calls = []

    def interrupted_once(signum: int, handler: Any) -> Any:
        previous = real(signum, handler)
        calls.append(signum)
        if len(calls) == 3:  # the first handler put back: a Ctrl-C lands there
            raise KeyboardInterrupt
        return previous

    before = signal.getsignal(signal.SIGTERM)  # another test may have set one
    monkeypatch.setattr(interrupts.signal, "signal", interrupted_once)
    with pytest.raises(KeyboardInterrupt), held():
        pass
    monkeypatch.undo()
    assert interrupts._saved == {} and interrupts._pending == []
    assert signal.getsignal(signal.SIGTERM) is before
    _no_hold_left()


def test_an_ignored_signal_stays_ignored() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with held():
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN


def test_under_a_verb_the_hold_lasts_to_its_end() -> None:
    steps = []
    with pytest.raises(KeyboardInterrupt), verb(deliver=True):
        with held():
            pass
        signal.raise_signal(signal.SIGINT)  # after the commit: still held
        steps.append("the verb's record")
    assert steps == ["the verb's record"]
    with verb(deliver=False):  # the command line's: dropped
        with held():
            signal.raise_signal(signal.SIGINT)
        with verb(deliver=True):  # a library verb inside it delivers nothing
            pass
        steps.append("the report")
    assert steps == ["the verb's record", "the report"]
    _no_hold_left()


def test_a_verb_that_never_commits_holds_nothing() -> None:
    with pytest.raises(KeyboardInterrupt), verb(deliver=False):
        signal.raise_signal(signal.SIGINT)


def test_off_the_main_thread_nothing_is_held() -> None:
    seen: list[object] = []

    from secpack import interrupts

    def work() -> None:
        try:
            with verb(deliver=True), held():
                seen.append(signal.getsignal(signal.SIGINT))
                seen.append((interrupts._state.depth, interrupts._state.verbs))
        except BaseException as exc:  # reported through the list
            seen.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler, (0, [])]


def _then_interrupt(real: Callable[..., Any]) -> Callable[..., Any]:
    """``real``, then Ctrl-C, as if it came right after the rename put the output
    in place (Python runs a signal's handler between any two steps). Once: the
    audit log's own renames come next, and a second signal is not held."""
    done: list[bool] = []

    def call(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        if not done:
            done.append(True)
            signal.raise_signal(signal.SIGINT)
        return result

    return call


def _model(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A small model, where its package goes, and the audit log to record in."""
    return build_model(tmp_path / "m", scale=8), tmp_path / "m.spk", tmp_path / "audit.jsonl"


def _records(log: Path) -> list[tuple[str, str, str | None]]:
    out = []
    for _, raw in read_log(str(log)):
        r = json.loads(raw)
        out.append((r["action"], r["outcome"], r.get("code")))
    return out


@pytest.mark.parametrize("force", [False, True])  # link() then unlink(), or replace()
def test_seal_interrupted_once_its_package_is_in_place_reports_its_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, force: bool
) -> None:
    model = build_model(tmp_path / "m", scale=8)
    pkg = tmp_path / "m.spk"
    if force:
        pkg.write_bytes(b"an older package")
    log = tmp_path / "audit.jsonl"
    call = "replace" if force else "link"
    monkeypatch.setattr(atomic.os, call, _then_interrupt(getattr(os, call)))
    res = ok(
        "seal", model, "-o", pkg, "--no-encrypt", "--json",
        "--sign-key", EXAMPLE_KEYS / "signing-ed25519.key",
        *(["--force"] if force else []),
        env={"SECPACK_AUDIT_LOG": str(log)},
    )  # fmt: skip
    assert res.json()["ok"] is True
    monkeypatch.undo()
    _no_hold_left()
    assert sorted(os.listdir(tmp_path)) == ["audit.jsonl", "audit.jsonl.head", "m", "m.spk"]
    ok("verify", pkg, "--trust", EXAMPLE_KEYS / "signing-ed25519.key.pub")
    assert _records(log)[0] == ("seal", "ok", None)


def test_open_interrupted_once_its_directory_is_in_place_reports_its_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, pkg, log = _model(tmp_path)
    env = {"SECPACK_AUDIT_LOG": str(log)}
    ok(
        "seal", model, "-o", pkg, "--sign-key", EXAMPLE_KEYS / "signing-ed25519.key",
        "--recipient", EXAMPLE_KEYS / "recipient-x25519.key.pub", env=env,
    )  # fmt: skip
    monkeypatch.setattr(atomic.os, "rename", _then_interrupt(os.rename))
    ok(
        "open", pkg, "-o", tmp_path / "out", "--identity", EXAMPLE_KEYS / "recipient-x25519.key",
        "--trust", EXAMPLE_KEYS / "signing-ed25519.key.pub", env=env,
    )  # fmt: skip
    monkeypatch.undo()
    _no_hold_left()
    assert_same_tree(model, tmp_path / "out")
    assert _records(log)[-1] == ("open", "ok", None)


def test_an_interrupt_before_the_rename_still_stops_the_verb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, pkg, log = _model(tmp_path)

    real_fsync = os.fsync

    def fsync_then_interrupt(fd: int) -> None:
        # Ctrl-C during the package's last fsync, before its rename.
        real_fsync(fd)
        if ".spk" in os.readlink(f"/proc/self/fd/{fd}"):
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(atomic.os, "fsync", fsync_then_interrupt)
    res = run_cli(
        "seal", model, "-o", pkg, "--no-encrypt",
        "--sign-key", EXAMPLE_KEYS / "signing-ed25519.key",
        env={"SECPACK_AUDIT_LOG": str(log)},
    )  # fmt: skip
    monkeypatch.undo()
    assert res.returncode == 130 and res.error_code == "interrupted"
    assert sorted(os.listdir(tmp_path)) == ["audit.jsonl", "audit.jsonl.head", "m"]
    assert _records(log) == [("seal", "error", "interrupted")]


def test_keygen_interrupted_between_its_two_files_writes_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    renames = []
    real_link = os.link

    def link_then_interrupt(src: str, dst: str) -> None:
        real_link(src, dst)
        renames.append(dst)
        if len(renames) == 1:  # the private key is in place, its public half not yet
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(atomic.os, "link", link_then_interrupt)
    key = tmp_path / "k.key"
    ok("keygen", "signing", "-o", key)
    monkeypatch.undo()
    _no_hold_left()
    assert len(renames) == 2 and key.exists() and (tmp_path / "k.key.pub").exists()


def test_a_library_caller_gets_its_interrupt_after_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from secpack.api.keyfiles import load_signing_key
    from secpack.api.seal import seal

    model, pkg, log = _model(tmp_path)
    monkeypatch.setenv("SECPACK_AUDIT_LOG", str(log))
    monkeypatch.setattr(atomic.os, "link", _then_interrupt(os.link))
    key = load_signing_key(str(EXAMPLE_KEYS / "signing-ed25519.key"))
    with pytest.raises(KeyboardInterrupt):
        seal(model, pkg, sign_keys=[key], encrypt=False)
    monkeypatch.undo()
    _no_hold_left()
    assert _records(log) == [("seal", "ok", None)]
    ok("verify", pkg, "--trust", EXAMPLE_KEYS / "signing-ed25519.key.pub")


_AFTER_THE_VERB = """
import os, signal, sys
import secpack.cli as cli
target = cli.main.__code__

def trace(frame, event, arg):
    if frame.f_code is not target:
        return None

    def line(f, e, a):
        if e == "line" and "done.code is None" in LINES[f.f_lineno - 1] and not SENT:
            SENT.append(1)
            os.kill(os.getpid(), signal.SIGINT)  # the verb is over; main is exiting
        return line

    return line

LINES = open(target.co_filename).read().splitlines()
SENT = []
sys.settrace(trace)
sys.argv = ["secpack", "keygen", "signing", "-o", sys.argv[1]]
from secpack.entry import main
main()
"""


def test_a_signal_after_the_verb_has_its_outcome_changes_nothing(tmp_path: Path) -> None:
    # Between the verb's end and os._exit (click's SystemExit handled in
    # cli.main), a Ctrl-C printed a traceback and ended the process by SIGINT,
    # though the keys were written.
    import subprocess
    import sys

    key = tmp_path / "k.key"
    proc = subprocess.run(
        [sys.executable, "-c", _AFTER_THE_VERB, str(key)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and key.exists() and Path(f"{key}.pub").exists()


@pytest.mark.parametrize("lands", ["on our recorder", "on the handler put back"])
def test_a_signal_while_a_release_runs_is_given_with_the_rest(
    monkeypatch: pytest.MonkeyPatch, lands: str
) -> None:
    # signal.signal runs the handlers of signals already come before it swaps.
    # A SIGINT landing on our recorder while SIGINT's handler was put back
    # re-entered the release (RecursionError, a recorder left for good); one
    # landing on the real handler, put back already, left SIGTERM's swap undone.
    from secpack import interrupts

    came: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: came.append(signum))
    host = signal.getsignal(signal.SIGTERM)
    real = signal.signal
    fired: list[bool] = []

    def landing(signum: int, handler: Any) -> Any:
        if not fired and lands == "on our recorder" and signum == signal.SIGINT:
            fired.append(True)
            interrupts._note(signal.SIGINT, None)  # SIGINT's handler is still ours
        if not fired and lands == "on the handler put back" and signum == signal.SIGTERM:
            fired.append(True)
            raise KeyboardInterrupt  # SIGINT's real handler, run before the swap
        return real(signum, handler)

    with pytest.raises(KeyboardInterrupt), held():
        signal.raise_signal(signal.SIGTERM)
        monkeypatch.setattr(interrupts.signal, "signal", landing)
    monkeypatch.undo()
    assert fired and came == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is host
    assert interrupts._saved == {} and interrupts._pending == []
    _no_hold_left()


def test_a_firm_hold_keeps_even_a_second_signal_to_its_end() -> None:
    steps = []
    with pytest.raises(KeyboardInterrupt), held(firm=True):
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
        steps.append("both held")
    assert steps == ["both held"]
    _no_hold_left()
    # Inside a verb, a second signal that waited for a firm block comes at its end.
    with pytest.raises(KeyboardInterrupt), verb(deliver=False), held():
        signal.raise_signal(signal.SIGINT)
        with held(firm=True):
            signal.raise_signal(signal.SIGINT)
            steps.append("firm")
        steps.append("not reached")
    assert steps == ["both held", "firm"]
    _no_hold_left()


def test_after_the_console_scripts_verb_no_signal_lands(monkeypatch: pytest.MonkeyPatch) -> None:
    from secpack import interrupts

    monkeypatch.setattr(interrupts._state, "to_exit", True)
    with verb(deliver=False):
        pass
    signal.raise_signal(signal.SIGINT)
    signal.raise_signal(signal.SIGINT)  # nor a second: only the exit is left
    assert interrupts._pending == [signal.SIGINT, signal.SIGINT]
    interrupts._release(deliver=False)  # what os._exit would make moot
    _no_hold_left()


def test_a_record_that_is_in_keeps_what_it_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two Ctrl-Cs just after the package's rename: the second is given once the
    # record and its head are written. The verb stops (the user insisted), and
    # the record says "ok": the package stays. (It was removed, under the record.)
    from secpack.audit import log as audit_log

    model, pkg, log = _model(tmp_path)
    real_link = os.link

    def link_then_twice(src: str, dst: str) -> None:
        real_link(src, dst)
        if dst.endswith(".spk"):
            signal.raise_signal(signal.SIGINT)

    real_head = audit_log._write_head

    def head_then_again(path: str, seq: int, digest: str) -> None:
        real_head(path, seq, digest)
        if seq == 0:
            signal.raise_signal(signal.SIGINT)  # waits for the firm hold's end

    monkeypatch.setattr(atomic.os, "link", link_then_twice)
    monkeypatch.setattr(audit_log, "_write_head", head_then_again)
    res = run_cli(
        "seal", model, "-o", pkg, "--no-encrypt",
        "--sign-key", EXAMPLE_KEYS / "signing-ed25519.key",
        env={"SECPACK_AUDIT_LOG": str(log)},
    )  # fmt: skip
    monkeypatch.undo()
    _no_hold_left()
    assert res.returncode == 130
    assert _records(log) == [("seal", "ok", None)] and pkg.exists()
    ok("verify", pkg, "--trust", EXAMPLE_KEYS / "signing-ed25519.key.pub")
