"""The audit log: append-only JSON Lines with a hash chain.

Each record carries the SHA-256 of the previous line (``prev``), so an edited,
deleted, inserted or reordered record breaks the chain at a line that
:func:`verify_log` names. Truncation at the end leaves a valid chain, so every
append also rewrites a small ``.head`` file next to the log (last sequence
number and line hash) and, with an audit key, the records themselves are signed.

Writers hold an exclusive ``fcntl`` lock on the log for the read-append cycle, so
concurrent processes never interleave or fork the chain. Records hold only
public facts (action, package name, version, manifest digest, outcome, error
code, actor) and never keys, passphrases, file contents or paths inside packages.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import getpass
import hashlib
import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from secpack.errors import SecpackError

__all__ = [
    "AUDIT_ENV",
    "AuditProblem",
    "append",
    "check_log",
    "default_log_path",
    "landed",
    "read_log",
    "read_records",
    "verify_log",
]

AUDIT_ENV = "SECPACK_AUDIT_LOG"
FORMAT = 1
GENESIS = "0" * 64  # the "previous hash" of the first record
# CI systems whose job identity is worth recording (never their tokens).
_CI_VARS = {
    "github": (
        "GITHUB_ACTIONS",
        ["GITHUB_REPOSITORY", "GITHUB_WORKFLOW_REF", "GITHUB_RUN_ID", "GITHUB_SHA", "GITHUB_REF"],
    ),
    "gitlab": ("GITLAB_CI", ["CI_PROJECT_PATH", "CI_PIPELINE_ID", "CI_JOB_ID", "CI_COMMIT_SHA"]),
}


def default_log_path() -> str:
    explicit = os.environ.get(AUDIT_ENV)
    if explicit:
        return explicit
    from secpack.transport.state import default_state_dir

    return os.path.join(default_state_dir(), "audit.jsonl")


def _actor() -> dict[str, Any]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    # os.uname() is what socket.gethostname() reads, without importing socket
    # (several milliseconds on every package open, which writes a record).
    actor: dict[str, Any] = {"user": user, "host": os.uname().nodename}
    for system, (flag, names) in _CI_VARS.items():
        if os.environ.get(flag):
            actor["ci"] = {
                "system": system,
                **{n.lower(): os.environ[n] for n in names if n in os.environ},
            }
    return actor


def _canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k not in ("hash", "sig")}
    return hashlib.sha256(_canonical(body)).hexdigest()


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def _last_line(fd: int, path: str) -> bytes | None:
    """The log's last line (trailing newlines apart), read backwards a block at a
    time; None for an empty log. A record is a few hundred bytes: a last line
    past _MAX_RECORD is ``audit.corrupt``, not read whole (each verb reads it)."""
    end = os.lseek(fd, 0, os.SEEK_END)
    if end == 0:
        return None
    parts: list[bytes] = []
    held = 0
    trailing = True  # still skipping the newlines at the end
    while end > 0:
        start = max(0, end - _BLOCK)
        data = os.pread(fd, end - start, start)
        end = start
        if trailing:
            data = data.rstrip(b"\n")
            if not data:
                continue
            trailing = False
        cut = data.rfind(b"\n")
        parts.append(data[cut + 1 :])
        held += len(parts[-1])
        if held > _MAX_RECORD:
            raise SecpackError("audit.corrupt", f"{path}: last record is over {_MAX_RECORD} bytes")
        if cut >= 0:
            break
    return b"".join(reversed(parts))


# The tail is read in blocks of this size; a record is far smaller.
_BLOCK = 4096
# No record secpack writes comes near this (they are a few hundred bytes).
_MAX_RECORD = 1 << 20


@contextlib.contextmanager
def _locked_log(path: str) -> Iterator[tuple[int, int, str]]:
    """The log open for appending and locked: (descriptor, next sequence number,
    hash of the last line). ``audit.io`` / ``audit.corrupt`` when it cannot be."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # O_NONBLOCK: a FIFO or device at the log's name is refused, not waited on.
        fd = os.open(
            path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NONBLOCK, 0o600
        )
    except OSError as exc:
        raise SecpackError("audit.io", f"{path}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SecpackError("audit.io", f"{path} is not a regular file")
        fcntl.flock(fd, fcntl.LOCK_EX)
        last = _last_line(fd, path)
        if last is None:
            seq, prev = 0, GENESIS
        else:
            try:
                record = json.loads(last)
            except (ValueError, RecursionError):
                record = None
            number = record.get("seq") if isinstance(record, dict) else None
            # Exactly an integer: 1e999 and Infinity parse as floats, and int() of
            # them raised OverflowError, which every verb reported as internal.
            if type(number) is not int or number < 0:
                raise SecpackError("audit.corrupt", f"{path}: last record is unreadable")
            seq, prev = number + 1, _line_hash(last)
        _refuse_a_cut(path, seq, prev)
        yield fd, seq, prev
    except OSError as exc:
        raise SecpackError("audit.io", f"{path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _refuse_a_cut(path: str, seq: int, prev: str) -> None:
    """``audit.corrupt`` where the head shows records cut from the end: the head
    names a record past the log's last, or another last record, or one too far
    back (an older head put back). A record appended there would continue the
    chain and name itself in a new head, and the cut would verify. One record
    past the head is a writer killed before its head, as verify takes it."""
    head = _head_or_none(path)
    if not isinstance(head, dict):
        return  # no head (a log from before heads), or one verify reports itself
    named = head.get("seq")
    if type(named) is not int:
        return
    last = seq - 1
    if named > last or named < last - 1 or (named == last and head.get("hash") != prev):
        raise SecpackError(
            "audit.corrupt",
            f"{path}: its head names record {named}, and the log ends at record {last}: "
            "records were cut or changed (secpack audit verify)",
        )


def check_appendable(path: str | None = None) -> None:
    """Raise what ``append`` would (``audit.io``, ``audit.corrupt``) if the log
    cannot take a record now: SECPACK_AUDIT=required checks this before a verb
    runs, so that a verb whose record cannot be written does not take effect."""
    path = path or default_log_path()
    with _locked_log(path):
        if not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK):
            # The head file is replaced next to the log.
            raise SecpackError("audit.io", f"{path}: its directory is not writable")


def append(
    action: str,
    *,
    outcome: str,
    code: str | None = None,
    package: dict[str, Any] | None = None,
    path: str | None = None,
    sign: Any = None,
) -> dict[str, Any]:
    """Append one record and return it. ``sign``, if given, is an Ed25519 or ECDSA
    private key whose signature over the record is stored in it (``--audit-key``)."""
    path = path or default_log_path()
    with _locked_log(path) as (fd, seq, prev):
        record: dict[str, Any] = {
            "v": FORMAT,
            "seq": seq,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "actor": _bounded(_actor()),
            "action": action,
            "outcome": outcome,
            "code": code,
            "package": _bounded(package),
            "prev": prev,
        }
        # The record's own digest: an edited record is caught at its own line, before
        # the chain breaks at the next one.
        record["hash"] = _record_hash(record)
        if sign is not None:
            from secpack.recipes import signing
            from secpack.recipes.keys import key_id

            record["sig"] = {
                "kid": key_id(sign.public_key()).hex(),
                "alg": signing.cose_alg_of(sign),
                "value": base64.b64encode(signing.sign(sign, _canonical(record))).decode(),
            }
        line = _canonical(record) + b"\n"
        if len(line) > _MAX_RECORD:
            # Never written: as the last line it would make every later append
            # audit.corrupt (_last_line). _bounded keeps real records far below.
            raise SecpackError("audit.io", f"{path}: a record of {len(line)} bytes is too large")
        from secpack.interrupts import held

        # Local writes of a few milliseconds, which no signal cuts in two (not even
        # a second one: secpack.interrupts), so that the record is whole and named
        # by its head, or not there; and what the verb made is kept or taken back
        # (api.auditing) by the same account.
        with held(firm=True):
            _write_record(fd, path, seq, line)
            _landed.count = landed() + 1
        return record


# Records this thread has appended whole (landed()), so that a verb interrupted
# around its record knows whether the record is in.
_landed = threading.local()


def landed() -> int:
    """How many records this thread has appended, head included."""
    count: int = getattr(_landed, "count", 0)
    return count


def _write_record(fd: int, path: str, seq: int, line: bytes) -> None:
    end = os.lseek(fd, 0, os.SEEK_END)
    if seq == 0 and not _head_names(path, -1, GENESIS):
        # A head that names no record yet, before the first is written: a writer
        # killed between the record and its head then leaves a log one record
        # past its head (which verifies), not one without a head (which does
        # not: that is also what deleting the head of a cut log looks like).
        _write_head(path, -1, GENESIS)
    try:
        view = memoryview(line)
        while view:  # a full disk may take part of the line, then refuse the rest
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        _write_head(path, seq, _line_hash(line))
    except BaseException:
        # The record is not written, whatever part of it reached the file: the log
        # is cut back to where it ended, so that it and its head file still agree
        # (a torn last line would make every later append audit.corrupt). Unless
        # the head already names it (an interrupt just after its replacement):
        # then the record stands, whole and fsynced.
        if _head_names(path, seq, _line_hash(line)):
            raise
        with contextlib.suppress(OSError):
            os.ftruncate(fd, end)
            os.fsync(fd)
        raise


# The most characters of one text field a record keeps (a path, a CI variable):
# PATH_MAX is 4096. Longer ones are cut, saying how much, so that a record stays
# far below _MAX_RECORD even with every byte escaped (a non-UTF-8 byte is 6).
_MAX_FIELD = 4096


def _bounded(value: Any) -> Any:
    """``value`` with every string over _MAX_FIELD characters cut (the caller's
    path and the CI's variables are not secpack's to size)."""
    if isinstance(value, str) and len(value) > _MAX_FIELD:
        return f"{value[:_MAX_FIELD]}...({len(value) - _MAX_FIELD} more characters)"
    if isinstance(value, dict):
        return {k: _bounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_bounded(v) for v in value]
    return value


def _head_names(path: str, seq: int, digest: str) -> bool:
    """Whether the log's head file names record ``seq`` with this line hash."""
    try:
        head = _read_head(path)
    except OSError:  # FileNotFoundError: no head yet
        return False
    return head is not None and head.get("seq") == seq and head.get("hash") == digest


def _write_head(path: str, seq: int, digest: str) -> None:
    from secpack.transport.atomic import remove_stale, temp_name

    head = path + ".head"
    remove_stale(head)
    tmp = temp_name(head)
    try:
        with open(tmp, "w", encoding="ascii") as fh:
            json.dump({"seq": seq, "hash": digest}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, head)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_log(path: str | None = None) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, raw line) for each line of the log."""
    fh = _open_log(path)
    if fh is None:
        return
    with fh:
        yield from enumerate(fh, start=1)


def _open_log(path: str | None) -> BinaryIO | None:
    """The log (default: default_log_path) open for reading; None if absent."""
    try:
        return _open_regular(path or default_log_path())
    except FileNotFoundError:
        return None


def read_records(path: str | None = None) -> Iterator[dict[str, Any]]:
    """Each record of the log as a dict, oldest first, in constant memory.

    The whole log is checked before the first record is given, so that a caller
    that prints as it goes never prints half a log and then an error: every line
    must be a JSON object, or ``audit.corrupt``. Then the same open file is read
    again up to where the check ended (records appended meanwhile are left out).
    """
    fh = _open_log(path)
    if fh is None:
        return
    with fh:
        checked = 0
        for number, raw in enumerate(fh, start=1):
            _parsed(raw, number)
            checked = number
        fh.seek(0)
        for number, raw in enumerate(fh, start=1):
            if number > checked:
                break
            # Parsed again, not kept from the check: that would hold the log. A line
            # edited in place between the passes still fails here, part-way.
            yield _parsed(raw, number)


def _parsed(raw: bytes, number: int) -> dict[str, Any]:
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):  # nesting past the parser's stack
        raise SecpackError("audit.corrupt", f"line {number} is not JSON") from None
    if not isinstance(record, dict):
        raise SecpackError("audit.corrupt", f"line {number} is not a JSON object")
    return record


def _open_regular(path: str) -> BinaryIO:
    """``path`` for reading; ``audit.io`` unless it is a regular file (a FIFO at the
    name would block the reader forever). FileNotFoundError passes through."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SecpackError("audit.io", f"{path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SecpackError("audit.io", f"{path} is not a regular file")
    return os.fdopen(fd, "rb")


@dataclass(frozen=True)
class AuditProblem:
    line: int  # first bad line (1-based); the line after the last one for truncation
    reason: str


def verify_log(path: str | None = None, keys: dict[str, Any] | None = None) -> AuditProblem | None:
    """Check the chain, sequence numbers, the head file, and (given ``keys``: key id
    hex -> public key) every record's signature. Returns the first problem or None."""
    return check_log(path, keys)[0]


def check_log(
    path: str | None = None, keys: dict[str, Any] | None = None
) -> tuple[AuditProblem | None, int]:
    """``verify_log``'s answer, and how many records it checked."""
    path = path or default_log_path()
    try:
        fh = _open_regular(path)
    except FileNotFoundError:
        return _check_head(_head_or_none(path), None, 0), 0
    with fh:
        # Shared with other readers, never with a writer, which holds the lock from
        # its record to its head: read unlocked, the head could name records
        # appended after the log was read (false alarms on a busy log).
        _lock_shared(fh.fileno(), path)
        head = _head_or_none(path)
        named = head.get("seq") if isinstance(head, dict) else None
        named_hash = None  # the line hash of the record the head names
        prev, count = GENESIS, 0
        for number, raw in enumerate(fh, start=1):
            problem = _check_record(number, raw, prev, keys)
            if problem is not None:
                return problem, number - 1
            prev, count = _line_hash(raw), number
            if number - 1 == named:
                named_hash = prev
        return _check_head(head, named_hash, count), count


# A writer holds the log's lock for milliseconds; one that holds it this long is
# stopped or stuck (Ctrl-Z, a hung network file system), and a verify that waited
# on would wait without a word.
_LOCK_WAIT_SECONDS = 10.0


def _lock_shared(fd: int, path: str) -> None:
    deadline = time.monotonic() + _LOCK_WAIT_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise SecpackError(
                    "audit.io",
                    f"{path}: another process has held the log locked for "
                    f"{_LOCK_WAIT_SECONDS:.0f} s (a writer stopped or stuck)",
                ) from None
            time.sleep(0.05)
        except OSError:  # a file system without locks: read as before
            return


def _head_or_none(path: str) -> dict[str, Any] | str:
    """The head file's record; "missing" or "unreadable" otherwise."""
    try:
        head = _read_head(path)
    except FileNotFoundError:
        return "missing"
    return "unreadable" if head is None else head


def _check_record(
    number: int, raw: bytes, prev: str, keys: dict[str, Any] | None
) -> AuditProblem | None:
    if not raw.endswith(b"\n"):
        return AuditProblem(number, "truncated record (no end of line)")
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):  # nesting past the parser's stack
        return AuditProblem(number, "not a JSON record")
    if not isinstance(record, dict) or _canonical(record) + b"\n" != raw:
        return AuditProblem(number, "record was edited (not in canonical form)")
    if record.get("hash") != _record_hash(record):
        return AuditProblem(number, "record was edited (its digest does not match)")
    if record.get("prev") != prev:
        return AuditProblem(
            number,
            "hash chain broken: a record before it was edited, deleted, inserted or moved",
        )
    if record.get("seq") != number - 1:
        return AuditProblem(number, f"sequence number {record.get('seq')}, expected {number - 1}")
    if keys is not None:
        problem = _check_signature(record, keys)
        if problem:
            return AuditProblem(number, problem)
    return None


def _check_head(
    head: dict[str, Any] | str, named_hash: str | None, count: int
) -> AuditProblem | None:
    """The head against a log of ``count`` records, where the record it names has
    line hash ``named_hash``. The head names the last record, or (a writer killed
    between its record and its head) the one before it; a head naming no record
    yet (seq -1) is written before the first. Anything else is a log cut short,
    or a head that is not its own."""
    if head == "missing":
        # Without its head file, a log cut short after a record would look whole.
        return AuditProblem(count, "the head file is missing") if count else None
    named = head.get("seq") if isinstance(head, dict) else None
    if not isinstance(head, dict) or type(named) is not int or named < -1:
        return AuditProblem(count, "the head file is unreadable")
    if named >= count:
        return AuditProblem(
            count + 1,
            f"log truncated: the head records {named + 1} record(s), the log holds {count}",
        )
    if head.get("hash") != (GENESIS if named == -1 else named_hash):
        return AuditProblem(named + 1, "the record the head file names does not match it")
    if count - (named + 1) > 1:
        return AuditProblem(
            named + 3,
            f"{count - named - 1} records past the last one the head file names "
            "(a log cut short, with an older head put back)",
        )
    return None


def _read_head(path: str) -> dict[str, Any] | None:
    """The head file's record, None when it is not one; FileNotFoundError if absent."""
    try:
        with _open_regular(path + ".head") as fh:
            head = json.loads(fh.read(4096))
    except FileNotFoundError:
        raise
    except (OSError, ValueError, RecursionError, SecpackError):
        return None
    return head if isinstance(head, dict) else None


def _check_signature(record: dict[str, Any], keys: dict[str, Any]) -> str | None:
    from secpack.recipes import signing

    sig = record.get("sig")
    if not isinstance(sig, dict):
        return "record is not signed"
    key = keys.get(str(sig.get("kid")))
    if key is None:
        return "record is signed by an unknown key"
    body = {k: v for k, v in record.items() if k != "sig"}
    try:
        value = base64.b64decode(str(sig.get("value")), validate=True)
    except ValueError:
        return "record signature is not base64"
    alg = sig.get("alg")
    if type(alg) is not int or not signing.verify(key, alg, _canonical(body), value):
        return "record signature does not verify"
    return None
