"""Steps 1-6 of the reading order, shared by every verb that trusts a package:
framing, header, strict CBOR, schema, signatures, freshness, and rollback."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator

from secpack.api.auditing import audited, package_facts
from secpack.api.common import now
from secpack.package.reader import ByteSource, Header, check_trust, read_header
from secpack.sign.policy import Policy, Signer
from secpack.transport.spkfile import FileSource
from secpack.transport.state import VersionState

__all__ = ["establish_trust", "remember_version", "trusted_package"]

log = logging.getLogger("secpack")


def establish_trust(
    src: ByteSource,
    policy: Policy,
    *,
    expected_name: str | None = None,
    allow_downgrade: bool = False,
) -> tuple[Header, list[Signer]]:
    """Read and trust the header of ``src``, or raise: steps 1-6 of the reading order,
    with the rollback check (nothing is recorded; see :func:`remember_version`)."""
    header = read_header(src, policy.limits)
    signers = check_trust(header, policy, now(), expected_name)
    if policy.rollback:
        m = header.manifest
        highest = _state(policy).check(
            m.name,
            [s.key_id for s in signers],
            m.version,
            record=False,
            allow_downgrade=allow_downgrade,
        )
        if allow_downgrade and highest is not None and m.version < highest:
            log.warning(
                "allowing downgrade of %s to v%d (v%d already seen): explicit allow_downgrade",
                m.name,
                m.version,
                highest,
            )
    return header, signers


def _state(policy: Policy) -> VersionState:
    return VersionState(os.path.expanduser(policy.state_dir) if policy.state_dir else None)


def remember_version(header: Header, signers: list[Signer], policy: Policy) -> None:
    """Record a package that was used successfully as the highest version seen from
    its signers, so that older versions are refused from now on."""
    if policy.rollback:
        m = header.manifest
        _state(policy).check(
            m.name, [s.key_id for s in signers], m.version, record=True, allow_downgrade=True
        )


@contextlib.contextmanager
def trusted_package(
    action: str,
    path: str,
    policy: Policy,
    *,
    expected_name: str | None = None,
    allow_downgrade: bool = False,
    undo: list[Callable[[], None]] | None = None,
) -> Iterator[tuple[FileSource, Header, list[Signer]]]:
    """Open ``path``, establish trust, and record the verb in the audit log whatever
    happens inside the block. ``undo`` (see auditing.audited) is filled in by the
    block with what takes its output back."""
    with audited(action) as audit:
        audit["package"] = {"path": path}
        if undo is not None:
            audit["undo"] = undo
        with FileSource(path) as src:
            header, signers = establish_trust(
                src, policy, expected_name=expected_name, allow_downgrade=allow_downgrade
            )
            audit["package"].update(
                package_facts(header.manifest.name, header.manifest.version, header.digest)
            )
            yield src, header, signers
