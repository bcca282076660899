"""``verify``: check a package against a trust policy without any secret key."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from secpack.api.common import NullProgress, Progress
from secpack.api.trust import trusted_package
from secpack.format.manifest import Manifest
from secpack.package.reader import select_components, verify_segments
from secpack.sign.policy import Policy, Signer

__all__ = ["VerifyReport", "verify"]


@dataclass(frozen=True)
class VerifyReport:
    path: str
    manifest: Manifest
    manifest_digest: bytes
    package_size: int
    signers: tuple[Signer, ...]
    seconds: float


def verify(
    package: str | os.PathLike[str],
    policy: Policy,
    *,
    components: Sequence[str] | None = None,
    threads: int = 0,
    progress: Progress | None = None,
    expected_name: str | None = None,
    allow_downgrade: bool = False,
) -> VerifyReport:
    """Check framing, the strict manifest, signatures against ``policy``, freshness,
    and the digest of every stored segment. Decrypts nothing.

    Raises a :class:`~secpack.errors.SecpackError` on the first failure; returns a
    report only when everything holds.
    """
    package = os.fspath(package)
    started = time.perf_counter()
    progress = progress or NullProgress()
    with trusted_package(
        "verify", package, policy, expected_name=expected_name, allow_downgrade=allow_downgrade
    ) as (src, header, signers):
        indices = select_components(header.manifest, components)
        # What can be checked without a key is checked: the contents (file list,
        # paths, tensor table, and each safetensors header against the table) of
        # unencrypted components.
        plain = [i for i in indices if header.manifest.components[i].encryption is None]
        if plain:
            from secpack.package.decode import OpenComponent

            for i in plain:
                OpenComponent(src, header, i, (), policy.limits).check_headers()
        progress.start(sum(header.manifest.components[i].stored_size for i in indices), "verifying")
        verify_segments(src, header, indices, threads, progress.advance)
        return VerifyReport(
            path=package,
            manifest=header.manifest,
            manifest_digest=header.digest,
            package_size=src.size,
            signers=tuple(signers),
            seconds=time.perf_counter() - started,
        )
