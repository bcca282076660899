"""Keyless signing and verification with sigstore (sigstore-python 4.x).

A keyless signature is a sigstore bundle over a DSSE envelope holding an in-toto
Statement. Its subject is the package name with the SHA-256 of the manifest
bytes, and its predicate (type :data:`PREDICATE_TYPE`) summarises the package.
The bundle is stored in the signature section as a ``sigstore-bundle`` entry.

Verification uses a pinned trusted root from a file, never an implicit TUF
refresh, and an identity policy (SAN and issuer, optionally GitHub repository,
workflow and ref). ``Verifier.verify_dsse`` does not look at the statement's
subject, so :func:`verify_package_bundle` compares it with the manifest itself.

sigstore (and pydantic behind it) is imported only when a keyless signature is
made or checked, so that everything else starts fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from secpack.errors import IntegrityError, SecpackError, SignatureError
from secpack.format.manifest import Manifest

__all__ = [
    "PREDICATE_TYPE",
    "SIG_TYPE_SIGSTORE",
    "SigstoreSigner",
    "identity_token",
    "parse_bundle",
    "sign_keyless",
    "statement_for",
    "verify_artifact_bundle",
    "verify_dsse_bundle",
    "verify_package_bundle",
]

SIG_TYPE_SIGSTORE = "sigstore-bundle"
PREDICATE_TYPE = "https://secpack.dev/manifest/v1"
IN_TOTO_PAYLOAD = "application/vnd.in-toto+json"
TOKEN_ENV = "SIGSTORE_ID_TOKEN"  # noqa: S105 - the name of a variable, not a secret
# The public-good instance's OIDC issuer, for the interactive (browser) flow only.
PUBLIC_OIDC = "https://oauth2.sigstore.dev/auth"
# One bundle is a few KiB; the signature section caps entries at 1 MiB anyway.
_MAX_BUNDLE = 1 << 20


@dataclass(frozen=True)
class SigstoreSigner:
    """A keyless identity a policy trusts."""

    identity: str  # the certificate's SAN (e-mail, workflow URI, ...)
    issuer: str  # the OIDC issuer
    repository: str | None = None  # GitHub: "owner/repo"
    workflow: str | None = None  # GitHub: the workflow name
    ref: str | None = None  # GitHub: "refs/heads/main", "refs/tags/v1"

    @property
    def key_id(self) -> bytes:
        """A stable id for threshold counting: distinct identities count separately."""
        return hashlib.sha256(f"sigstore\0{self.issuer}\0{self.identity}".encode()).digest()

    def policy(self) -> Any:
        from sigstore.verify import policy

        rules: list[Any] = [policy.Identity(identity=self.identity, issuer=self.issuer)]
        if self.repository:
            rules.append(policy.GitHubWorkflowRepository(self.repository))
        if self.workflow:
            rules.append(policy.GitHubWorkflowName(self.workflow))
        if self.ref:
            rules.append(policy.GitHubWorkflowRef(self.ref))
        return policy.AllOf(rules)


def statement_for(manifest: Manifest, digest: bytes) -> dict[str, Any]:
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": manifest.name, "digest": {"sha256": digest.hex()}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "name": manifest.name,
            "version": manifest.version,
            "created": manifest.created,
            "expires": manifest.expires,
            "components": [
                {
                    "name": c.name,
                    "kind": c.kind,
                    "size": c.size,
                    "encrypted": c.encryption is not None,
                }
                for c in manifest.components
            ],
        },
    }


def identity_token(explicit: str | None, interactive: bool) -> Any:
    """Token sources, in order: ``explicit`` or ``$SIGSTORE_ID_TOKEN``; the CI's ambient
    credential (``detect_credential``: GitHub Actions with ``id-token: write``...); a
    browser flow, only on a terminal and when ``interactive``."""
    from sigstore.oidc import IdentityError, IdentityToken, Issuer, detect_credential

    raw = explicit or os.environ.get(TOKEN_ENV)
    try:
        if not raw:
            raw = detect_credential()
        if raw:
            return IdentityToken(raw)
        if interactive and sys.stdin.isatty():
            return Issuer(PUBLIC_OIDC).identity_token()
    except IdentityError as exc:
        raise SecpackError("sigstore.token", f"identity token refused: {exc}") from None
    raise SecpackError(
        "sigstore.token",
        "no identity token: pass --identity-token, set SIGSTORE_ID_TOKEN, or run in a CI "
        "job that grants one (GitHub Actions: permissions: id-token: write)",
    )


def load_trust_config(path: str) -> Any:
    """The sigstore client trust configuration in ``path`` (``--trust-config``):
    ``input.missing`` / ``input.io`` when it cannot be read, ``input.invalid`` when
    sigstore refuses it."""
    from sigstore.models import ClientTrustConfig

    from secpack.transport.files import read_small

    data = read_small(path, "trust config")
    try:
        return ClientTrustConfig.from_json(data.decode("utf-8"))
    except Exception as exc:  # bad UTF-8, bad JSON, or a configuration sigstore refuses
        raise SecpackError(
            "input.invalid",
            f"trust config {path}: not a sigstore client trust configuration "
            f"({type(exc).__name__})",
        ) from None


def sign_keyless(manifest_bytes: bytes, manifest: Manifest, token: Any, config: Any) -> bytes:
    """Sign the manifest's statement through Fulcio and Rekor; return the bundle JSON.
    ``config``: from ``load_trust_config``, or None for the public instance."""
    from sigstore.dsse import Statement
    from sigstore.models import ClientTrustConfig
    from sigstore.sign import SigningContext

    try:
        if config is None:
            config = ClientTrustConfig.production()
        context = SigningContext.from_trust_config(config)
        digest = hashlib.sha256(manifest_bytes).digest()
        statement = Statement(json.dumps(statement_for(manifest, digest)).encode())
        with context.signer(token) as signer:
            bundle = signer.sign_dsse(statement)
    except SecpackError:
        raise
    except Exception as exc:  # sigstore's network and protocol errors share no base class
        raise SecpackError("sigstore.failed", f"{type(exc).__name__}: {exc}") from None
    return bundle.to_json().encode()


def parse_bundle(data: bytes) -> Any:
    from sigstore.models import Bundle

    if len(data) > _MAX_BUNDLE:
        raise SignatureError("sig.malformed", "sigstore bundle too large")
    try:
        bundle = Bundle.from_json(data)
        # The envelope is built on first use, not by from_json: one of no
        # signature, of two, or of an empty one is refused only then (sigstore's
        # InvalidEnvelope), and must be malformed where every entry is parsed
        # (signatures, unsign --malformed), not an error that escapes a
        # verification later. The public accessor builds it.
        bundle.signature  # noqa: B018
    except Exception as exc:  # pydantic validation and sigstore's own checks alike
        raise SignatureError(
            "sig.malformed", f"not a sigstore bundle ({type(exc).__name__})"
        ) from None
    return bundle


def _trusted_root(path: str) -> Any:
    from sigstore.models import TrustedRoot

    try:
        return TrustedRoot.from_file(path)
    except Exception as exc:  # unreadable file, bad JSON, or a root sigstore refuses
        raise SecpackError("policy.invalid", f"trusted root {path}: {type(exc).__name__}") from None


def verify_package_bundle(
    data: bytes,
    signers: Sequence[SigstoreSigner],
    trusted_root: str,
    manifest_name: str,
    manifest_digest: bytes,
) -> SigstoreSigner | None:
    """The trusted signer whose identity this bundle carries, or None when it names no
    trusted identity. A bundle by a trusted identity whose statement is not about this
    manifest is an integrity failure (a transplanted signature)."""
    from sigstore.errors import VerificationError
    from sigstore.verify import Verifier

    bundle = parse_bundle(data)
    verifier = Verifier(trusted_root=_trusted_root(trusted_root))
    for signer in signers:
        try:
            payload_type, payload = verifier.verify_dsse(bundle, signer.policy())
        except VerificationError:
            continue
        if payload_type != IN_TOTO_PAYLOAD:
            raise IntegrityError("sigstore bundle does not carry an in-toto statement")
        _check_subject(payload, manifest_name, manifest_digest)
        return signer
    return None


def _check_subject(payload: bytes, name: str, digest: bytes) -> None:
    try:
        statement = json.loads(payload)
        subjects = statement["subject"]
        ptype = statement["predicateType"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise IntegrityError("sigstore statement is malformed") from None
    if ptype != PREDICATE_TYPE or not isinstance(subjects, list):
        raise IntegrityError("sigstore statement is not a secpack manifest statement")
    want = {"name": name, "digest": {"sha256": digest.hex()}}
    if not any(
        isinstance(s, dict) and s.get("name") == name and s.get("digest") == want["digest"]
        for s in subjects
    ):
        raise IntegrityError("sigstore statement names another manifest")


def verify_dsse_bundle(data: bytes, signer: SigstoreSigner, trusted_root: str) -> tuple[str, bytes]:
    """Verify a DSSE bundle against ``signer`` and the pinned root; return the payload
    type and payload. The caller must still check what the statement is about."""
    from sigstore.errors import VerificationError
    from sigstore.verify import Verifier

    bundle = parse_bundle(data)
    try:
        return Verifier(trusted_root=_trusted_root(trusted_root)).verify_dsse(
            bundle, signer.policy()
        )
    except VerificationError as exc:
        raise IntegrityError(f"sigstore verification failed: {exc}") from None


def verify_artifact_bundle(
    data: bytes, artifact: bytes, signer: SigstoreSigner, trusted_root: str
) -> None:
    """Verify a bundle over ``artifact``: a message-signature (hashedrekord) bundle
    directly, a DSSE bundle by requiring ``artifact``'s SHA-256 among its subjects."""
    from sigstore.errors import VerificationError
    from sigstore.verify import Verifier

    bundle = parse_bundle(data)
    # sigstore 4.x has no public accessor for the envelope.
    if bundle._dsse_envelope is None:
        try:
            Verifier(trusted_root=_trusted_root(trusted_root)).verify_artifact(
                artifact, bundle, signer.policy()
            )
        except VerificationError as exc:
            raise IntegrityError(f"sigstore verification failed: {exc}") from None
        return
    _, payload = verify_dsse_bundle(data, signer, trusted_root)
    digest = hashlib.sha256(artifact).hexdigest()
    try:
        subjects = json.loads(payload)["subject"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise IntegrityError("sigstore statement is malformed") from None
    if not any(
        isinstance(s, dict) and s.get("digest", {}).get("sha256") == digest for s in subjects
    ):
        raise IntegrityError("sigstore statement does not name this artifact")
