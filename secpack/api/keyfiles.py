"""Loading keys and trust from the paths and settings a user gives."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric import x25519

from secpack.errors import KeyUseError, OutputError, PolicyError
from secpack.recipes.keys import (
    SigningPrivateKey,
    generate_recipient,
    generate_signing,
    load_private_pem,
    load_public_pem,
    private_pem,
    public_pem,
)
from secpack.sign.policy import Policy, policy_from_keys
from secpack.transport.atomic import named_output
from secpack.transport.files import read_small, write_key_pair

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "POLICY_ENV",
    "keygen",
    "load_ec_public",
    "load_identity",
    "load_recipient",
    "load_signing_key",
    "passphrase_from_env",
    "resolve_policy",
]

POLICY_ENV = "SECPACK_POLICY"


def passphrase_from_env(var: str | None) -> bytes | None:
    if var is None:
        return None
    value = os.environ.get(var)
    if value is None:
        raise KeyUseError("key.passphrase", f"environment variable {var} is not set")
    if not value:
        # An empty passphrase would mean "no encryption" to PEM writers: refuse it
        # rather than silently write a plaintext key the user asked to protect.
        raise KeyUseError("key.passphrase", f"environment variable {var} is empty")
    # The variable's own bytes, whatever their encoding: a passphrase that is not
    # UTF-8 was a UnicodeEncodeError, reported with Python's codec message.
    return os.fsencode(value)


def load_signing_key(path: str, passphrase: bytes | None = None) -> SigningPrivateKey:
    key = load_private_pem(read_small(path, "signing key"), passphrase, path)
    if isinstance(key, x25519.X25519PrivateKey):
        raise KeyUseError("key.invalid", f"{path} is a recipient (X25519) key, not a signing key")
    return key


def load_identity(path: str, passphrase: bytes | None = None) -> x25519.X25519PrivateKey:
    key = load_private_pem(read_small(path, "identity"), passphrase, path)
    if not isinstance(key, x25519.X25519PrivateKey):
        raise KeyUseError("key.invalid", f"{path} is not an X25519 recipient private key")
    return key


def load_recipient(path: str) -> x25519.X25519PublicKey:
    key = load_public_pem(read_small(path, "recipient"), path)
    if not isinstance(key, x25519.X25519PublicKey):
        raise KeyUseError("key.invalid", f"{path} is not an X25519 recipient public key")
    return key


def load_ec_public(path: str) -> ec.EllipticCurvePublicKey:
    """An ECDSA public key (model_signing's key type)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    key = load_public_pem(read_small(path, "public key"), path)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise KeyUseError("key.invalid", f"{path} is not an ECDSA (P-256/P-384) public key")
    return key


def resolve_policy(
    trust: Sequence[str], policy_path: str | None, trusted_root: str | None = None
) -> Policy:
    """Trust comes from ``--trust`` keys, a ``--policy`` file, or ``$SECPACK_POLICY``;
    ``trusted_root`` (``--trusted-root``) replaces the policy's sigstore root.

    Having none is an error: secpack never verifies or opens anything unsigned.
    """
    policy = _load_policy(trust, policy_path)
    if trusted_root is not None:
        if not os.path.isfile(trusted_root):
            raise PolicyError("policy.invalid", f"trusted root {trusted_root} does not exist")
        policy = dataclasses.replace(policy, trusted_root=os.path.abspath(trusted_root))
    return policy


def _load_policy(trust: Sequence[str], policy_path: str | None) -> Policy:
    if trust and policy_path:
        raise PolicyError("policy.invalid", "give either --trust keys or --policy, not both")
    if trust:
        return policy_from_keys([(p, read_small(p, "trusted key")) for p in trust])
    path = policy_path or os.environ.get(POLICY_ENV)
    if not path:
        raise PolicyError(
            "policy.none",
            f"no trust anchor: give --trust KEY.pub, --policy FILE or set {POLICY_ENV}",
        )
    base = os.path.dirname(os.path.abspath(path))

    def read_key(rel: str) -> bytes:
        return read_small(os.path.join(base, rel), "trusted key")

    def resolve(rel: str) -> str:
        return os.path.join(base, os.path.expanduser(rel))

    text = read_small(path, "policy")
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError("policy.invalid", f"{path} is not UTF-8 text") from None
    from secpack.sign.policy_file import policy_from_toml

    return policy_from_toml(decoded, read_key, resolve, path)


def keygen(
    kind: str,
    path: str,
    alg: str = "ed25519",
    passphrase: bytes | None = None,
    overwrite: bool = False,
) -> bytes:
    """Write ``path`` (private, 0600) and ``path.pub``; return the public PEM."""
    named_output(path)
    for target in (path, path + ".pub"):
        if not overwrite and os.path.lexists(target):
            raise OutputError("output.exists", f"{target} exists (use --force to replace it)")
    if kind == "signing":
        key: SigningPrivateKey | x25519.X25519PrivateKey = generate_signing(alg)
    elif kind == "recipient":
        key = generate_recipient()
    else:
        raise ValueError(f"unknown key kind {kind!r}")
    pub = public_pem(key.public_key())
    write_key_pair(path, private_pem(key, passphrase), pub, overwrite)
    return pub
