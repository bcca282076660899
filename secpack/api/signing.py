"""``sign``: add a signature to an existing package.

Only the signature section at the end of the file changes: the signed manifest
and the blobs keep their bytes and offsets. The package is first checked
(framing, manifest, and the digest of every stored segment), because a
signature vouches for everything the manifest commits to.
"""

from __future__ import annotations

from dataclasses import dataclass

from secpack.api.auditing import audited, package_facts
from secpack.format.limits import DEFAULT_LIMITS
from secpack.format.sections import SIG_TYPE_COSE_SIGN1, SignatureEntry
from secpack.package import assemble
from secpack.package.reader import read_header, verify_segments
from secpack.recipes.keys import SigningPrivateKey, key_id
from secpack.sign import cose
from secpack.transport.atomic import AtomicFile
from secpack.transport.spkfile import FileSource

__all__ = ["SignReport", "add_signature"]


@dataclass(frozen=True)
class SignReport:
    path: str
    key_id: bytes
    added: bool  # False when this key had already signed the package
    signatures: int


def add_signature(package: str, key: SigningPrivateKey, output: str | None = None) -> SignReport:
    """Sign ``package`` with ``key``, in place or into ``output``."""
    kid = key_id(key.public_key())
    with audited("sign") as audit:
        audit["package"] = {"path": package}
        with FileSource(package) as src:
            header = read_header(src, DEFAULT_LIMITS)
            audit["package"].update(
                package_facts(header.manifest.name, header.manifest.version, header.digest)
            )
            verify_segments(src, header)
            entries = list(header.signatures)
            already = any(
                e.type == SIG_TYPE_COSE_SIGN1 and cose.parse_sign1(e.data).kid == kid
                for e in entries
            )
            if already and output is None:
                return SignReport(package, kid, False, len(entries))
            if not already:
                entries.append(
                    SignatureEntry(
                        SIG_TYPE_COSE_SIGN1, cose.sign_manifest(key, header.manifest_bytes)
                    )
                )
            tail = assemble.signature_tail(entries)
            dest = output or package
            with AtomicFile(dest, overwrite=output is None) as out:
                out.copy_from(src.fd, 0, 0, header.layout.sigs_off)
                out.pwrite(header.layout.sigs_off, tail)
                out.commit()
        return SignReport(dest, kid, not already, len(entries))
