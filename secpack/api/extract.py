"""``open`` (``extract`` in the library): verify, decrypt, and write every
original file back byte for byte into a new directory, atomically."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import x25519

from secpack.api.common import NullProgress, Progress
from secpack.api.trust import remember_version, trusted_package
from secpack.errors import SecpackError
from secpack.format.contents import check_paths
from secpack.format.manifest import Manifest
from secpack.package.decode import OpenComponent
from secpack.package.parallel import ordered
from secpack.package.reader import largest_segment, select_components
from secpack.sign.modelsig import COMPONENT as MODEL_SIGNING
from secpack.sign.policy import Policy, Signer
from secpack.transport.atomic import AtomicDirectory
from secpack.transport.outdir import OutputTree
from secpack.workers import worker_threads

__all__ = ["ExtractReport", "extract"]


@dataclass(frozen=True)
class ExtractReport:
    path: str
    output: str
    manifest: Manifest
    manifest_digest: bytes
    components: tuple[str, ...]
    files: int
    bytes_written: int
    signers: tuple[Signer, ...]
    seconds: float


@dataclass(frozen=True)
class _Job:
    comp: OpenComponent
    seg: int
    fd: int
    offset: int
    path: str
    last: bool  # last segment of its file: the consumer closes the file after it


def _selection(manifest: Manifest, names: Sequence[str] | None, emit: bool) -> list[int]:
    """All components but the model_signing signature, unless it is asked for; that one
    is only valid next to every other file, so it is never written with a subset."""
    has = any(c.name == MODEL_SIGNING for c in manifest.components)
    if emit and not has:
        raise SecpackError(
            "component.unknown",
            "the package carries no model_signing signature (seal it with --model-signing)",
        )
    if names:
        if emit:
            raise SecpackError("input.invalid", "--emit-model-signing needs every component")
        return select_components(manifest, names)
    every = select_components(manifest, None)
    if emit:
        return every
    return [i for i in every if manifest.components[i].name != MODEL_SIGNING]


def _decode_job(tree: OutputTree, job: _Job) -> _Job:
    out = job.comp.decode(job.seg)
    tree.pwrite(job.fd, job.offset, out, job.path)
    return job


def extract(
    package: str,
    output: str,
    *,
    identities: Sequence[x25519.X25519PrivateKey],
    policy: Policy,
    components: Sequence[str] | None = None,
    threads: int = 0,
    progress: Progress | None = None,
    expected_name: str | None = None,
    allow_downgrade: bool = False,
    emit_model_signing: bool = False,
) -> ExtractReport:
    """Verify ``package`` against ``policy``, then decrypt the selected components
    (all by default) with ``identities`` and write their files under ``output``.

    ``output`` must not exist (or be an empty directory). It appears only once every
    file has been decoded and checked; on any error nothing is left behind.
    """
    started = time.perf_counter()
    progress = progress or NullProgress()
    with trusted_package(
        "open", package, policy, expected_name=expected_name, allow_downgrade=allow_downgrade
    ) as (src, header, signers):
        threads = worker_threads(threads, largest_segment(header.manifest))
        indices = _selection(header.manifest, components, emit_model_signing)
        # Unwrap every key and validate every contents table before writing a byte.
        opened = [OpenComponent(src, header, i, identities, policy.limits) for i in indices]
        # Every component goes into one tree: their paths must not collide either.
        check_paths(f.path for c in opened for f in c.contents.files)
        total = sum(c.component.size for c in opened)
        files = sum(len(c.contents.files) for c in opened)
        progress.start(total, "opening")
        with AtomicDirectory(output) as target:
            with OutputTree(target.tmp) as tree:

                def jobs() -> Iterator[functools.partial[_Job]]:
                    for comp in opened:
                        plains = [s.plain for s in comp.component.segments]
                        for f in comp.contents.files:
                            fd = tree.create(f.path, f.size, f.mode)
                            if f.count == 0:
                                tree.finish(fd, f.path)
                                continue
                            offset = 0
                            for seg in range(f.first, f.first + f.count):
                                last = seg == f.first + f.count - 1
                                yield functools.partial(
                                    _decode_job, tree, _Job(comp, seg, fd, offset, f.path, last)
                                )
                                offset += plains[seg]

                with ThreadPoolExecutor(threads, thread_name_prefix="secpack-open") as pool:
                    for done in ordered(pool, jobs(), 2 * threads + 2):
                        progress.advance(done.comp.component.segments[done.seg].plain)
                        if done.last:
                            tree.finish(done.fd, done.path)
                tree.close()
            # Recorded before the output appears: a kill in between errs on the side
            # of refusing older versions later.
            remember_version(header, signers, policy)
            target.commit()
    return ExtractReport(
        path=package,
        output=output,
        manifest=header.manifest,
        manifest_digest=header.digest,
        components=tuple(c.component.name for c in opened),
        files=files,
        bytes_written=total,
        signers=tuple(signers),
        seconds=time.perf_counter() - started,
    )
