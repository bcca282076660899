"""``open`` (``extract`` in the library): verify, decrypt, and write every
original file back byte for byte into a new directory, atomically."""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import x25519

from secpack.api.common import NullProgress, Progress
from secpack.api.trust import remember_version, trusted_package
from secpack.errors import SchemaError, SecpackError
from secpack.format.contents import FileEntry, check_dir_count, check_paths
from secpack.format.manifest import Manifest
from secpack.package.decode import OpenComponent
from secpack.package.parallel import ordered_batched
from secpack.package.reader import largest_segment, select_components
from secpack.sign.modelsig import COMPONENT as MODEL_SIGNING
from secpack.sign.policy import Policy, Signer
from secpack.tensors.variants import VARIANTS, VARIANTS_ASKED
from secpack.transport.atomic import AtomicDirectory
from secpack.transport.outdir import OutputTree
from secpack.workers import worker_threads

__all__ = ["ExtractReport", "extract"]


# Output files held open at once by the segments drawn ahead (see extract): a
# fraction of the soft limit of 256 descriptors some systems set (macOS), which
# the syncer's and the directories' descriptors share.
_OPEN_FILES = 64


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


@dataclass(frozen=True)
class _RunJob:
    """One file run's segment (FORMAT §5), and its members to write: each is
    created, written and closed by the job itself, so that a run of many small
    files holds one output file open at a time."""

    comp: OpenComponent
    seg: int
    tree: OutputTree
    members: tuple[tuple[FileEntry, str], ...]


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


def _variant_of(name: str) -> str | None:
    """The precision variant a component holds ("fp16" for "weights.fp16"), or None."""
    base, dot, variant = name.rpartition(".")
    return variant if dot and base and variant in VARIANTS else None


def _variant_selection(manifest: Manifest, variant: str) -> list[int]:
    """Every component but the model_signing signature and the other precision
    variants. ``input.invalid`` for an unknown variant, ``component.unknown`` when
    the package holds none of that variant."""
    if variant not in VARIANTS:
        raise SecpackError(
            "input.invalid", f"unknown variant {variant!r} (one of {', '.join(VARIANTS)})"
        )
    offered = {v for c in manifest.components if (v := _variant_of(c.name))}
    # A variant seal was asked for and did not store, since it would have changed
    # nothing: the exact files are that variant, and are written as they are.
    offered.update(v for v in manifest.metadata.get(VARIANTS_ASKED, "").split(",") if v in VARIANTS)
    held = sorted(offered)
    if variant not in held:
        also = f"it holds: {', '.join(held)}" if held else "seal --variant makes one"
        raise SecpackError("component.unknown", f"the package holds no {variant} variant ({also})")
    return [
        i
        for i, c in enumerate(manifest.components)
        if c.name != MODEL_SIGNING and _variant_of(c.name) in (None, variant)
    ]


def _variant_layout(
    opened: Sequence[OpenComponent], variant: str
) -> list[list[tuple[FileEntry, str]]]:
    """The files to write from each component, with their output paths: a variant's
    ``variants/<variant>/<path>`` goes to ``<path>``, in place of the exact file it
    replaces; an exact file without a variant (a config, a dtype with none) stays."""
    prefix = f"variants/{variant}/"
    replaced: dict[str, set[str]] = {}
    for comp in opened:
        if _variant_of(comp.component.name) == variant:
            base = comp.component.name.rpartition(".")[0]
            paths = replaced.setdefault(base, set())
            paths.update(
                f.path[len(prefix) :] for f in comp.contents.files if f.path.startswith(prefix)
            )
    layout = []
    for comp in opened:
        name = comp.component.name
        if _variant_of(name) == variant:
            # A file outside the variant folder (no writer puts one there) keeps its
            # path; check_paths refuses it if it collides.
            layout.append([(f, f.path.removeprefix(prefix)) for f in comp.contents.files])
        else:
            gone = replaced.get(name, set())
            layout.append([(f, f.path) for f in comp.contents.files if f.path not in gone])
    return layout


def _decode_job(tree: OutputTree, job: _Job) -> _Job:
    out = job.comp.decode(job.seg)
    tree.pwrite(job.fd, job.offset, out, job.path)
    return job


def _run_job(job: _RunJob) -> _RunJob:
    out = memoryview(job.comp.decode(job.seg))
    for f, path in job.members:
        fd = job.tree.create(path, f.size, f.mode)
        job.tree.pwrite(fd, 0, out[f.skip : f.skip + f.size], path)
        job.tree.finish(fd, path)
    return job


def _grouped(chosen: Sequence[tuple[FileEntry, str]]) -> Iterator[list[tuple[FileEntry, str]]]:
    """The chosen files, with the members of one file run side by side together."""
    group: list[tuple[FileEntry, str]] = []
    for f, path in chosen:
        if group and not (f.run and group[0][0].run and f.first == group[0][0].first):
            yield group
            group = []
        group.append((f, path))
    if group:
        yield group


def _take_back(output: str, was_dir: bool) -> None:
    """Remove an opened tree again. Where it replaced an empty directory, only its
    contents go: the directory itself carries that one's mode, group and ACL."""
    if not was_dir:
        shutil.rmtree(output)
        return
    for entry in os.scandir(output):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def extract(
    package: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    identities: Sequence[x25519.X25519PrivateKey],
    policy: Policy,
    components: Sequence[str] | None = None,
    threads: int = 0,
    progress: Progress | None = None,
    expected_name: str | None = None,
    allow_downgrade: bool = False,
    emit_model_signing: bool = False,
    variant: str | None = None,
) -> ExtractReport:
    """Verify ``package`` against ``policy``, then decrypt the selected components
    (all by default) with ``identities`` and write their files under ``output``.

    With ``variant`` ("fp16", "bf16" or "int8"), that precision variant's files are
    written where the exact files they replace would go, and the exact ones are
    left out: the output is the model in that precision (int8 files hold codes and
    ``@scale`` tensors, for secpack's loader). It cannot be combined with
    ``components`` or ``emit_model_signing``.

    ``output`` must not exist (or be an empty directory). It appears only once every
    file has been decoded and checked; on any error nothing is left behind.
    """
    package, output = os.fspath(package), os.fspath(output)
    started = time.perf_counter()
    progress = progress or NullProgress()
    undo: list[Callable[[], None]] = []
    with trusted_package(
        "open",
        package,
        policy,
        expected_name=expected_name,
        allow_downgrade=allow_downgrade,
        undo=undo,
    ) as (src, header, signers):
        threads = worker_threads(threads, largest_segment(header.manifest))
        if variant is not None and (components or emit_model_signing):
            # model.sig covers the exact files, and a subset would mix two layouts.
            what = "--component" if components else "--emit-model-signing"
            raise SecpackError("input.invalid", f"--variant cannot be combined with {what}")
        if variant is None:
            indices = _selection(header.manifest, components, emit_model_signing)
        else:
            indices = _variant_selection(header.manifest, variant)
        # Unwrap every key and validate every contents table before writing a byte.
        opened = [OpenComponent(src, header, i, identities, policy.limits) for i in indices]
        for comp in opened:
            comp.check_headers()
        if variant is None:
            layout = [[(f, f.path) for f in c.contents.files] for c in opened]
        else:
            layout = _variant_layout(opened, variant)
        total = sum(f.size for chosen in layout for f, _ in chosen)
        files = sum(len(chosen) for chosen in layout)
        if files > policy.limits.max_files:
            # The limit holds per component when a contents table is read; seal
            # writes no more than this in all, and open writes no more either.
            # (Counted before the paths are checked, which costs more.)
            raise SchemaError(
                "schema.invalid", f"{files} files in all, more than {policy.limits.max_files}"
            )
        # Every component goes into one tree: their paths must not collide either,
        # nor make more directories than open creates.
        check_dir_count(check_paths(path for chosen in layout for _, path in chosen), policy.limits)
        progress.start(total, "opening")
        with AtomicDirectory(output) as target:
            with OutputTree(target.tmp) as tree:

                def jobs() -> Iterator[tuple[int, Callable[[], _Job | _RunJob]]]:
                    for comp, chosen in zip(opened, layout, strict=True):
                        plains = [s.plain for s in comp.component.segments]
                        for group in _grouped(chosen):
                            f, path = group[0]
                            if f.run:
                                run = _RunJob(comp, f.first, tree, tuple(group))
                                yield plains[f.first], functools.partial(_run_job, run)
                                continue
                            fd = tree.create(path, f.size, f.mode)
                            if f.count == 0:
                                tree.finish(fd, path)
                                continue
                            offset = 0
                            for seg in range(f.first, f.first + f.count):
                                last = seg == f.first + f.count - 1
                                yield (
                                    plains[seg],
                                    functools.partial(
                                        _decode_job, tree, _Job(comp, seg, fd, offset, path, last)
                                    ),
                                )
                                offset += plains[seg]

                with ThreadPoolExecutor(threads, thread_name_prefix="secpack-open") as pool:
                    window = 2 * threads + 2
                    # A file is open from its first segment's draw to its last
                    # segment's write. Drawn ahead: the window's batches, the one
                    # being written, and the job that closed the batch before
                    # them; so at most (window + 1) * batch + 1 files, which is
                    # at most _OPEN_FILES.
                    batch = max(1, _OPEN_FILES // (window + 2))
                    for done in ordered_batched(pool, jobs(), window, batch):
                        if isinstance(done, _RunJob):  # only the members chosen
                            progress.advance(sum(f.size for f, _ in done.members))
                        else:
                            progress.advance(done.comp.component.segments[done.seg].plain)
                        if isinstance(done, _Job) and done.last:
                            tree.finish(done.fd, done.path)
                tree.close()
            # Recorded before the output appears: a kill in between errs on the side
            # of refusing older versions later.
            remember_version(header, signers, policy)
            was_dir = os.path.isdir(output)  # an empty directory, replaced
            target.commit()
            # Decrypted files that no required audit record covers are taken back.
            undo.append(functools.partial(_take_back, output, was_dir))
    return ExtractReport(
        path=package,
        output=output,
        manifest=header.manifest,
        manifest_digest=header.digest,
        # Components whose files were written: with a variant, an exact component
        # it replaces entirely is opened (its file list is inside) but adds nothing.
        components=tuple(
            c.component.name
            for c, chosen in zip(opened, layout, strict=True)
            if chosen or variant is None
        ),
        files=files,
        bytes_written=total,
        signers=tuple(signers),
        seconds=time.perf_counter() - started,
    )
