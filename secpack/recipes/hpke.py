"""HPKE (RFC 9180) base mode with DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and
AES-256-GCM: wraps a 32-byte data key for one X25519 recipient."""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from secpack.errors import IntegrityError

__all__ = ["ENC_LEN", "WRAPPED_LEN", "unwrap", "wrap"]

ENC_LEN = 32  # X25519 public key
WRAPPED_LEN = 32 + 16  # data key + GCM tag
_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)


def wrap(secret: bytes, recipient: x25519.X25519PublicKey, info: bytes) -> tuple[bytes, bytes]:
    """Return (encapsulated key, wrapped secret)."""
    out = _SUITE.encrypt(secret, recipient, info=info)
    if len(out) != ENC_LEN + len(secret) + 16:
        raise AssertionError("unexpected HPKE output length")
    return out[:ENC_LEN], out[ENC_LEN:]


def unwrap(enc: bytes, wrapped: bytes, identity: x25519.X25519PrivateKey, info: bytes) -> bytes:
    if len(enc) != ENC_LEN or len(wrapped) != WRAPPED_LEN:
        raise IntegrityError("wrapped key has the wrong length")
    try:
        # The explicit exchange refuses low-order points (an all-zero shared secret)
        # before any decryption is attempted; HPKE would only fail later on the tag.
        identity.exchange(x25519.X25519PublicKey.from_public_bytes(enc))
    except ValueError:
        raise IntegrityError("encapsulated key gives an all-zero shared secret") from None
    try:
        return _SUITE.decrypt(enc + wrapped, identity, info=info)
    except InvalidTag:
        raise IntegrityError("wrapped key does not decrypt") from None
