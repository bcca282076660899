"""``inspect``: what a package holds, without executing or decrypting anything.

Without keys it reports the public metadata. Given trust (and, for encrypted
components, an identity) it also verifies the signatures and lists each
component's files and tensor table.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import x25519

from secpack.api.common import MALFORMED
from secpack.api.trust import establish_trust
from secpack.errors import KeyUseError, SecpackError
from secpack.format.contents import Contents
from secpack.format.limits import DEFAULT_LIMITS
from secpack.format.manifest import Manifest
from secpack.format.sections import SIG_TYPE_COSE_SIGN1
from secpack.package.decode import OpenComponent
from secpack.package.reader import read_header
from secpack.recipes.signing import COSE_ALGS
from secpack.sign import cose
from secpack.sign.policy import Policy
from secpack.transport.spkfile import FileSource

__all__ = ["InspectReport", "SignatureInfo", "inspect"]


@dataclass(frozen=True)
class SignatureInfo:
    type: str
    key_id: bytes | None
    alg: str | None
    trusted: bool | None  # None when no policy was given


@dataclass(frozen=True)
class InspectReport:
    path: str
    manifest: Manifest
    manifest_digest: bytes
    package_size: int
    signatures: tuple[SignatureInfo, ...]
    verified: bool  # signatures and freshness checked against a policy
    contents: dict[str, Contents]  # component -> files and tensors (only what could be read)
    unreadable: tuple[str, ...]  # encrypted components the identities cannot read


def _signature_info(entry_type: str, data: bytes, policy: Policy | None) -> SignatureInfo:
    if entry_type != SIG_TYPE_COSE_SIGN1:
        return SignatureInfo(entry_type, None, None, None)
    try:
        sig = cose.parse_sign1(data)
    except SecpackError:
        # Listed, not fatal: the public view of a package shows what is in it, a
        # broken entry included (`secpack unsign --malformed` removes it).
        return SignatureInfo(entry_type, None, MALFORMED, None if policy is None else False)
    trusted = None if policy is None else sig.kid in policy.keys
    return SignatureInfo(entry_type, sig.kid, COSE_ALGS.get(sig.alg), trusted)


def inspect(
    package: str | os.PathLike[str],
    *,
    policy: Policy | None = None,
    identities: Sequence[x25519.X25519PrivateKey] = (),
    allow_downgrade: bool = False,
) -> InspectReport:
    """Describe ``package``. With ``identities``, a ``policy`` is required: contents are
    only decoded from a package whose signatures have been checked.

    With a ``policy`` the package is trusted as ``verify`` trusts it, rollback
    check included (``fresh.rollback`` for a version older than one already
    used from the same signer, unless ``allow_downgrade``); nothing is recorded."""
    package = os.fspath(package)
    limits = policy.limits if policy else DEFAULT_LIMITS
    with FileSource(package) as src:
        if policy is not None:
            header, _ = establish_trust(src, policy, allow_downgrade=allow_downgrade)
        else:
            header = read_header(src, limits)
        sigs = tuple(_signature_info(e.type, e.data, policy) for e in header.signatures)
        contents: dict[str, Contents] = {}
        unreadable: list[str] = []
        verified = False
        if policy is not None:
            verified = True
            for i, comp in enumerate(header.manifest.components):
                if comp.encryption is not None and not identities:
                    unreadable.append(comp.name)
                    continue
                try:
                    opened = OpenComponent(src, header, i, identities, limits)
                    # What is shown is what open would write: header and table agree.
                    opened.check_headers()
                    contents[comp.name] = opened.contents
                except KeyUseError as exc:
                    if exc.code != "key.no-recipient":
                        raise
                    unreadable.append(comp.name)
        elif identities:
            raise SecpackError("policy.none", "inspect --identity needs --trust or --policy")
        return InspectReport(
            path=package,
            manifest=header.manifest,
            manifest_digest=header.digest,
            package_size=src.size,
            signatures=sigs,
            verified=verified,
            contents=contents,
            unreadable=tuple(unreadable),
        )
