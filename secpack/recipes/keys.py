"""Key generation, PEM (de)serialisation and key ids.

Keys are PEM: PKCS#8 for private keys (optionally passphrase-encrypted) and
SubjectPublicKeyInfo for public keys, so openssl, cosign and model_signing
read them too. A key id is the SHA-256 of the DER SubjectPublicKeyInfo.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519

from secpack.errors import KeyUseError

__all__ = [
    "SIGNING_ALGS",
    "PrivateKey",
    "PublicKey",
    "SigningPrivateKey",
    "SigningPublicKey",
    "generate_recipient",
    "generate_signing",
    "key_id",
    "load_private_pem",
    "load_public_pem",
    "private_pem",
    "public_pem",
    "signing_alg_of",
]

SigningAlg = Literal["ed25519", "ecdsa-p256", "ecdsa-p384"]
SIGNING_ALGS: tuple[SigningAlg, ...] = ("ed25519", "ecdsa-p256", "ecdsa-p384")
SigningPrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
SigningPublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKey = SigningPrivateKey | x25519.X25519PrivateKey
PublicKey = SigningPublicKey | x25519.X25519PublicKey


def generate_signing(alg: str) -> SigningPrivateKey:
    if alg == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    raise ValueError(f"unknown signing algorithm {alg!r}; expected one of {SIGNING_ALGS}")


def generate_recipient() -> x25519.X25519PrivateKey:
    return x25519.X25519PrivateKey.generate()


def private_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def public_pem(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(key: PublicKey) -> bytes:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


def signing_alg_of(key: SigningPublicKey | SigningPrivateKey) -> SigningAlg:
    if isinstance(key, (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey)):
        return "ed25519"
    if isinstance(key.curve, ec.SECP256R1):
        return "ecdsa-p256"
    if isinstance(key.curve, ec.SECP384R1):
        return "ecdsa-p384"
    raise KeyUseError("key.invalid", f"curve {key.curve.name} is not allowed (P-256 or P-384)")


def _one_pem(data: bytes, what: str) -> None:
    """A key file holds one key: the PEM loader reads the first block and ignores
    the rest, so a second key would be silently dropped (and never trusted). An
    EC PARAMETERS block, which `openssl ecparam -genkey` writes before the key, is
    not a key."""
    if data.count(b"-----BEGIN ") - data.count(b"-----BEGIN EC PARAMETERS-----") > 1:
        raise KeyUseError(
            "key.invalid", f"{what}: holds more than one PEM block (one key per file)"
        )


def load_private_pem(data: bytes, passphrase: bytes | None, what: str) -> PrivateKey:
    """Load a PKCS#8 (or traditional) PEM private key of an allowed type."""
    _one_pem(data, what)
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        # Raised both for "encrypted but no passphrase" and "passphrase for a plain key".
        raise KeyUseError(
            "key.passphrase",
            f"{what}: key is encrypted and needs a passphrase (--passphrase-env; passphrase= in Python)"
            if passphrase is None
            else f"{what}: key is not encrypted but a passphrase was given",
        ) from None
    except ValueError as exc:
        # A wrong passphrase usually fails the padding check ("Bad decrypt. Incorrect
        # password?"), but about one time in 256 the padding comes out valid and
        # the garbage then fails to parse: for an encrypted PEM, both mean this.
        if passphrase is not None and ("password" in str(exc).lower() or b"ENCRYPTED" in data):
            raise KeyUseError("key.passphrase", f"{what}: wrong passphrase") from None
        if b"PUBLIC KEY-----" in data:
            raise KeyUseError(
                "key.invalid", f"{what}: this is a public key; give the private key"
            ) from None
        raise KeyUseError("key.invalid", f"{what}: not a PEM private key") from None
    except UnsupportedAlgorithm:
        raise KeyUseError("key.invalid", f"{what}: unsupported private key") from None
    if isinstance(key, (ed25519.Ed25519PrivateKey, x25519.X25519PrivateKey)):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        signing_alg_of(key)
        return key
    raise KeyUseError("key.invalid", f"{what}: {type(key).__name__} keys are not supported")


def load_public_pem(data: bytes, what: str) -> PublicKey:
    """Load a SubjectPublicKeyInfo PEM public key of an allowed type."""
    _one_pem(data, what)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        if b"PRIVATE KEY-----" in data:
            # A private key where a public one belongs: say so, so that it is not
            # handed on (to a CI variable, a policy file) as if it were public.
            raise KeyUseError(
                "key.invalid",
                f"{what}: this is a private key; give its public key (the .pub file)",
            ) from None
        raise KeyUseError("key.invalid", f"{what}: not a PEM public key") from None
    if isinstance(key, (ed25519.Ed25519PublicKey, x25519.X25519PublicKey)):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        signing_alg_of(key)
        return key
    raise KeyUseError("key.invalid", f"{what}: {type(key).__name__} keys are not supported")
