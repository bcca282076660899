"""Raw signatures in COSE form (RFC 9053): Ed25519, and ECDSA with the raw r||s
encoding (not DER). ECDSA is deterministic (RFC 6979) so that a sign-only
package is bit-for-bit reproducible."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from secpack.recipes.keys import SigningPrivateKey, SigningPublicKey, signing_alg_of

__all__ = ["COSE_ALGS", "cose_alg_of", "sign", "sign_ecdsa_der", "verify", "verify_ecdsa_der"]

# COSE algorithm identifiers (IANA "COSE Algorithms" registry).
COSE_EDDSA = -8
COSE_ES256 = -7
COSE_ES384 = -35
COSE_ALGS = {COSE_EDDSA: "ed25519", COSE_ES256: "ecdsa-p256", COSE_ES384: "ecdsa-p384"}
_BY_NAME = {v: k for k, v in COSE_ALGS.items()}
# ECDSA hash and coordinate size per curve, as RFC 9053 §2.1 pairs them.
_EC_PARAMS: dict[str, tuple[type[hashes.HashAlgorithm], int]] = {
    "ecdsa-p256": (hashes.SHA256, 32),
    "ecdsa-p384": (hashes.SHA384, 48),
}


def cose_alg_of(key: SigningPublicKey | SigningPrivateKey) -> int:
    return _BY_NAME[signing_alg_of(key)]


def sign(key: SigningPrivateKey, data: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    hash_cls, size = _EC_PARAMS[signing_alg_of(key)]
    der = key.sign(data, ec.ECDSA(hash_cls(), deterministic_signing=True))
    r, s = decode_dss_signature(der)
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def verify(key: SigningPublicKey, alg: int, data: bytes, signature: bytes) -> bool:
    """True only when ``signature`` is valid for ``data`` under ``key`` and ``alg``
    names exactly that key's algorithm (no algorithm substitution)."""
    if COSE_ALGS.get(alg) != signing_alg_of(key):
        return False
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            if len(signature) != 64:
                return False
            key.verify(signature, data)
            return True
        hash_cls, size = _EC_PARAMS[signing_alg_of(key)]
        if len(signature) != 2 * size:
            return False
        r = int.from_bytes(signature[:size], "big")
        s = int.from_bytes(signature[size:], "big")
        key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hash_cls()))
        return True
    except InvalidSignature:
        return False


def _ec_hash(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> hashes.HashAlgorithm:
    # The curve's own hash, as sigstore's specs (and model_signing) pair them.
    size = key.curve.key_size
    if size == 256:
        return hashes.SHA256()
    if size == 384:
        return hashes.SHA384()
    raise ValueError(f"unsupported curve {key.curve.name}")


def sign_ecdsa_der(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA with the curve's hash, DER-encoded (the encoding DSSE envelopes use)."""
    return key.sign(data, ec.ECDSA(_ec_hash(key)))


def verify_ecdsa_der(key: ec.EllipticCurvePublicKey, data: bytes, signature: bytes) -> bool:
    try:
        key.verify(signature, data, ec.ECDSA(_ec_hash(key)))
    except (InvalidSignature, ValueError):
        return False
    return True
