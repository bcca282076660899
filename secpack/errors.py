"""The one exception hierarchy of secpack.

Every failure that a user or an attacker can cause is a :class:`SecpackError`
with a stable ``code``. Codes never change meaning once released; tests and
callers match on ``err.code``, never on message text. The table of codes lives
in ``docs/FORMAT.md`` ("Error codes") and is checked against :data:`CODES` by a
test.

Integrity failures (a digest that does not match, an AEAD tag that does not
verify, a key commitment that does not match, a trusted key whose signature
does not verify) all share the single code ``integrity`` so that no oracle
reveals which check failed.

Caller mistakes (wrong argument types, impossible option combinations) stay
``TypeError`` / ``ValueError``.
"""

from __future__ import annotations

import errno
import os
from typing import Any

__all__ = [
    "CODES",
    "CborError",
    "CodecError",
    "ContainerError",
    "FreshnessError",
    "InputError",
    "IntegrityError",
    "KeyUseError",
    "LimitError",
    "NotFoundError",
    "OutputError",
    "PolicyError",
    "SchemaError",
    "SecpackError",
    "SignatureError",
    "StdoutError",
    "TensorError",
    "out_of_resources",
    "resource_limit",
]


class SecpackError(Exception):
    """Base of every secpack error. ``code`` is stable; ``detail`` is for humans."""

    code: str = "error"

    def __init__(self, code: str, detail: str = "") -> None:
        if code not in CODES:
            raise ValueError(f"unknown secpack error code {code!r}")
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail or CODES[code]

    def __reduce__(self) -> tuple[Any, ...]:
        # An exception pickles as ``cls(*args)``, and ``args`` holds the formatted
        # message, which is not what the constructors take: unpickling raised
        # ValueError (or doubled the code). Rebuilt without __init__ instead, an
        # error raised in a worker process (multiprocessing, a process pool, a
        # serving framework's workers) reaches the parent with its class, code
        # and detail intact.
        return (_restore, (type(self), self.args), self.__dict__)


def _restore(cls: type[SecpackError], args: tuple[Any, ...]) -> SecpackError:
    err = cls.__new__(cls)
    err.args = args
    return err


class ContainerError(SecpackError):
    """The container framing is wrong: magic, version, section lengths, truncation."""


class CborError(SecpackError):
    """A CBOR item is malformed, forbidden, non-canonical or over a limit."""


class SchemaError(SecpackError):
    """Well-formed CBOR that does not follow the schema of docs/FORMAT.md."""


class SignatureError(SecpackError):
    """Missing, untrusted, malformed or insufficient signatures."""


class PolicyError(SecpackError):
    """No trust anchor, or a trust policy that cannot be used."""


class FreshnessError(SecpackError):
    """An expired package, or one older than the policy allows."""


class IntegrityError(SecpackError):
    """Stored bytes do not match what the signed manifest commits to."""

    def __init__(self, detail: str = "") -> None:
        # One opaque code for every integrity failure; detail stays generic on purpose.
        super().__init__("integrity", detail)


class KeyUseError(SecpackError):
    """A key file that cannot be used, or no identity that can read a component."""


class CodecError(SecpackError):
    """A signed segment whose compressed form breaks the codec rules."""


class TensorError(SecpackError):
    """A tensor table entry that breaks the dtype, shape or layout rules."""


class InputError(SecpackError):
    """A model directory or file that secpack refuses to seal."""


class OutputError(SecpackError):
    """An output path that is unsafe, already exists, or cannot be written."""


class LimitError(SecpackError):
    """A configured resource limit would be exceeded."""


class NotFoundError(SecpackError, KeyError):
    """A tensor or file name the package does not hold (``tensor.unknown``,
    ``file.unknown``). It is also a ``KeyError``, as a missing key of a mapping
    is, so that ``except KeyError`` around a lookup keeps working: ``args[0]``
    and ``key`` are what was looked up (a name, or a list of names)."""

    def __init__(self, code: str, detail: str, key: Any) -> None:
        super().__init__(code, detail)
        self.key = key
        self.args = (key,)  # as KeyError(key) has it

    def __str__(self) -> str:
        # KeyError's would show the key's repr; this says what went wrong.
        return f"{self.code}: {self.detail}"


class StdoutError(SecpackError):
    """The command line's stdout would not take the report of a verb that had
    already done its work. Only the CLI raises it.

    It is not ``output.io``: the package or directory was written, and a retry
    would find it there. ``broken_pipe`` is a reader that stopped reading, which
    ends the command quietly, as it ends any Unix tool."""

    def __init__(self, reason: str, broken_pipe: bool = False) -> None:
        super().__init__(
            "stdout.io",
            f"the operation succeeded, but its report could not be written to stdout: {reason}",
        )
        self.broken_pipe = broken_pipe


# code -> one-line meaning. The order and wording here are mirrored in docs/FORMAT.md.
CODES: dict[str, str] = {
    # framing
    "container.magic": "not a secpack package (bad magic)",
    "container.version": "unsupported container version or reserved field set",
    "container.framing": "section lengths do not match the file (truncated, extended, overlapping)",
    # CBOR
    "cbor.malformed": "malformed CBOR (truncated item, invalid UTF-8, trailing bytes)",
    "cbor.forbidden": "forbidden CBOR feature (tag, indefinite length, non-text key, simple value)",
    "cbor.noncanonical": "CBOR is not in deterministic encoding (includes duplicate map keys)",
    "cbor.limit": "CBOR item exceeds the depth, item-count or size limit",
    # schema
    "schema.invalid": "document does not follow the schema",
    "schema.unsupported": "document needs a feature this reader does not implement",
    # signatures and trust
    "sig.missing": "package carries no signature",
    "sig.malformed": "a signature structure is malformed or uses a forbidden header",
    "sig.untrusted": "no signature from a trusted key",
    "sig.threshold": "fewer distinct trusted signatures than the policy's threshold",
    "sig.unknown": "no signature with that key id",
    "sigstore.token": "no usable identity token for keyless signing",
    "sigstore.failed": "keyless signing through sigstore failed",
    "policy.none": "no trust anchor given (use --trust, --policy or SECPACK_POLICY)",
    "policy.invalid": "the trust policy cannot be used",
    "policy.name": "package name is not the one the caller expected",
    "policy.unmet": "package does not meet a requirement of the trust policy",
    "fresh.expired": "package has expired",
    "fresh.max-age": "package is older than the policy's maximum age",
    "fresh.future": "package claims a creation time in the future",
    "fresh.rollback": "package is older than a version already seen from the same signer",
    "state.corrupt": "the rollback-protection state file cannot be read",
    "state.io": "the rollback-protection state cannot be stored",
    # integrity (one opaque code)
    "integrity": "integrity check failed",
    # keys
    "key.invalid": "key file cannot be used for this operation",
    "key.passphrase": "wrong or missing passphrase for an encrypted key",
    "key.no-recipient": "the identity is not a recipient of a requested component",
    # decoding after verification
    "codec.invalid": "segment (or compressed contents) breaks the codec rules",
    "tensor.invalid": "tensor table breaks the dtype, shape or layout rules",
    # sealing input
    "input.missing": "input path does not exist",
    "input.io": "an input path exists but cannot be read",
    "input.unsafe": "input contains a symlink, device, or a path that escapes the directory",
    "input.safetensors": "a safetensors input file is malformed",
    "input.invalid": "input or seal options are not usable",
    "input.changed": "an input file changed or was removed while it was being sealed",
    "input.signature": "the input's model_signing signature (model.sig) does not verify",
    # output
    "output.exists": "output path already exists",
    "output.unsafe": "a path inside the package is unsafe to write",
    "output.io": "the output could not be written",
    # the CLI's report (not the package or directory it wrote)
    "stdout.io": "the report could not be written to stdout; the operation itself succeeded",
    # resources
    "limit.exceeded": "a resource limit would be exceeded",
    # audit log
    "audit.io": "the audit log cannot be written",
    "audit.corrupt": "the audit log cannot be read",
    "audit.tampered": "the audit log was edited, reordered or truncated",
    # component selection
    "component.unknown": "no such component in the package",
    "tensor.unknown": "no such tensor in the package, or in the component named",
    "file.unknown": "no such file in the component",
    # the user stopped the verb (SIGINT); the CLI exits 130
    "interrupted": "stopped by an interrupt (Ctrl-C) or SIGTERM; nothing was left half-written",
    # a bug in secpack itself; the CLI reports it without a traceback
    "internal": "internal error (set SECPACK_DEBUG=1 for a traceback)",
}


def resource_limit(exc: BaseException, hint: str) -> LimitError | None:
    """``limit.exceeded`` for an ``exc`` that says the process ran out of memory or
    threads (see out_of_resources), naming it and ``hint`` (what asks for less);
    a ``limit.exceeded`` raised as one (zstd's, a buffer's) again, with ``hint``
    added; None for any other error (any other SecpackError, and one that says
    ``hint`` already)."""
    if isinstance(exc, SecpackError):
        if exc.code != "limit.exceeded" or hint in exc.detail:
            return None
        return LimitError("limit.exceeded", f"{exc.detail}; {hint}")
    if not out_of_resources(exc):
        return None
    first = next((line for line in str(exc).splitlines() if line.strip()), "")
    said = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return LimitError("limit.exceeded", f"out of memory or threads ({said}); {hint}")


def out_of_resources(exc: BaseException | None) -> bool:
    """Whether ``exc`` says the process ran out of memory or threads: a MemoryError,
    an OSError of ENOMEM, the RuntimeError of a thread the system would not start,
    or an ImportError of a library that could not be mapped (not for a noexec
    mount, which says the same). Followed through explicit causes, and through
    what an ImportError happened during: not through an error raised while another
    was handled, which may be a disk's or a bug's."""
    seen = 0
    while exc is not None and seen < 8:  # a chain, not a cycle
        if isinstance(exc, MemoryError):
            return True
        if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
            return True
        if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):
            return True
        if isinstance(exc, ImportError) and "failed to map segment" in str(exc):
            return not _on_noexec(exc.path)
        following = exc.__cause__
        if following is None and isinstance(exc, ImportError):
            following = exc.__context__
        exc, seen = following, seen + 1
    return False


def _on_noexec(path: str | None) -> bool:
    try:
        return path is not None and bool(os.statvfs(path).f_flag & os.ST_NOEXEC)
    except OSError:
        return False
