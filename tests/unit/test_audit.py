"""The audit log: every verb is recorded, and any tampering is found at the right line."""

from __future__ import annotations

import json
import multiprocessing
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from secpack.api.keyfiles import load_signing_key, resolve_policy
from secpack.audit.log import append, read_log, verify_log
from secpack.errors import SecpackError
from secpack.recipes.keys import key_id

ROOT = Path(__file__).resolve().parents[2]
KEYS = ROOT / "keys-example"


def _fill(path: Path, n: int) -> list[bytes]:
    for i in range(n):
        append("verify", outcome="ok", package={"name": f"p{i}", "version": i + 1}, path=str(path))
    return [raw for _, raw in read_log(str(path))]


def _rewrite(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def test_intact_log_verifies(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = _fill(log, 5)
    assert len(lines) == 5
    assert verify_log(str(log)) is None
    records = [json.loads(line) for line in lines]
    assert [r["seq"] for r in records] == list(range(5))
    assert records[0]["prev"] == "0" * 64


@pytest.mark.parametrize(
    ("tamper", "bad_line"),
    [
        ("edit", 3),
        ("delete", 3),
        ("swap", 2),
        ("insert", 3),
        ("truncate-last", 5),
        ("truncate-partial", 5),
        ("reformat", 4),
    ],
)
def test_tampering_is_found_at_the_first_bad_line(
    tmp_path: Path, tamper: str, bad_line: int
) -> None:
    log = tmp_path / "audit.jsonl"
    lines = _fill(log, 5)
    if tamper == "edit":
        record = json.loads(lines[2])
        record["outcome"] = "error"
        lines[2] = json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    elif tamper == "delete":
        del lines[2]
    elif tamper == "swap":
        lines[1], lines[2] = lines[2], lines[1]
    elif tamper == "insert":
        lines.insert(2, lines[1])
    elif tamper == "truncate-last":
        del lines[4]
    elif tamper == "truncate-partial":
        lines[4] = lines[4][:-10]
    else:
        lines[3] = json.dumps(json.loads(lines[3]), indent=1).encode().replace(b"\n", b" ") + b"\n"
    _rewrite(log, lines)
    problem = verify_log(str(log))
    assert problem is not None
    assert problem.line == bad_line, problem


def test_signed_records(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    key = load_signing_key(str(KEYS / "signing-p256.key"))
    other = load_signing_key(str(KEYS / "signing-ed25519.key"))
    for i in range(3):
        append(
            "seal", outcome="ok", package={"name": "m", "version": i + 1}, path=str(log), sign=key
        )
    keys = {key_id(key.public_key()).hex(): key.public_key()}
    assert verify_log(str(log), keys) is None
    problem = verify_log(str(log), {key_id(other.public_key()).hex(): other.public_key()})
    assert problem is not None and problem.line == 1
    # An unsigned record among signed ones is refused when signatures are required.
    append("verify", outcome="ok", path=str(log))
    problem = verify_log(str(log), keys)
    assert problem is not None and problem.line == 4


def _writer(path: str, worker: int, count: int) -> None:
    for i in range(count):
        append("load", outcome="ok", package={"name": f"w{worker}", "version": i + 1}, path=path)


def test_concurrent_writers_lose_and_corrupt_nothing() -> None:
    # tmpfs (when there is one) keeps 4000 fsyncs cheap; the locking is the same.
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        log = os.path.join(tmp, "audit.jsonl")
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_writer, args=(log, w, 500)) for w in range(8)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
            assert p.exitcode == 0
        assert verify_log(log) is None
        records = [json.loads(raw) for _, raw in read_log(log)]
        assert len(records) == 4000
        for w in range(8):
            versions = [r["package"]["version"] for r in records if r["package"]["name"] == f"w{w}"]
            assert versions == list(range(1, 501))


def test_verbs_are_recorded_without_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from secpack.api.extract import extract
    from secpack.api.keyfiles import load_identity, load_recipient
    from secpack.api.seal import seal
    from secpack.api.verify import verify
    from secpack.errors import SecpackError
    from secpack.sign.policy import policy_from_keys

    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv("SECPACK_AUDIT_LOG", str(log))
    model = tmp_path / "m"
    model.mkdir()
    secret_text = b"TOP-SECRET-WEIGHTS-" * 100
    (model / "w.bin").write_bytes(secret_text)
    pkg = tmp_path / "m.spk"
    seal(
        str(model),
        str(pkg),
        sign_keys=[load_signing_key(str(KEYS / "signing-ed25519.key"))],
        recipients=[(None, load_recipient(str(KEYS / "recipient-x25519.key.pub")))],
    )
    policy = policy_from_keys([("k", (KEYS / "signing-ed25519.key.pub").read_bytes())])
    verify(str(pkg), policy)
    extract(
        str(pkg),
        str(tmp_path / "out"),
        identities=[load_identity(str(KEYS / "recipient-x25519.key"))],
        policy=policy,
    )
    with pytest.raises(SecpackError):
        verify(str(pkg), policy_from_keys([("k", (KEYS / "signing-p256.key.pub").read_bytes())]))
    records = [json.loads(raw) for _, raw in read_log(str(log))]
    assert [(r["action"], r["outcome"], r["code"]) for r in records] == [
        ("seal", "ok", None),
        ("verify", "ok", None),
        ("open", "ok", None),
        ("verify", "error", "sig.untrusted"),
    ]
    assert all(r["package"]["name"] == "m" for r in records[:3])
    assert len({r["package"]["manifest_digest"] for r in records[:3]}) == 1
    raw = log.read_bytes()
    assert b"TOP-SECRET" not in raw
    for name in ("recipient-x25519.key", "signing-ed25519.key"):
        body = (KEYS / name).read_text().splitlines()[1]
        assert body.encode() not in raw
    assert verify_log(str(log)) is None


def test_cli_names_the_first_bad_line(tmp_path: Path) -> None:
    from helpers import run_cli

    log = tmp_path / "audit.jsonl"
    lines = _fill(log, 4)
    ok = run_cli("audit", "verify", "--log", log, "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["records"] == 4
    shown = run_cli("audit", "show", "--log", log, "--json")
    assert [r["seq"] for r in json.loads(shown.stdout)["records"]] == [0, 1, 2, 3]
    del lines[1]
    _rewrite(log, lines)
    bad = run_cli("audit", "verify", "--log", log)
    assert bad.returncode == 1
    assert bad.error_code == "audit.tampered"
    assert "line 2:" in bad.stderr


def test_audit_key_signs_every_record_and_a_bad_one_refuses_the_verb(tmp_path: Path) -> None:
    # In processes of their own: the CLI puts --audit-key into its environment.
    from helpers import run_cli

    log = tmp_path / "audit.jsonl"
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    sign_key = KEYS / "signing-ed25519.key"
    env = {"SECPACK_AUDIT_LOG": str(log)}
    sealed = run_cli(
        "--audit-key",
        KEYS / "signing-p256.key",
        "seal",
        model,
        "-o",
        tmp_path / "p.spk",
        "--sign-key",
        sign_key,
        "--no-encrypt",
        env=env,
        subprocess_=True,
    )
    assert sealed.returncode == 0, sealed.stderr
    verified = run_cli(
        "verify",
        tmp_path / "p.spk",
        "--trust",
        f"{sign_key}.pub",
        env={**env, "SECPACK_AUDIT_KEY": str(KEYS / "signing-p256.key")},
        subprocess_=True,
    )
    assert verified.returncode == 0, verified.stderr
    records = [json.loads(raw) for _, raw in read_log(str(log))]
    assert [r["action"] for r in records] == ["seal", "verify"]
    assert all(r.get("sig") for r in records)
    checked = run_cli("audit", "verify", "--log", log, "--key", KEYS / "signing-p256.key.pub")
    assert checked.returncode == 0, checked.stderr
    wrong = run_cli("audit", "verify", "--log", log, "--key", KEYS / "recipient-x25519.key.pub")
    assert wrong.error_code == "key.invalid"
    # A key that cannot sign refuses the verb before it runs, and records nothing.
    for bad in (tmp_path / "missing.key", KEYS / "recipient-x25519.key", model / "config.json"):
        refused = run_cli(
            "--audit-key",
            bad,
            "seal",
            model,
            "-o",
            tmp_path / "q.spk",
            "--sign-key",
            sign_key,
            "--no-encrypt",
            env=env,
            subprocess_=True,
        )
        assert refused.returncode != 0 and refused.error_code in ("key.invalid", "input.missing")
        assert not (tmp_path / "q.spk").exists()
    assert len(list(read_log(str(log)))) == 2


def test_export_as_one_document_or_as_json_lines(tmp_path: Path) -> None:
    from helpers import run_cli

    log = tmp_path / "audit.jsonl"
    _fill(log, 3)
    whole = run_cli("audit", "export", "--log", log)
    assert whole.returncode == 0, str(whole)
    records = json.loads(whole.stdout)["records"]
    assert len(records) == 3
    lines = run_cli("audit", "export", "--log", log, "--jsonl")
    assert lines.returncode == 0, str(lines)
    assert [json.loads(line) for line in lines.stdout.splitlines()] == records


def test_a_log_that_is_not_a_regular_file_or_not_records_is_a_typed_error(
    tmp_path: Path,
) -> None:
    from helpers import run_cli

    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    for verb in ("verify", "show", "export"):
        res = run_cli("audit", verb, "--log", fifo, timeout=30)
        assert res.error_code == "audit.io", (verb, res.stderr)
    with pytest.raises(SecpackError) as err:
        append("verify", outcome="ok", path=str(fifo))
    assert err.value.code == "audit.io"
    deep = tmp_path / "deep.jsonl"
    _fill(deep, 2)
    with deep.open("ab") as fh:
        fh.write(b"[" * 100_000 + b"]" * 100_000 + b"\n")
    assert run_cli("audit", "verify", "--log", deep).error_code == "audit.tampered"
    assert run_cli("audit", "show", "--log", deep).error_code == "audit.corrupt"
    with pytest.raises(SecpackError) as err:
        append("verify", outcome="ok", path=str(deep))
    assert err.value.code == "audit.corrupt"
    array = tmp_path / "array.jsonl"
    array.write_bytes(b"[1, 2, 3]\n")
    assert run_cli("audit", "show", "--log", array).error_code == "audit.corrupt"


@pytest.mark.parametrize("head", [b"junk", b"[" * 100_000, b"", None])
def test_a_truncated_log_with_its_head_garbled_or_gone_is_caught(
    tmp_path: Path, head: bytes | None
) -> None:
    log = tmp_path / "audit.jsonl"
    lines = _fill(log, 3)
    _rewrite(log, lines[:2])  # the last record cut away...
    head_file = Path(f"{log}.head")
    if head is None:
        head_file.unlink()  # ...and the head that would show it removed
    else:
        head_file.write_bytes(head)
    problem = verify_log(str(log))
    assert problem is not None and "head file" in problem.reason


@pytest.mark.parametrize("log_kind", ["fifo", "directory", "unreadable-last-record"])
def test_required_audit_refuses_a_verb_whose_record_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_kind: str
) -> None:
    """With SECPACK_AUDIT=required the log is checked before the verb runs: a seal
    that could not be recorded leaves no package (it used to fail only after its
    output was in place). In the default mode the same seal succeeds and warns."""
    from secpack.api.seal import seal

    log = tmp_path / "audit.jsonl"
    if log_kind == "fifo":
        os.mkfifo(log)
    elif log_kind == "directory":
        log.mkdir()
    else:
        log.write_bytes(b"[" * 100_000 + b"]" * 100_000 + b"\n")
    monkeypatch.setenv("SECPACK_AUDIT_LOG", str(log))
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    keys = [load_signing_key(str(KEYS / "signing-ed25519.key"))]
    monkeypatch.setenv("SECPACK_AUDIT", "required")
    with pytest.raises(SecpackError) as err:
        seal(str(model), str(tmp_path / "p.spk"), encrypt=False, sign_keys=keys)
    assert err.value.code in ("audit.io", "audit.corrupt")
    assert not (tmp_path / "p.spk").exists()
    monkeypatch.setenv("SECPACK_AUDIT", "on")
    seal(str(model), str(tmp_path / "p.spk"), encrypt=False, sign_keys=keys)
    assert (tmp_path / "p.spk").exists()


def _files_capped_at(size: int) -> Callable[[], None]:
    """A child's preexec: its files may not grow past ``size`` bytes (RLIMIT_FSIZE:
    the kernel writes what fits, then refuses with EFBIG, as a full disk does with
    ENOSPC), and that is an error, not the SIGXFSZ that would kill it."""

    def cap() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return cap


def _append_under_file_size_limit(path: str, room: int) -> str:
    """Append one record in a child whose files may grow only ``room`` bytes past
    the log's current size; the error code, or 'written'."""
    code = (
        "from secpack.audit.log import append\n"
        "from secpack.errors import SecpackError\n"
        "try:\n"
        f"    append('verify', outcome='ok', path={path!r})\n"
        "except SecpackError as exc:\n"
        "    print(exc.code)\n"
        "else:\n"
        "    print('written')\n"
    )
    import subprocess
    import sys

    cap = _files_capped_at(os.path.getsize(path) + room)
    out = subprocess.run(
        [sys.executable, "-c", code], preexec_fn=cap, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


@pytest.mark.parametrize("room", [0, 1, 40])
def test_a_record_the_disk_takes_only_part_of_is_not_left_torn(tmp_path: Path, room: int) -> None:
    """A write cut short (a full disk) left part of a record at the end of the log:
    every later append was then audit.corrupt, and `audit verify` said tampered.
    The log is cut back to where it was, and the next append succeeds."""
    log = tmp_path / "audit.jsonl"
    _fill(log, 3)
    before = log.read_bytes()
    head = (tmp_path / "audit.jsonl.head").read_bytes()
    assert _append_under_file_size_limit(str(log), room) == "audit.io"
    assert log.read_bytes() == before
    assert (tmp_path / "audit.jsonl.head").read_bytes() == head
    assert verify_log(str(log)) is None
    append("verify", outcome="ok", path=str(log))
    assert len(list(read_log(str(log)))) == 4
    assert verify_log(str(log)) is None


def test_a_head_that_cannot_be_replaced_takes_the_record_back(tmp_path: Path) -> None:
    """The record went in but its head file could not be replaced: the log said
    tampered (last record and head disagree) and a temporary was left behind. The
    record is taken back out, so that log and head still agree."""
    log = tmp_path / "audit.jsonl"
    _fill(log, 2)
    before = log.read_bytes()
    head = tmp_path / "audit.jsonl.head"
    kept = head.read_bytes()
    head.unlink()
    head.mkdir()  # os.replace cannot put a file over a non-empty directory
    (head / "x").write_text("x")
    with pytest.raises(SecpackError) as err:
        append("verify", outcome="ok", path=str(log))
    assert err.value.code == "audit.io"
    assert log.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.jsonl", "audit.jsonl.head"]
    (head / "x").unlink()
    head.rmdir()
    head.write_bytes(kept)
    assert verify_log(str(log)) is None
    append("verify", outcome="ok", path=str(log))
    assert verify_log(str(log)) is None


@pytest.mark.parametrize("verb", ["open", "seal"])
def test_required_audit_takes_back_an_output_its_record_could_not_cover(
    tmp_path: Path, verb: str
) -> None:
    """The log passed the check before the verb, but then could not take its record
    (here its file may not grow, as on a disk the verb itself filled). With
    SECPACK_AUDIT=required the verb fails, and it used to leave its output in
    place: a tree of decrypted files no record covers. That output is removed."""
    import subprocess
    import sys

    from helpers import build_model, clean_env

    model = build_model(tmp_path / "m")
    pkg = tmp_path / "p.spk"
    env = clean_env({"SECPACK_AUDIT": "off", "SECPACK_STATE_DIR": str(tmp_path / "state")})
    sealing = [
        "seal", str(model), "-o", str(pkg),
        "--sign-key", str(KEYS / "signing-ed25519.key"),
        "--recipient", str(KEYS / "recipient-x25519.key.pub"),
    ]  # fmt: skip
    subprocess.run([sys.executable, "-m", "secpack", *sealing], env=env, check=True)
    log = tmp_path / "audit.jsonl"
    _fill(log, 3000)  # larger than any file the verb writes
    before = log.read_bytes()
    largest = max(p.stat().st_size for p in model.rglob("*") if p.is_file())
    assert largest < len(before)
    out = tmp_path / ("opened" if verb == "open" else "again.spk")
    if verb == "open":
        args = ["open", str(pkg), "-o", str(out), "--identity", str(KEYS / "recipient-x25519.key")]
        args += ["--trust", str(KEYS / "signing-ed25519.key.pub")]
    else:
        args = [*sealing[:3], str(out), *sealing[4:]]
    env.update({"SECPACK_AUDIT": "required", "SECPACK_AUDIT_LOG": str(log)})
    res = subprocess.run(
        [sys.executable, "-m", "secpack", *args, "--json"],
        env=env,
        preexec_fn=_files_capped_at(len(before)),
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 1, res.stderr
    assert json.loads(res.stdout)["error"]["code"] == "audit.io"
    assert not out.exists()
    assert log.read_bytes() == before
    assert verify_log(str(log)) is None


def test_an_interrupt_after_the_head_names_the_record_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted just after the head file was replaced: the record is whole,
    fsynced and named by the head, so it stays. Cutting it back made the head
    name a record the log no longer held: a false 'tampered'."""
    from secpack.audit import log as audit_log

    path = tmp_path / "audit.jsonl"
    _fill(path, 2)
    real = audit_log._write_head

    def then_interrupted(*args: object) -> None:
        real(*args)  # type: ignore[arg-type]
        raise KeyboardInterrupt

    monkeypatch.setattr(audit_log, "_write_head", then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        append("verify", outcome="ok", path=str(path))
    monkeypatch.setattr(audit_log, "_write_head", real)
    assert len(list(read_log(str(path)))) == 3
    assert verify_log(str(path)) is None


def test_required_audit_takes_back_an_open_interrupted_while_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the ok record is written: no record, so under SECPACK_AUDIT=
    required the opened tree goes too, as for a record that failed."""
    from helpers import build_model

    import secpack
    from secpack.audit import log as audit_log

    model = build_model(tmp_path / "m")
    monkeypatch.setenv("SECPACK_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("SECPACK_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    keys = [load_signing_key(str(KEYS / "signing-ed25519.key"))]
    pkg = tmp_path / "p.spk"
    secpack.seal(model, pkg, encrypt=False, sign_keys=keys)
    policy = resolve_policy([str(KEYS / "signing-ed25519.key.pub")], None)
    real = audit_log.append

    def interrupted_when_ok(action: str, **kw: object) -> object:
        if kw.get("outcome") == "ok":
            raise KeyboardInterrupt
        return real(action, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(audit_log, "append", interrupted_when_ok)
    monkeypatch.setenv("SECPACK_AUDIT", "required")
    out = tmp_path / "opened"
    out.mkdir(mode=0o700)
    with pytest.raises(KeyboardInterrupt):
        secpack.extract(pkg, out, identities=[], policy=policy)
    # The empty directory it replaced is back as it was: empty, and still 0700.
    assert out.is_dir() and list(out.iterdir()) == []
    assert out.stat().st_mode & 0o777 == 0o700


def test_a_fault_a_library_read_finds_after_the_open_is_recorded_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A load records itself when the package opens; a segment that fails its
    digest is found only when it is read, and adds a record of its own, once per
    failing call. Asking for a tensor the package does not have, or exporting to
    a path that exists, adds none."""
    import numpy as np
    from safetensors.numpy import save_file

    import secpack
    from secpack.api.seal import seal

    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv("SECPACK_AUDIT_LOG", str(log))
    model = tmp_path / "m"
    model.mkdir()
    rng = np.random.default_rng(3)
    save_file({"w": rng.standard_normal(1 << 18).astype(np.float32)}, str(model / "w.safetensors"))
    pkg = tmp_path / "m.spk"
    seal(
        str(model),
        str(pkg),
        encrypt=False,
        sign_keys=[load_signing_key(str(KEYS / "signing-ed25519.key"))],
    )
    trust = [str(KEYS / "signing-ed25519.key.pub")]
    taken = tmp_path / "taken.safetensors"
    taken.write_bytes(b"x")
    with secpack.open_package(pkg, trust=trust) as opened:
        # The caller's own mistakes: a name the package lacks, an output that exists.
        with pytest.raises(SecpackError) as unknown:
            opened.tensor("nothing")
        assert unknown.value.code == "tensor.unknown"
        with pytest.raises(SecpackError) as exists:
            opened.export_safetensors(path=str(taken))
        assert exists.value.code == "output.exists"
        # The weights' one segment is most of the file: flip a byte in its middle.
        with open(pkg, "r+b") as f:
            f.seek(pkg.stat().st_size // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0x01]))
        for read in (lambda: opened.state_dict("weights"), lambda: list(opened.iter_tensors())):
            with pytest.raises(SecpackError) as err:
                read()
            assert err.value.code == "integrity"
    records = [json.loads(raw) for _, raw in read_log(str(log))]
    assert [(r["action"], r["outcome"], r["code"]) for r in records] == [
        ("seal", "ok", None),
        ("load", "ok", None),
        ("load", "error", "integrity"),
        ("load", "error", "integrity"),
    ]
    assert records[2]["package"] == records[1]["package"]
    assert records[2]["package"]["name"] == "m" and records[2]["package"]["path"] == str(pkg)
    assert verify_log(str(log)) is None


@pytest.mark.parametrize(
    ("raised", "code"),
    [
        (KeyboardInterrupt(), "interrupted"),
        (MemoryError(), "limit.exceeded"),
        (RuntimeError("can't start new thread"), "limit.exceeded"),
        (ZeroDivisionError(), "internal"),
    ],
)
def test_a_verb_stopped_by_something_not_secpacks_is_recorded_with_the_code_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raised: BaseException, code: str
) -> None:
    """The record's code is the one the command line reports: an interrupt (which
    may land after the output was complete) is not an internal error, nor is
    running out of memory or threads."""
    from secpack.api.auditing import audited

    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv("SECPACK_AUDIT_LOG", str(log))
    with pytest.raises(type(raised)), audited("open"):
        raise raised
    records = [json.loads(raw) for _, raw in read_log(str(log))]
    assert [(r["action"], r["outcome"], r["code"]) for r in records] == [("open", "error", code)]


@pytest.mark.parametrize(
    "last",
    [
        b'{"seq": 1e999}',  # a float too large for an int
        b'{"seq": Infinity}',
        b'{"seq": -1}',
        b'{"seq": 1.5}',
        b'{"seq": true}',
        b'{"seq": "3"}',
        b'{"seq": 3' + b" " * (2 << 20) + b"}",  # past what a record can be
    ],
)
def test_a_last_record_without_a_whole_sequence_number_is_corrupt_and_verbs_go_on(
    tmp_path: Path, last: bytes
) -> None:
    """``audit.corrupt`` when the next record is to be appended; a verb run in the
    default audit mode still does its work and warns (an infinite ``seq`` was an
    OverflowError, and every verb ended ``internal``)."""
    from helpers import run_cli

    log = tmp_path / "audit.jsonl"
    _fill(log, 2)
    with log.open("ab") as fh:
        fh.write(last)  # no newline: the tail is read backwards to the one before
    with pytest.raises(SecpackError) as err:
        append("verify", outcome="ok", path=str(log))
    assert err.value.code == "audit.corrupt"
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    sealed = run_cli(
        "seal",
        model,
        "-o",
        tmp_path / "p.spk",
        "--sign-key",
        KEYS / "signing-ed25519.key",
        "--no-encrypt",
        env={"SECPACK_AUDIT_LOG": str(log)},
        subprocess_=True,  # the warning goes to the process's own stderr
    )
    assert sealed.returncode == 0, sealed.stderr
    assert "audit.corrupt" in sealed.stderr
    assert (tmp_path / "p.spk").is_file()


@pytest.mark.parametrize(
    "record",
    [
        {"seq": 2, "package": [1]},
        {"seq": 2, "actor": "me"},
        {"seq": {}, "action": None},
        {},
    ],
)
def test_audit_show_prints_records_of_any_shape(tmp_path: Path, record: dict[str, object]) -> None:
    """A well-formed JSON object with fields of other types (hand-edited, or another
    writer's) is shown as it is; judging it is audit verify's part. It was an
    internal error or input.invalid."""
    from helpers import run_cli

    log = tmp_path / "audit.jsonl"
    _fill(log, 2)
    with log.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    shown = run_cli("audit", "show", "--log", log)
    assert shown.returncode == 0, shown.stderr
    assert len(shown.stdout.splitlines()) == 3
    assert run_cli("audit", "verify", "--log", log).error_code == "audit.tampered"


def test_audit_verbs_refuse_a_log_named_that_is_not_there(tmp_path: Path) -> None:
    from helpers import run_cli

    for verb in ("verify", "show", "export"):
        res = run_cli("audit", verb, "--log", tmp_path / "nowhere.jsonl")
        assert res.error_code == "input.missing", (verb, res.stdout, res.stderr)


def test_a_record_of_huge_fields_is_cut_and_the_log_goes_on(tmp_path: Path) -> None:
    """A caller's path, or a CI variable, of a megabyte: the record keeps 4096
    characters of it, saying how much was cut. Written whole, it was over what the
    next append reads back as a record, and the log stopped taking records."""
    log = tmp_path / "audit.jsonl"
    _fill(log, 1)
    record = append("verify", outcome="ok", package={"path": "p/" * 600_000}, path=str(log))
    assert record["package"]["path"].endswith("...(1195904 more characters)")
    assert len(log.read_bytes().splitlines()[-1]) < 8192
    assert append("verify", outcome="ok", path=str(log))["seq"] == record["seq"] + 1
    assert verify_log(str(log)) is None


def test_audit_verbs_refuse_a_dangling_link_as_the_log(tmp_path: Path) -> None:
    from helpers import run_cli

    link = tmp_path / "audit.jsonl"
    link.symlink_to(tmp_path / "gone.jsonl")
    for verb in ("verify", "show", "export"):
        assert run_cli("audit", verb, "--log", link).error_code == "input.missing", verb


def _big_log(path: Path, n: int) -> list[dict[str, object]]:
    # show and export print records as they are (the chain is verify's job), so a
    # long log can be written directly, without an fsync per record.
    records: list[dict[str, object]] = [
        {
            "seq": i,
            "time": "2026-01-01T00:00:00Z",
            "action": "verify",
            "outcome": "ok",
            "package": {"name": f"p{i}", "version": i + 1},
            "pad": "x" * 200,
        }
        for i in range(n)
    ]
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records))
    return records


def test_show_and_export_of_a_long_log_print_what_they_always_printed(tmp_path: Path) -> None:
    # Over 1 MiB of output, so that it is written in more than one piece.
    from helpers import run_cli

    log = tmp_path / "audit.jsonl"
    records = _big_log(log, 8000)
    shown = run_cli("audit", "show", "--log", log, "--json")
    assert shown.stdout == json.dumps({"ok": True, "records": records}, sort_keys=True) + "\n"
    exported = run_cli("audit", "export", "--log", log)
    assert exported.stdout == json.dumps({"ok": True, "records": records}) + "\n"
    lines = run_cli("audit", "export", "--log", log, "--jsonl")
    assert lines.stdout == "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    human = run_cli("audit", "show", "--log", log).stdout.splitlines()
    assert len(human) == 8000 and human[7999].split()[0] == "7999"
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert run_cli("audit", "show", "--log", empty, "--json").stdout == (
        json.dumps({"ok": True, "records": []}) + "\n"
    )


def test_a_bad_line_at_the_end_of_a_long_log_prints_no_records_first(tmp_path: Path) -> None:
    from helpers import run_cli

    log = tmp_path / "audit.jsonl"
    _big_log(log, 8000)
    with log.open("ab") as fh:
        fh.write(b"{not json\n")
    for args in (("show", "--json"), ("show",), ("export",), ("export", "--jsonl")):
        res = run_cli("audit", *args, "--log", log)
        assert res.error_code == "audit.corrupt" and "line 8001" in res.stderr, args
        if args in (("show", "--json"), ("export",)):  # export's default is --json
            assert json.loads(res.stdout)["ok"] is False  # one JSON object, the error
        else:
            assert res.stdout == "", args


def test_records_are_read_in_memory_that_does_not_grow_with_the_log(tmp_path: Path) -> None:
    import tracemalloc

    from secpack.audit.log import read_records

    log = tmp_path / "audit.jsonl"
    _big_log(log, 40_000)  # about 11 MB of records
    tracemalloc.start()
    try:
        count = sum(1 for _ in read_records(str(log)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 40_000
    assert peak < 1 << 20, peak  # a list of them was about 60 MB


def test_a_writer_killed_before_it_named_its_record_leaves_a_log_that_verifies(
    tmp_path: Path,
) -> None:
    # SIGKILL between the record's fsync and the head's replacement: the log is one
    # record past its head. That verifies (the chain covers the record), and the
    # next append names it; the head still catches a record cut from the end.
    log = tmp_path / "audit.jsonl"
    head = Path(f"{log}.head")
    append("verify", outcome="ok", path=str(log))
    assert json.loads(head.read_bytes())["seq"] == 0
    first_head = head.read_bytes()
    append("verify", outcome="ok", path=str(log))
    head.write_bytes(first_head)  # as if killed before the second record's head
    assert verify_log(str(log)) is None
    append("verify", outcome="ok", path=str(log))
    assert json.loads(head.read_bytes())["seq"] == 2 and verify_log(str(log)) is None
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:2]))  # the last record cut
    problem = verify_log(str(log))
    assert problem is not None and "truncated" in problem.reason


def test_a_writer_killed_before_its_first_record_was_named_leaves_a_log_that_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The very first record: a head naming no record is written before it, so a
    # kill after the record leaves a log past its head, not a log without one.
    from secpack.audit import log as audit_log

    log = tmp_path / "audit.jsonl"
    real = audit_log._write_head
    heads: list[int] = []

    def killed_at_the_record_s_head(path: str, seq: int, digest: str) -> None:
        heads.append(seq)
        if seq == 0:
            raise SystemExit  # stands for the kill: nothing after it runs
        real(path, seq, digest)

    monkeypatch.setattr(audit_log, "_write_head", killed_at_the_record_s_head)
    real_names = audit_log._head_names

    def named(path: str, seq: int, digest: str) -> bool:
        return seq == 0 or real_names(path, seq, digest)  # so no cleanup runs after "kill"

    monkeypatch.setattr(audit_log, "_head_names", named)
    with pytest.raises(SystemExit):
        append("verify", outcome="ok", path=str(log))
    monkeypatch.undo()
    assert heads == [-1, 0] and len(log.read_bytes().splitlines()) == 1
    assert verify_log(str(log)) is None
    head = Path(f"{log}.head")
    head.unlink()  # but a log of records without a head is still refused
    problem = verify_log(str(log))
    assert problem is not None and "missing" in problem.reason


def test_a_head_naming_a_changed_record_is_caught(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _fill(log, 3)
    head = Path(f"{log}.head")
    doc = json.loads(head.read_bytes())
    head.write_text(json.dumps({"seq": 1, "hash": doc["hash"]}))  # the last hash, too soon
    problem = verify_log(str(log))
    assert problem is not None and problem.line == 2 and "names" in problem.reason


def _appender(path: str, count: int) -> None:
    for i in range(count):
        append("verify", outcome="ok", package={"name": f"p{i}"}, path=path)


def test_verify_while_other_processes_append_sees_an_intact_log(tmp_path: Path) -> None:
    # verify read the log, then the head: an append in between made an intact log
    # "tampered" (a cron job's false alarm on a busy server).
    log = str(tmp_path / "audit.jsonl")
    append("verify", outcome="ok", path=log)
    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_appender, args=(log, 150)) for _ in range(2)]
    for w in writers:
        w.start()
    checks, problems = 0, []
    while any(w.is_alive() for w in writers) or checks == 0:
        problem = verify_log(log)
        checks += 1
        if problem is not None:
            problems.append(problem)
    for w in writers:
        w.join()
        assert w.exitcode == 0
    assert problems == [], (checks, problems[:3])
    assert verify_log(log) is None and len(list(read_log(log))) == 301


def _fill_keeping_heads(log: Path, n: int) -> tuple[list[bytes], list[bytes]]:
    """``n`` records, the head file as it was after each, and the log's lines."""
    head = Path(f"{log}.head")
    heads = []
    for i in range(n):
        append("verify", outcome="ok", package={"name": f"p{i}"}, path=str(log))
        heads.append(head.read_bytes())
    return heads, log.read_bytes().splitlines(keepends=True)


def test_records_cut_from_the_end_with_an_older_head_put_back_are_caught(
    tmp_path: Path,
) -> None:
    # Only the killed writer's one record may lie past the head: a stale head,
    # or the "no record yet" head, must not hide records cut from the end.
    log, head = tmp_path / "audit.jsonl", tmp_path / "audit.jsonl.head"
    heads, lines = _fill_keeping_heads(log, 10)
    log.write_bytes(b"".join(lines[:7]))
    for stale in (heads[4], json.dumps({"seq": -1, "hash": "0" * 64}).encode()):
        head.write_bytes(stale)
        problem = verify_log(str(log))
        assert problem is not None and "past the last one" in problem.reason, problem
    head.write_bytes(heads[5])  # one record past it: what a killed writer leaves
    assert verify_log(str(log)) is None
    head.write_bytes(heads[6])
    assert verify_log(str(log)) is None


def test_verify_counts_the_records_it_checked_and_waits_for_a_stuck_writer_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl

    from helpers import run_cli

    from secpack.audit import log as audit_log

    log = tmp_path / "audit.jsonl"
    _fill(log, 3)
    assert audit_log.check_log(str(log)) == (None, 3)
    # A writer that holds the lock (stopped, or on a hung file system): verify
    # says so after a while, instead of waiting without a word.
    monkeypatch.setattr(audit_log, "_LOCK_WAIT_SECONDS", 0.3)
    with open(log, "rb") as held_by_writer:
        fcntl.flock(held_by_writer.fileno(), fcntl.LOCK_EX)
        res = run_cli("audit", "verify", "--log", log)
    assert res.error_code == "audit.io" and "locked" in res.stderr
    ok = run_cli("audit", "verify", "--log", log, "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["records"] == 3


def test_a_cut_log_takes_no_record_that_would_hide_the_cut(tmp_path: Path) -> None:
    # The next record continued the chain from the cut log's last and named
    # itself in a new head: the cut then verified.
    log, head = tmp_path / "audit.jsonl", tmp_path / "audit.jsonl.head"
    heads, lines = _fill_keeping_heads(log, 6)
    log.write_bytes(b"".join(lines[:4]))
    for stale in (heads[5], heads[1]):  # the head left as it was, or an older one put back
        head.write_bytes(stale)
        with pytest.raises(SecpackError) as err:
            append("verify", outcome="ok", path=str(log))
        assert err.value.code == "audit.corrupt" and "cut" in err.value.detail
        assert log.read_bytes() == b"".join(lines[:4])  # nothing appended
        assert verify_log(str(log)) is not None
    # A writer killed before its head (one record past it) is no cut: appends go on.
    head.write_bytes(heads[2])
    append("verify", outcome="ok", path=str(log))
    assert verify_log(str(log)) is None
