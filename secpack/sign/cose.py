"""COSE_Sign1 (RFC 9052 §4.2) with a detached payload: the manifest bytes.

Built directly on cbor2 (through ``secpack.format.cbor``) and cryptography:
pycose is unmaintained, breaks with cbor2 >= 6 and signs ECDSA in pure Python.

Only what secpack writes is accepted back: the tagged form (tag 18), a
protected header holding ``alg`` (1), optional content type (3), the key id (4)
and optional CWT claims (15, RFC 9597) holding only the signing time ``iat`` (6),
and nothing else; an empty unprotected header, a nil payload, and a raw
signature. ``alg`` anywhere but the protected header, a ``crit`` header, or any
other label is refused, so nothing in a signature goes unchecked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from secpack.errors import CborError, SignatureError
from secpack.format import cbor
from secpack.recipes import signing
from secpack.recipes.keys import SigningPrivateKey, SigningPublicKey, key_id

__all__ = ["CONTENT_TYPE", "Sign1", "parse_sign1", "sign_manifest", "verify_sign1"]

_TAG_SIGN1 = b"\xd2"  # CBOR head of tag 18 (COSE_Sign1), one byte
HDR_ALG, HDR_CRIT, HDR_CTY, HDR_KID = 1, 2, 3, 4
HDR_CWT_CLAIMS = 15  # RFC 9597
CWT_IAT = 6  # RFC 8392 "issued at", seconds since the epoch
CONTENT_TYPE = "application/vnd.secpack.manifest+cbor"
_CONTEXT = "Signature1"
_MAX_COSE = 1 << 16  # one COSE_Sign1 of ours is ~200 bytes


@dataclass(frozen=True)
class Sign1:
    alg: int
    kid: bytes
    protected: bytes  # the exact protected-header bytes that were signed
    signature: bytes
    signed_at: int | None = None  # CWT iat, when the signer recorded it


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    return cbor.encode([_CONTEXT, protected, b"", payload])


def sign_manifest(key: SigningPrivateKey, manifest: bytes, signed_at: int | None = None) -> bytes:
    """Return a tagged COSE_Sign1 over ``manifest`` (detached) by ``key``, recording
    ``signed_at`` (seconds since the epoch) as a protected CWT ``iat`` claim."""
    alg = signing.cose_alg_of(key)
    kid = key_id(key.public_key())
    header: dict[int, Any] = {HDR_ALG: alg, HDR_CTY: CONTENT_TYPE, HDR_KID: kid}
    if signed_at is not None:
        header[HDR_CWT_CLAIMS] = {CWT_IAT: signed_at}
    protected = cbor.encode(header)
    signature = signing.sign(key, _sig_structure(protected, manifest))
    return _TAG_SIGN1 + cbor.encode([protected, {}, None, signature])


def _malformed(why: str) -> SignatureError:
    return SignatureError("sig.malformed", why)


def parse_sign1(data: bytes) -> Sign1:
    """Parse one COSE_Sign1 strictly; raise ``sig.malformed`` on anything unexpected."""
    if len(data) > _MAX_COSE or not data.startswith(_TAG_SIGN1):
        raise _malformed("not a tagged COSE_Sign1")
    try:
        item = cbor.decode(
            data[1:], max_bytes=_MAX_COSE, max_depth=4, max_items=64, text_keys=False
        )
    except CborError as exc:
        raise _malformed(f"COSE_Sign1 is not strict CBOR ({exc.code})") from None
    if not isinstance(item, list) or len(item) != 4:
        raise _malformed("COSE_Sign1 is not a 4-element array")
    protected, unprotected, payload, signature = item
    if type(protected) is not bytes or type(signature) is not bytes:
        raise _malformed("protected header and signature must be byte strings")
    if not isinstance(unprotected, dict):
        raise _malformed("unprotected header is not a map")
    if HDR_ALG in unprotected or HDR_CRIT in unprotected:
        raise _malformed("alg and crit are only allowed in the protected header")
    if unprotected:
        raise _malformed("unprotected header must be empty")
    if payload is not None:
        raise _malformed("payload must be detached (nil)")
    try:
        header = cbor.decode(protected, max_bytes=1024, max_depth=3, max_items=32, text_keys=False)
    except CborError as exc:
        raise _malformed(f"protected header is not strict CBOR ({exc.code})") from None
    if not isinstance(header, dict):
        raise _malformed("protected header is not a map")
    if HDR_CRIT in header:
        # secpack defines no critical header; a crit list is from a writer we cannot follow.
        raise _malformed("crit header names parameters this reader does not implement")
    unknown = set(header) - {HDR_ALG, HDR_CTY, HDR_KID, HDR_CWT_CLAIMS}
    if unknown:
        raise _malformed(f"unknown protected header label(s) {sorted(map(str, unknown))}")
    alg = header.get(HDR_ALG)
    if type(alg) is not int or alg not in signing.COSE_ALGS:
        raise _malformed(f"algorithm {alg!r} is not allowed")
    if HDR_CTY in header and header[HDR_CTY] != CONTENT_TYPE:
        raise _malformed("content type is not a secpack manifest")
    kid = header.get(HDR_KID)
    if type(kid) is not bytes or len(kid) != 32:
        raise _malformed("key id must be a 32-byte SHA-256 of the SubjectPublicKeyInfo")
    signed_at = None
    if HDR_CWT_CLAIMS in header:
        claims = header[HDR_CWT_CLAIMS]
        if not isinstance(claims, dict) or set(claims) != {CWT_IAT}:
            raise _malformed("CWT claims may hold only iat")
        signed_at = claims[CWT_IAT]
        if type(signed_at) is not int or signed_at < 0:
            raise _malformed("iat must be a non-negative integer")
    return Sign1(alg, kid, protected, signature, signed_at)


def verify_sign1(sig: Sign1, key: SigningPublicKey, manifest: bytes) -> bool:
    """True when ``sig`` is a valid signature by ``key`` over ``manifest``."""
    return signing.verify(key, sig.alg, _sig_structure(sig.protected, manifest), sig.signature)
