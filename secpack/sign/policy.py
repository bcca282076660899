"""Trust policies: who may sign, how many must, and what else a package must meet.

A :class:`Policy` is built from ``--trust`` keys (:func:`policy_from_keys`) or a
TOML file (:mod:`secpack.sign.policy_file`), and checked against a package's
signatures by :func:`evaluate_signatures`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from secpack.errors import IntegrityError, KeyUseError, PolicyError, SignatureError
from secpack.format.limits import DEFAULT_LIMITS, Limits
from secpack.format.sections import SIG_TYPE_COSE_SIGN1, SignatureEntry
from secpack.recipes import signing
from secpack.recipes.keys import (
    SIGNING_ALGS,
    SigningPublicKey,
    key_id,
    load_public_pem,
    signing_alg_of,
)
from secpack.sign import cose
from secpack.sign.keyless import SIG_TYPE_SIGSTORE, SigstoreSigner

__all__ = [
    "Policy",
    "Signer",
    "evaluate_signatures",
    "parse_duration",
    "policy_from_keys",
    "signing_key",
]

# ASCII digits only: \d would also take other scripts' digits (U+FF11, a full-width 1).
# At most 12 of them (a million years in weeks): int() of a longer run costs time
# that grows with its square, and past 4300 digits it fails with Python's own message.
_DURATION = re.compile(r"([0-9]{1,12})([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    """'90d', '12h', '30m', '2w', '45s' -> seconds."""
    m = _DURATION.fullmatch(text)
    if not m or int(m.group(1)) == 0:
        raise ValueError(
            f"{text[:40]!r} is not a duration like 90d, 12h, 30m, 2w (at most 12 digits)"
        )
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]


@dataclass(frozen=True)
class Signer:
    """A signature that verified against a trusted key or keyless identity."""

    key_id: bytes
    alg: str  # "ed25519", "ecdsa-p256", "ecdsa-p384" or "sigstore"
    identity: str | None = None  # keyless: "<SAN> (<issuer>)"


@dataclass(frozen=True)
class Policy:
    keys: dict[bytes, SigningPublicKey]
    threshold: int = 1
    # Keyless signers, verified against the pinned trusted root file (never refreshed).
    sigstore: tuple[SigstoreSigner, ...] = ()
    trusted_root: str | None = None
    algorithms: frozenset[str] = frozenset(SIGNING_ALGS)
    require_expires: bool = False
    max_age: int | None = None  # seconds since `created`
    # Accept `created` at most this far in the future (clock skew between machines).
    max_clock_skew: int = 300
    required_components: tuple[str, ...] = ()
    # Refuse a version lower than one already seen from the same signer (fresh.rollback).
    rollback: bool = True
    state_dir: str | None = None  # None: secpack.transport.state.default_state_dir()
    limits: Limits = field(default=DEFAULT_LIMITS)
    name: str = "<command line>"

    def __post_init__(self) -> None:
        # Keyless signers count once per (issuer, identity), as their signatures do:
        # two entries for one identity (say, with different repositories) are one
        # signer, and a threshold that counted them twice could never be met.
        signers = len(self.keys) + len({(s.issuer, s.identity) for s in self.sigstore})
        if not signers:
            raise PolicyError("policy.invalid", f"{self.name}: no trusted signers")
        if not 1 <= self.threshold <= signers:
            raise PolicyError(
                "policy.invalid",
                f"{self.name}: threshold {self.threshold} with {signers} trusted signer(s)",
            )
        if self.sigstore and not self.trusted_root:
            raise PolicyError(
                "policy.invalid", f"{self.name}: sigstore signers need a trusted_root file"
            )


def signing_key(pem: bytes, what: str) -> SigningPublicKey:
    """The signing key in ``pem``. ``key.invalid`` otherwise, as for any key file
    that cannot serve (an X25519 recipient key named as a trust anchor)."""
    key = load_public_pem(pem, what)
    if not isinstance(key, SigningPublicKey):
        raise KeyUseError(
            "key.invalid", f"{what}: not a signing public key (an X25519 key only encrypts)"
        )
    return key


def policy_from_keys(pems: Iterable[tuple[str, bytes]], threshold: int = 1) -> Policy:
    """A policy that trusts exactly the given public keys (``--trust``)."""
    keys = {}
    for what, pem in pems:
        key = signing_key(pem, what)
        keys[key_id(key)] = key
    return Policy(keys=keys, threshold=threshold)


def _keyless(data: bytes, manifest: bytes, name: str, policy: Policy) -> Signer | None:
    if not policy.sigstore or policy.trusted_root is None:
        return None  # no keyless signer is trusted: such a bundle never counts
    from secpack.sign.keyless import verify_package_bundle

    digest = hashlib.sha256(manifest).digest()
    signer = verify_package_bundle(data, policy.sigstore, policy.trusted_root, name, digest)
    if signer is None:
        return None
    return Signer(signer.key_id, "sigstore", f"{signer.identity} ({signer.issuer})")


def evaluate_signatures(
    manifest: bytes, entries: Sequence[SignatureEntry], policy: Policy, manifest_name: str = ""
) -> list[Signer]:
    """Check every signature that names a trusted key; enforce the threshold.

    Raises ``sig.missing``, ``sig.malformed``, ``sig.untrusted``, ``sig.threshold``,
    or ``integrity`` when a trusted key's signature does not verify.
    """
    if not entries:
        raise SignatureError("sig.missing", "the package is unsigned")
    verified: dict[bytes, Signer] = {}
    for entry in entries:
        if entry.type == SIG_TYPE_SIGSTORE:
            keyless = _keyless(entry.data, manifest, manifest_name, policy)
            if keyless is not None:
                verified[keyless.key_id] = keyless
            continue
        if entry.type != SIG_TYPE_COSE_SIGN1:
            continue  # a kind this reader cannot check never counts toward the threshold
        sig = cose.parse_sign1(entry.data)
        key = policy.keys.get(sig.kid)
        if key is None:
            continue
        alg = signing_alg_of(key)
        if signing.COSE_ALGS.get(sig.alg) != alg:
            raise SignatureError("sig.malformed", "signature algorithm does not match the key")
        if alg not in policy.algorithms:
            continue
        if not cose.verify_sign1(sig, key, manifest):
            raise IntegrityError("a trusted key's signature does not verify")
        # Keyed by key id: the same key signing twice still counts once.
        verified[sig.kid] = Signer(sig.kid, alg)
    if not verified:
        raise SignatureError("sig.untrusted", "no signature from a trusted key")
    if len(verified) < policy.threshold:
        raise SignatureError(
            "sig.threshold",
            f"{len(verified)} distinct trusted signature(s), policy needs {policy.threshold}",
        )
    return list(verified.values())
