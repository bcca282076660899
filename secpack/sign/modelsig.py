"""Interoperability with sigstore's model_signing (``model_signing verify key``).

model_signing's key-based signature (``model.sig``) is a sigstore bundle v0.3
whose verification material is only a ``publicKey.hint`` (the SHA-256 of the
signer's PEM SubjectPublicKeyInfo, in hex) and whose DSSE envelope carries an
in-toto Statement:

- predicate type ``https://model_signing/signature/v1.0``;
- ``predicate.resources``: one ``{name, algorithm: sha256, digest}`` per file,
  sorted by name, where the digest is the SHA-256 of the file's bytes;
- ``predicate.serialization``: ``{method: files, hash_type: sha256,
  allow_symlinks: false, ignore_paths: [...]}``;
- one subject whose digest is the SHA-256 over the concatenated raw resource
  digests, in that order.

The DSSE signature is ECDSA (P-256 with SHA-256, P-384 with SHA-384), DER,
over the DSSE pre-authentication encoding. This module writes such bundles and
verifies them; it does no file I/O (digests are passed in).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secpack.errors import SecpackError
from secpack.recipes.signing import sign_ecdsa_der, verify_ecdsa_der

__all__ = [
    "COMPONENT",
    "IGNORE_PATHS",
    "SIGNATURE_NAME",
    "ignored",
    "sign_model",
    "verify_model",
]

SIGNATURE_NAME = "model.sig"
# The package component that holds a model.sig made at seal time. `open` leaves it
# out unless asked, since the signature is only valid next to every other file.
COMPONENT = "model-signing"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
# What model_signing leaves out of a model by default, plus the signature itself.
IGNORE_PATHS = (".git", SIGNATURE_NAME, ".gitattributes", ".gitignore", ".github")


def _fail(why: str) -> SecpackError:
    return SecpackError("input.signature", f"{SIGNATURE_NAME}: {why}")


def ignored(path: str, ignore_paths: tuple[str, ...] = IGNORE_PATHS) -> bool:
    """Whether ``path`` (relative, POSIX) is one of ``ignore_paths`` or lies under one."""
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in ignore_paths)


def _pae(payload_type: str, payload: bytes) -> bytes:
    # DSSE v1 pre-authentication encoding.
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _hint(key: ec.EllipticCurvePublicKey) -> str:
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(pem).hexdigest()


def _root_digest(resources: list[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for r in resources:
        h.update(bytes.fromhex(r["digest"]))
    return h.hexdigest()


def sign_model(
    key: ec.EllipticCurvePrivateKey, model_name: str, digests: Mapping[str, bytes]
) -> bytes:
    """A ``model.sig`` over files whose SHA-256 digests are ``digests`` (path -> digest)."""
    resources = [
        {"name": path, "algorithm": "sha256", "digest": digests[path].hex()}
        for path in sorted(digests)
        if not ignored(path)
    ]
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": model_name, "digest": {"sha256": _root_digest(resources)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "resources": resources,
            "serialization": {
                "method": "files",
                "hash_type": "sha256",
                "allow_symlinks": False,
                "ignore_paths": list(IGNORE_PATHS),
            },
        },
    }
    payload = json.dumps(statement, indent=2).encode()
    signature = sign_ecdsa_der(key, _pae(PAYLOAD_TYPE, payload))
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": _hint(key.public_key())}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode(), "keyid": ""}],
        },
    }
    return json.dumps(bundle, indent=2).encode() + b"\n"


def _b64(value: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError:
        raise _fail(f"{what} is not base64") from None


def verify_model(
    data: bytes, key: ec.EllipticCurvePublicKey, digests: Mapping[str, bytes]
) -> dict[str, Any]:
    """Check a ``model.sig`` against ``key`` and the directory's file ``digests``
    (every regular file, path -> SHA-256). Returns the statement; raises
    ``input.signature`` on any mismatch."""
    try:
        bundle = json.loads(data)
        envelope = bundle["dsseEnvelope"]
        payload = _b64(envelope["payload"], "payload")
        signatures = envelope["signatures"]
        payload_type = envelope["payloadType"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise _fail("not a model_signing bundle") from None
    hint = (bundle.get("verificationMaterial") or {}).get("publicKey", {}).get("hint")
    if hint and hint != _hint(key):
        raise _fail("signed by another key")
    if payload_type != PAYLOAD_TYPE or not isinstance(signatures, list) or not signatures:
        raise _fail("no in-toto signature")
    message = _pae(payload_type, payload)
    if not any(
        isinstance(s, dict) and verify_ecdsa_der(key, message, _b64(s.get("sig"), "signature"))
        for s in signatures
    ):
        raise _fail("signature does not verify with this key")
    try:
        statement = json.loads(payload)
        resources = statement["predicate"]["resources"]
        serialization_ = statement["predicate"].get("serialization", {})
        subjects = statement["subject"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise _fail("statement is malformed") from None
    if statement.get("predicateType") != PREDICATE_TYPE or len(subjects) != 1:
        raise _fail("not a model_signing statement")
    if serialization_.get("method", "files") != "files" or any(
        r.get("algorithm") != "sha256" for r in resources
    ):
        raise _fail("only the 'files' method with sha256 is supported")
    ordered = sorted(resources, key=lambda r: str(r.get("name")))
    if subjects[0].get("digest", {}).get("sha256") != _root_digest(ordered):
        raise _fail("statement is inconsistent (root digest)")
    skip = tuple(serialization_.get("ignore_paths", ())) + IGNORE_PATHS
    expected = {str(r["name"]): str(r["digest"]) for r in ordered}
    actual = {path: d.hex() for path, d in digests.items() if not ignored(path, skip)}
    if expected != actual:
        missing = sorted(set(expected) - set(actual))
        extra = sorted(set(actual) - set(expected))
        changed = sorted(p for p in set(expected) & set(actual) if expected[p] != actual[p])
        raise _fail(
            f"files differ: missing {missing[:3]}, unsigned {extra[:3]}, changed {changed[:3]}"
        )
    return dict(statement)
