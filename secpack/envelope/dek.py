"""Envelope encryption of one component (docs/FORMAT.md, "Encryption").

Each component has its own random 256-bit data key (DEK). The DEK never
encrypts anything directly: every segment, and the component's contents, is
encrypted under a key derived from the DEK and a fresh 16-byte salt, so a
package version that reuses a DEK (to reuse unchanged ciphertext) can never
reuse a (key, nonce) pair for a different plaintext. Reused ciphertext keeps
its own salt, and therefore its own key, along with its own bytes.

The DEK is wrapped once per recipient with HPKE, and the manifest carries a
commitment to it, because AES-GCM is not key-committing: without it a
malicious sealer could hand two recipients different keys for one ciphertext.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric import x25519

from secpack.errors import IntegrityError, KeyUseError
from secpack.format import cbor
from secpack.format.contents import Unit
from secpack.format.manifest import (
    AEAD_ALG,
    DEK_LEN,
    RECIPIENT_HPKE_X25519,
    SALT_LEN,
    Codec,
    Encryption,
    Recipient,
)
from secpack.recipes import aead, hpke
from secpack.recipes.keys import key_id

__all__ = [
    "commitment",
    "new_dek",
    "new_salt",
    "open_contents",
    "open_segment",
    "open_segment_into",
    "seal_contents",
    "seal_segment",
    "seal_segment_into",
    "segment_aad",
    "unwrap_dek",
    "wrap_dek",
]

# Domain-separation labels: each derived key or AAD says what it is for and which
# format version produced it, so no value can be replayed in another role.
_SEGMENT_KEY = b"secpack/1 segment key"
_CONTENTS_KEY = b"secpack/1 contents key"
_COMMITMENT = b"secpack/1 key commitment"
_SEGMENT_AAD = "secpack/1 segment"
_CONTENTS_AAD = "secpack/1 contents"
_WRAP_INFO = "secpack/1 dek"


def new_dek() -> bytes:
    return aead.random_bytes(DEK_LEN)


def new_salt() -> bytes:
    # 128 random bits per encryption: collisions under one DEK are a 2^-64 event
    # even after 2^32 segments.
    return aead.random_bytes(SALT_LEN)


def commitment(dek: bytes) -> bytes:
    return aead.derive(dek, b"", _COMMITMENT)


def segment_aad(component: str, unit: Unit, plain: int, codec: Codec) -> bytes:
    """Binds a segment to its component, its place in its tensor or file, whether it
    is the last one there, its plaintext length and its codec parameters. Reordering,
    truncating, extending or moving segments therefore fails to authenticate, while
    an unchanged tensor keeps the same AAD in the next package version."""
    kind, name = unit.label
    return cbor.encode(
        [_SEGMENT_AAD, component, kind, name, unit.part, unit.last, plain, codec.to_cbor()]
    )


def seal_segment(dek: bytes, salt: bytes, aad: bytes, payload: bytes | memoryview) -> bytes:
    return aead.seal(aead.derive(dek, salt, _SEGMENT_KEY), aad, payload)


def seal_segment_into(
    dek: bytes, salt: bytes, aad: bytes, payload: bytes | memoryview, out: memoryview
) -> None:
    aead.seal_into(aead.derive(dek, salt, _SEGMENT_KEY), aad, payload, out)


def open_segment(dek: bytes, salt: bytes, aad: bytes, stored: bytes | memoryview) -> bytes:
    return aead.open_(aead.derive(dek, salt, _SEGMENT_KEY), aad, stored)


def open_segment_into(
    dek: bytes, salt: bytes, aad: bytes, stored: bytes | memoryview, out: memoryview
) -> None:
    aead.open_into(aead.derive(dek, salt, _SEGMENT_KEY), aad, stored, out)


def _contents_aad(component: str) -> bytes:
    return cbor.encode([_CONTENTS_AAD, component])


def seal_contents(dek: bytes, salt: bytes, component: str, data: bytes) -> bytes:
    return aead.seal(aead.derive(dek, salt, _CONTENTS_KEY), _contents_aad(component), data)


def open_contents(dek: bytes, salt: bytes, component: str, data: bytes) -> bytes:
    return aead.open_(aead.derive(dek, salt, _CONTENTS_KEY), _contents_aad(component), data)


def _wrap_info(component: str) -> bytes:
    return cbor.encode([_WRAP_INFO, component])


def wrap_dek(dek: bytes, recipient: x25519.X25519PublicKey, component: str) -> Recipient:
    enc, wrapped = hpke.wrap(dek, recipient, _wrap_info(component))
    return Recipient(RECIPIENT_HPKE_X25519, key_id(recipient), enc, wrapped)


def encryption_record(
    dek: bytes, contents_salt: bytes, recipients: Sequence[x25519.X25519PublicKey], component: str
) -> Encryption:
    return Encryption(
        AEAD_ALG,
        commitment(dek),
        contents_salt,
        tuple(wrap_dek(dek, r, component) for r in recipients),
    )


def unwrap_dek(
    encryption: Encryption, identities: Sequence[x25519.X25519PrivateKey], component: str
) -> bytes:
    """Find the stanza addressed to one of ``identities`` and return the checked DEK."""
    for identity in identities:
        kid = key_id(identity.public_key())
        for stanza in encryption.recipients:
            if stanza.kid != kid:
                continue
            dek = hpke.unwrap(stanza.enc, stanza.wrapped, identity, _wrap_info(component))
            if not aead.equal(commitment(dek), encryption.commitment):
                raise IntegrityError("data key does not match the manifest's commitment")
            return dek
    raise KeyUseError("key.no-recipient", f"no given identity can read component {component!r}")
