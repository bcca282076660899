"""``sign``, ``signatures`` and ``unsign``: manage a package's signatures.

Only the signature section at the end of the file changes: the signed manifest
and the blobs keep their bytes and offsets. Before adding a signature the
package is checked (framing, manifest, and the digest of every stored segment),
because a signature vouches for everything the manifest commits to.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from secpack.api import common
from secpack.api.auditing import audited, package_facts
from secpack.api.common import MALFORMED, source_date_epoch
from secpack.errors import FreshnessError, InputError, SecpackError
from secpack.format.limits import DEFAULT_LIMITS
from secpack.format.sections import SIG_TYPE_COSE_SIGN1, SignatureEntry, build_signature_section
from secpack.package import assemble
from secpack.package.reader import Header, read_header, verify_segments
from secpack.recipes.keys import SigningPrivateKey, key_id
from secpack.recipes.signing import COSE_ALGS
from secpack.sign import cose
from secpack.sign.keyless import SIG_TYPE_SIGSTORE
from secpack.sign.policy import Policy
from secpack.transport.atomic import AtomicFile, named_output
from secpack.transport.spkfile import FileSource

__all__ = [
    "SignReport",
    "SignatureListing",
    "add_keyless_signature",
    "add_signature",
    "list_signatures",
    "remove_signature",
]


@dataclass(frozen=True)
class SignReport:
    path: str
    key_id: bytes
    added: bool  # False when this signer had already signed the package
    signatures: int
    identity: str | None = None  # keyless: the certificate identity
    bundle: bytes | None = None  # keyless: the sigstore bundle JSON


@dataclass(frozen=True)
class SignatureListing:
    index: int
    type: str
    key_id: bytes | None  # key signatures: SHA-256 of the SPKI; keyless: of the certificate
    alg: str | None
    signer: str  # "sha256:<kid>" or the keyless identity
    signed_at: int | None
    trusted: bool | None  # against the given policy; None without one


def _in_place_path(package: str, output: str | None) -> str:
    """Where an in-place rewrite goes: through any symlinks to the file itself. A
    link (``current.spk`` to ``releases/v7.spk``) must lead to the signed package
    afterwards; replacing the link by a copy would leave its target unsigned, and
    the lock would be on one file while the other is replaced."""
    if output is not None:
        named_output(output)  # -o "$UNSET" is not a request to rewrite in place
    return os.path.realpath(package) if output is None else package


@contextlib.contextmanager
def _source(package: str, in_place: bool) -> Iterator[FileSource]:
    """The package to rewrite. In place, it is locked (flock) until the new file has
    replaced it, and it is the file the name holds once the lock is ours: two
    signers at once must each see the other's signature, never overwrite it."""
    while True:
        src = FileSource(package)
        try:
            if in_place:
                fcntl.flock(src.fd, fcntl.LOCK_EX)
                held = os.fstat(src.fd)
                try:
                    now = os.stat(package)
                except FileNotFoundError:
                    now = None
                if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
                    continue  # replaced while we waited: read the new one
            yield src
            return
        finally:
            src.close()


def _rewrite(
    src: FileSource, header: Header, entries: list[SignatureEntry], dest: str, in_place: bool
) -> None:
    tail = assemble.signature_tail(entries)
    with AtomicFile(dest, overwrite=in_place, force_option=False) as out:
        if in_place:
            out.chmod(stat.S_IMODE(os.fstat(src.fd).st_mode))
        out.copy_from(src.fd, 0, 0, header.layout.sigs_off)
        out.pwrite(header.layout.sigs_off, tail)
        out.commit()


def _keyless_identity(data: bytes) -> tuple[bytes, str, int | None]:
    """(certificate fingerprint, "SAN (issuer)", log time) of a bundle, unverified."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    from secpack.sign.keyless import parse_bundle

    bundle = parse_bundle(data)
    cert = bundle.signing_certificate
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(g.value) for g in san]
    except x509.ExtensionNotFound:
        names = []
    issuer = ""
    for ext in cert.extensions:
        # Fulcio's OIDC issuer extensions (v2 first, then the deprecated v1).
        if ext.oid.dotted_string in ("1.3.6.1.4.1.57264.1.8", "1.3.6.1.4.1.57264.1.1"):
            raw = ext.value.value
            issuer = (
                raw[2:].decode(errors="replace")
                if raw[:1] == b"\x0c"
                else raw.decode(errors="replace")
            )
            break
    when = None
    entry = bundle.log_entry
    integrated = getattr(entry, "_inner", None)
    if integrated is not None and getattr(integrated, "integrated_time", None):
        when = int(integrated.integrated_time)
    return cert.fingerprint(hashes.SHA256()), f"{', '.join(names)} ({issuer})", when


def _append(
    package: str,
    output: str | None,
    make: Callable[[Header], tuple[SignatureEntry, bytes]],
    same_signer: Callable[[SignatureEntry, Header], bool | None],
) -> tuple[SignReport, bytes | None]:
    """Add ``make``'s entry unless ``same_signer`` finds this signer's valid
    signature already there (True). An entry of this signer that does not verify
    (None: damaged, or over another manifest) is replaced, not kept: it made the
    package fail verify, and sign said it was already signed."""
    package = _in_place_path(package, output)
    with audited("sign") as audit:
        audit["package"] = {"path": package}
        with _source(package, in_place=output is None) as src:
            header = read_header(src, DEFAULT_LIMITS)
            audit["package"].update(
                package_facts(header.manifest.name, header.manifest.version, header.digest)
            )
            expires = header.manifest.expires
            if expires is not None and common.now() >= expires:
                # Every reader refuses it (fresh.expired), whoever signed it: a new
                # signature would vouch for a package that nothing will load (and a
                # keyless one would leave a public log entry for it).
                raise FreshnessError(
                    "fresh.expired",
                    f"package expired at {expires} (now {common.now()}): readers refuse it, "
                    "signed or not; seal it again with a later --expires",
                )
            verify_segments(src, header)
            found = [same_signer(e, header) for e in header.signatures]
            entries = [
                e for e, same in zip(header.signatures, found, strict=True) if same is not None
            ]
            if any(found):
                # Already signed by this key: nothing to add; a requested copy is
                # still written, unchanged.
                if output is not None:
                    _rewrite(src, header, list(header.signatures), output, in_place=False)
                return SignReport(output or package, b"", False, len(header.signatures)), None
            # Before a signature is made: a keyless one leaves a certificate and a
            # public log entry behind even when it is then refused.
            _fits_readers([*entries, SignatureEntry(SIG_TYPE_COSE_SIGN1, b"")])
            entry, kid = make(header)
            if entry.type == SIG_TYPE_COSE_SIGN1:
                # What every reader will parse, parsed before it replaces the package:
                # an entry no reader accepts would make the whole package unreadable.
                cose.parse_sign1(entry.data)
            entries.append(entry)
            _fits_readers(entries)
            _rewrite(src, header, entries, output or package, in_place=output is None)
            return SignReport(output or package, kid, True, len(entries)), entry.data


def _fits_readers(entries: list[SignatureEntry]) -> None:
    """Refuse a signature section that readers would refuse (docs/FORMAT.md §8,
    §11): written in place, it would leave a valid package that no verb reads,
    unsign included."""
    limits = DEFAULT_LIMITS
    size = len(build_signature_section(entries))
    if len(entries) > limits.max_signatures or size > limits.max_signature_bytes:
        raise InputError(
            "input.invalid",
            f"with this signature the package would have {len(entries)} signatures in "
            f"{size} bytes, and readers take at most {limits.max_signatures} in "
            f"{limits.max_signature_bytes}: remove one first (secpack unsign)",
        )


def add_signature(
    package: str | os.PathLike[str],
    key: SigningPrivateKey,
    output: str | os.PathLike[str] | None = None,
) -> SignReport:
    """Sign ``package`` with ``key``, in place or into ``output``. Signing twice with
    the same key adds nothing."""
    package = os.fspath(package)
    output = None if output is None else os.fspath(output)
    kid = key_id(key.public_key())

    def make(header: Header) -> tuple[SignatureEntry, bytes]:
        data = cose.sign_manifest(key, header.manifest_bytes, source_date_epoch())
        return SignatureEntry(SIG_TYPE_COSE_SIGN1, data), kid

    def same(entry: SignatureEntry, header: Header) -> bool | None:
        if entry.type != SIG_TYPE_COSE_SIGN1:
            return False
        try:
            sig = cose.parse_sign1(entry.data)
        except SecpackError:  # a malformed entry is no one's signature
            return False
        if sig.kid != kid:
            return False
        return True if cose.verify_sign1(sig, key.public_key(), header.manifest_bytes) else None

    report, _ = _append(package, output, make, same)
    return SignReport(report.path, kid, report.added, report.signatures)


def add_keyless_signature(
    package: str,
    *,
    token: str | None = None,
    trust_config: str | None = None,
    output: str | None = None,
    interactive: bool = False,
) -> SignReport:
    """Sign ``package`` keylessly through sigstore (Fulcio + Rekor of the public
    instance, or of ``trust_config``). See :func:`secpack.sign.keyless.identity_token`
    for where the identity token comes from."""
    from secpack.sign.keyless import identity_token, load_trust_config, sign_keyless

    # The package is read first: a missing or malformed one is reported as such,
    # before an identity token is asked for (interactively, a browser sign-in).
    with FileSource(package) as src:
        read_header(src, DEFAULT_LIMITS)
    # Likewise a --trust-config that cannot be read or that sigstore refuses.
    config = load_trust_config(trust_config) if trust_config is not None else None
    identity = identity_token(token, interactive)

    def make(header: Header) -> tuple[SignatureEntry, bytes]:
        data = sign_keyless(header.manifest_bytes, header.manifest, identity, config)
        return SignatureEntry(SIG_TYPE_SIGSTORE, data), _keyless_identity(data)[0]

    report, bundle = _append(package, output, make, lambda entry, header: False)
    name = _keyless_identity(bundle)[1] if bundle else None
    return SignReport(report.path, report.key_id, report.added, report.signatures, name, bundle)


def list_signatures(package: str, policy: Policy | None = None) -> list[SignatureListing]:
    """Every signature entry, with whether ``policy`` (if given) trusts it. Trust means
    the signature verifies under the policy, not just that its signer is listed."""
    from secpack.sign.policy import evaluate_signatures

    with FileSource(package) as src:
        header = read_header(src, policy.limits if policy else DEFAULT_LIMITS)
    out = []
    for i, entry in enumerate(header.signatures):
        trusted = None
        if policy is not None:
            try:
                trusted = bool(
                    evaluate_signatures(
                        header.manifest_bytes, [entry], _single(policy), header.manifest.name
                    )
                )
            except SecpackError:
                trusted = False
        out.append(_describe(i, entry, trusted))
    return out


def _single(policy: Policy) -> Policy:
    import dataclasses

    return dataclasses.replace(policy, threshold=1)


def _describe(index: int, entry: SignatureEntry, trusted: bool | None) -> SignatureListing:
    """One entry as listed; an entry that cannot be parsed is listed as malformed
    (no key id, never trusted) rather than hiding every other entry: a package
    keeps its good signatures however an extra entry came to be broken."""
    try:
        return _describe_entry(index, entry, trusted)
    except SecpackError as exc:
        return SignatureListing(
            index,
            entry.type,
            None,
            MALFORMED,
            f"(malformed: {exc.detail})",
            None,
            None if trusted is None else False,
        )


def _describe_entry(index: int, entry: SignatureEntry, trusted: bool | None) -> SignatureListing:
    if entry.type == SIG_TYPE_COSE_SIGN1:
        sig = cose.parse_sign1(entry.data)
        alg = COSE_ALGS.get(sig.alg)
        return SignatureListing(
            index, entry.type, sig.kid, alg, "sha256:" + sig.kid.hex(), sig.signed_at, trusted
        )
    if entry.type == SIG_TYPE_SIGSTORE:
        fingerprint, identity, when = _keyless_identity(entry.data)
        return SignatureListing(index, entry.type, fingerprint, "sigstore", identity, when, trusted)
    return SignatureListing(index, entry.type, None, None, "(unknown type)", None, trusted)


def _matches(listing: SignatureListing, key_id_text: str) -> bool:
    text = key_id_text.lower().removeprefix("sha256:")
    return listing.key_id is not None and len(text) >= 8 and listing.key_id.hex().startswith(text)


def remove_signature(
    package: str, key_id_text: str | None, output: str | None = None, *, malformed: bool = False
) -> int:
    """Remove the signatures whose key id (or keyless certificate fingerprint) starts
    with ``key_id_text`` (at least 8 hex digits), and with ``malformed`` every entry
    that cannot be parsed (which has no key id to name it by); return how many were
    removed."""
    if (key_id_text is None) == (not malformed):
        raise SecpackError(
            "input.invalid", "give exactly one of a key id (--key-id) and malformed (--malformed)"
        )
    if key_id_text is not None:
        text = key_id_text.lower().removeprefix("sha256:")
        if len(text) < 8 or any(c not in "0123456789abcdef" for c in text):
            # Said as what it is, not as "no such signature": a short prefix could
            # name more than one signer.
            raise InputError(
                "input.invalid",
                f"--key-id {key_id_text!r}: give at least 8 hex digits of the key id "
                "(secpack signatures lists them)",
            )
    package = _in_place_path(package, output)
    with audited("unsign") as audit:
        audit["package"] = {"path": package}
        with _source(package, in_place=output is None) as src:
            header = read_header(src, DEFAULT_LIMITS)
            audit["package"].update(
                package_facts(header.manifest.name, header.manifest.version, header.digest)
            )
            keep, removed = [], 0
            for i, entry in enumerate(header.signatures):
                listing = _describe(i, entry, None)
                if (malformed and listing.alg == MALFORMED) or (
                    key_id_text is not None and _matches(listing, key_id_text)
                ):
                    removed += 1
                else:
                    keep.append(entry)
            if not removed:
                what = f"key id {key_id_text}" if key_id_text is not None else "a malformed entry"
                raise SecpackError("sig.unknown", f"no signature with {what}")
            _rewrite(src, header, keep, output or package, in_place=output is None)
            return removed
