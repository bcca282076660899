"""Recording every verb in the audit log, whatever its outcome.

A failure to write the audit log never hides the verb's own result: it is
reported as a warning, unless ``SECPACK_AUDIT=required``, when it is an error,
and a log that cannot take a record refuses the verb before it runs.
``SECPACK_AUDIT=off`` turns recording off. ``SECPACK_AUDIT_KEY`` (the CLI's
``--audit-key``) names a signing key that signs every record.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from secpack.errors import SecpackError, out_of_resources

__all__ = ["audited", "package_facts", "record_late_error"]

log = logging.getLogger("secpack")


def package_facts(name: str, version: int, digest: bytes) -> dict[str, Any]:
    return {"name": name, "version": version, "manifest_digest": "sha256:" + digest.hex()}


def _record(action: str, outcome: str, code: str | None, facts: dict[str, Any]) -> None:
    mode = os.environ.get("SECPACK_AUDIT", "on")
    if mode == "off":
        return
    from secpack.audit.log import append

    try:
        append(
            action,
            outcome=outcome,
            code=code,
            package=facts.get("package"),
            sign=facts.get("audit_key"),
        )
    except SecpackError as exc:
        if mode == "required":
            raise
        log.warning("audit record not written: %s", exc)


def record_late_error(action: str, exc: SecpackError, package: dict[str, Any]) -> None:
    """One more record, of outcome "error", for a fault that a verb finds after
    its own record was written: a library load records itself when the package
    opens, and its reads find a tampered segment only later. Once per error,
    however many layers it is raised through; a record that cannot be written
    (or a signing key that cannot be loaded) is a warning, never in place of
    ``exc``, which the caller raises."""
    if getattr(exc, "_audit_recorded", False) or os.environ.get("SECPACK_AUDIT", "on") == "off":
        return
    exc._audit_recorded = True  # type: ignore[attr-defined]
    try:
        _record(action, "error", exc.code, {"package": package, "audit_key": _audit_key()})
    except Exception as err:  # the load's own error is what the caller must see
        log.warning("audit record not written: %s", err)


def _audit_key() -> Any:
    """The key named by ``$SECPACK_AUDIT_KEY`` (``--audit-key``) signs every record."""
    path = os.environ.get("SECPACK_AUDIT_KEY")
    if not path:
        return None
    from secpack.api.keyfiles import load_signing_key, passphrase_from_env

    env = "SECPACK_AUDIT_PASSPHRASE" if "SECPACK_AUDIT_PASSPHRASE" in os.environ else None
    return load_signing_key(path, passphrase_from_env(env))


@contextlib.contextmanager
def audited(action: str) -> Iterator[dict[str, Any]]:
    """Wrap one verb: the caller stores ``package_facts(...)`` under ``"package"``
    in the yielded dict as soon as it knows them, and under ``"undo"`` a list of
    what takes back the output it made, for SECPACK_AUDIT=required.

    An interrupt that comes once the verb's output is in place waits until its
    record is written, and comes out of this block (secpack.interrupts)."""
    from secpack.interrupts import verb

    with verb(deliver=True), _recorded(action) as facts:
        yield facts


@contextlib.contextmanager
def _recorded(action: str) -> Iterator[dict[str, Any]]:
    # Imported before the verb runs, as what records it is: an import that fails
    # for want of memory once the output is in place left the output behind.
    from secpack.audit.log import landed

    facts: dict[str, Any] = {}
    mode = os.environ.get("SECPACK_AUDIT", "on")
    if mode != "off":
        # Loaded before the verb runs: an unusable key refuses the verb (nothing is
        # done, and no unsigned record goes into a log that is meant to be signed).
        facts["audit_key"] = _audit_key()
    if mode == "required":
        from secpack.audit.log import check_appendable

        # A verb whose record cannot be written must not take effect: refused now,
        # rather than found out once its output is in place.
        check_appendable()
    try:
        yield facts
    except SecpackError as exc:
        _record(action, "error", exc.code, facts)
        raise
    except BaseException as exc:
        # The codes the command line reports for these (FORMAT §12), so that the
        # log says what the user was told: an interrupt (which may come after the
        # output was complete) is not a bug, nor is running out of memory.
        if isinstance(exc, KeyboardInterrupt):
            code = "interrupted"
        elif out_of_resources(exc):
            code = "limit.exceeded"
        else:
            code = "internal"
        _record(action, "error", code, facts)
        raise
    before = landed()
    try:
        _record(action, "ok", None, facts)
    except BaseException:  # an interrupt while it is written leaves no record either
        # Required, and the log took the check before the verb but not its record
        # (a disk the verb itself filled): the verb must not stand unrecorded.
        # What it made anew is taken back (an opened tree of decrypted files).
        # Not if the record is in (a second Ctrl-C just after it): it says "ok".
        if landed() == before:
            for undo in facts.get("undo", ()):
                with contextlib.suppress(Exception):
                    undo()
        raise
