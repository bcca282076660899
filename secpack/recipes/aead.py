"""Symmetric recipes: HKDF-SHA256 key derivation and one-shot AES-256-GCM.

Every AES-GCM key derived here encrypts exactly one message, so the nonce can be
the fixed all-zero value: uniqueness of (key, nonce) comes from the fresh
random salt that goes into each derivation (docs/FORMAT.md, "Segment encryption").
"""

from __future__ import annotations

import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secpack.errors import IntegrityError

__all__ = [
    "KEY_LEN",
    "TAG_LEN",
    "ZERO_NONCE",
    "derive",
    "equal",
    "open_",
    "open_into",
    "random_bytes",
    "seal",
    "seal_into",
]

KEY_LEN = 32  # AES-256
# Safe only because each key is single-use (see module docstring); never reuse a key.
ZERO_NONCE = bytes(12)
# The GCM tag appended to every ciphertext: the full 128 bits, never truncated.
TAG_LEN = 16


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


def derive(ikm: bytes, salt: bytes, info: bytes, length: int = KEY_LEN) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def seal(key: bytes, aad: bytes, plaintext: bytes | memoryview) -> bytes:
    return AESGCM(key).encrypt(ZERO_NONCE, plaintext, aad)


def seal_into(key: bytes, aad: bytes, plaintext: bytes | memoryview, out: memoryview) -> None:
    """``seal`` that writes ciphertext and tag to ``out`` (exactly their length), so
    that a writer can reuse its buffers instead of faulting in fresh ones per segment."""
    if len(out) != len(plaintext) + TAG_LEN:
        raise ValueError("output buffer has the wrong size")
    cipher = AESGCM(key)
    if hasattr(cipher, "encrypt_into"):  # cryptography >= 46
        cipher.encrypt_into(ZERO_NONCE, plaintext, aad, out)
    else:  # pragma: no cover - older cryptography: one copy more
        out[:] = cipher.encrypt(ZERO_NONCE, plaintext, aad)


def open_(key: bytes, aad: bytes, ciphertext: bytes | memoryview) -> bytes:
    try:
        return AESGCM(key).decrypt(ZERO_NONCE, ciphertext, aad)
    except InvalidTag:
        raise IntegrityError("authentication tag does not verify") from None


def open_into(key: bytes, aad: bytes, ciphertext: bytes | memoryview, out: memoryview) -> None:
    """``open_`` that writes the plaintext to ``out`` (exactly its length), so that a
    reader can reuse one buffer per thread instead of allocating per segment."""
    if len(out) != len(ciphertext) - TAG_LEN:
        raise ValueError("output buffer has the wrong size")
    cipher = AESGCM(key)
    try:
        if hasattr(cipher, "decrypt_into"):  # cryptography >= 46
            cipher.decrypt_into(ZERO_NONCE, ciphertext, aad, out)
        else:  # pragma: no cover - older cryptography: one copy more
            out[:] = cipher.decrypt(ZERO_NONCE, ciphertext, aad)
    except InvalidTag:
        # GCM decrypts before it checks the tag: leave no unauthenticated plaintext.
        out[:] = bytes(len(out))
        raise IntegrityError("authentication tag does not verify") from None


def equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
