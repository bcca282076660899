"""``seal``: a model directory in, one signed (and usually encrypted) package out."""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import os
import re
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, x25519

from secpack import __version__
from secpack.api.auditing import audited, package_facts
from secpack.api.common import NullProgress, Progress, parse_expires, source_date_epoch
from secpack.api.variants import build_variants
from secpack.codec.segment import LEVELS
from secpack.errors import InputError, SecpackError
from secpack.format import cbor
from secpack.format.limits import DEFAULT_LIMITS
from secpack.format.manifest import PACKAGE_NAME_RE, Manifest
from secpack.format.sections import SIG_TYPE_COSE_SIGN1, SignatureEntry
from secpack.package import assemble
from secpack.package.plan import (
    DEFAULT_SEGMENT,
    MAX_SEGMENT,
    RUN_FILES_MAX,
    RUN_TRIAL_DEEP,
    VARIANT_SUFFIXES,
    InputTree,
    make_plan,
    variant_reader,
)
from secpack.package.reader import decode_manifest
from secpack.package.writer import SealSettings, placeholder_manifest, write_blobs
from secpack.recipes.keys import SigningPrivateKey, key_id
from secpack.sign.cose import sign_manifest
from secpack.sign.modelsig import COMPONENT as MODEL_SIGNING
from secpack.sign.modelsig import SIGNATURE_NAME, sign_model, verify_model
from secpack.tensors.variants import VARIANTS_ONLY
from secpack.transport.atomic import AtomicFile, WorkDirectory
from secpack.transport.inputs import (
    InputDirectory,
    WithExtraFiles,
    file_digests,
    refuse_collisions,
    scan_input,
)
from secpack.workers import worker_threads

__all__ = ["SealReport", "seal"]


@dataclass(frozen=True)
class SealReport:
    path: str
    manifest: Manifest
    manifest_digest: bytes
    package_size: int
    signers: tuple[bytes, ...]
    seconds: float
    notes: tuple[str, ...] = ()


def _model_signing(
    tree: InputDirectory,
    name: str,
    sign_keys: Sequence[SigningPrivateKey],
    required: ec.EllipticCurvePublicKey | None,
    threads: int,
) -> InputTree:
    """Check the source's own ``model.sig`` (``--require-model-signing``) and/or make
    one over the plaintext files with the first ECDSA signing key (``--model-signing``),
    kept in the ``model-signing`` component for ``open --emit-model-signing``."""
    digests = file_digests(tree, threads)
    present = SIGNATURE_NAME in digests
    if required is not None:
        if not present:
            raise InputError("input.signature", f"the source has no {SIGNATURE_NAME} to verify")
        verify_model(tree.read_at(SIGNATURE_NAME, 0, 1 << 20), required, digests)
    if not sign_keys:
        return tree
    key = next((k for k in sign_keys if isinstance(k, ec.EllipticCurvePrivateKey)), None)
    if key is None:
        raise InputError("input.invalid", "--model-signing needs an ECDSA (P-256/P-384) --sign-key")
    if present:
        raise InputError(
            "input.invalid",
            f"the source already has {SIGNATURE_NAME}; seal it as a file, or remove it to "
            "have secpack sign the plaintext",
        )
    return WithExtraFiles(tree, {SIGNATURE_NAME: sign_model(key, name, digests)})


def _was_variants_only(tree: InputDirectory) -> bool:
    """Whether the input is an opened ``--variants-only`` package: it holds variant
    files (which go back to their variant components) and none of the exact files
    they were made from. The package made from it is marked the same way, so that
    an exact component that kept only an adapter's config is not offered as its
    weights."""
    variant_of = variant_reader(tree, DEFAULT_LIMITS)
    paths = {f.path for f in tree.files}
    sources = [found[1] for f in tree.files if (found := variant_of(f)) is not None]
    return bool(sources) and not any(source in paths for source in sources)


# Followed links named one by one in seal's note, at most (the rest are counted).
_LINKS_SHOWN = 5
# The longest package name PACKAGE_NAME_RE takes (docs/FORMAT.md §4).
_MAX_NAME = 128
# The header's unused room is removed, by moving the blobs up, when it is at
# least 1/_COMPACT_SHARE of the package: the move then copies at most this many
# bytes per byte saved. That is small packages of many small tensors, where the
# room reserved for the largest codec records was 1-5 % of the package (a
# 0.43 MB model of 114 tensors: 1.05 %; 2,000 norm vectors: 4.8 %); on MiniLM
# it is 0.006 %, and nothing moves.
_COMPACT_SHARE = 1000


def _outside_links(tree: InputDirectory) -> tuple[str, ...]:
    """A note naming the followed links whose targets lie outside the input: with
    --follow-symlinks a link can reach any file the user can read (a cache snapshot
    links into ../../blobs, a hostile clone to ~/.ssh), and what was sealed should
    be visible."""
    inside = os.path.realpath(tree.root) + os.sep
    outside = sorted((p, t) for p, t in tree.targets.items() if not t.startswith(inside))
    if not outside:
        return ()
    shown = ", ".join(f"{p} -> {t}" for p, t in outside[:_LINKS_SHOWN])
    more = f" (and {len(outside) - _LINKS_SHOWN} more)" if len(outside) > _LINKS_SHOWN else ""
    return (f"{len(outside)} followed link(s) lead outside the input: {shown}{more}",)


def _recipient_map(
    component_names: Sequence[str],
    recipients: Sequence[tuple[str | None, x25519.X25519PublicKey]],
) -> dict[str, list[x25519.X25519PublicKey]]:
    out: dict[str, list[x25519.X25519PublicKey]] = {name: [] for name in component_names}
    for scope, pub in recipients:
        if scope is not None and scope not in out:
            raise InputError(
                "input.invalid",
                f"--recipient {scope}=...: no component {scope!r} (have {', '.join(out)})",
            )
        for name in out if scope is None else [scope]:
            if all(key_id(p) != key_id(pub) for p in out[name]):
                out[name].append(pub)
    for name, pubs in out.items():
        if not pubs:
            raise InputError(
                "input.invalid",
                f"component {name!r} has no recipient: add --recipient PUB or {name}=PUB",
            )
    return out


def default_package_name(base: str) -> str:
    """A package name made from the input's own name (a directory's, or a single
    file's): accents are dropped from Latin letters ("Mödel" -> "Model"), each
    run of characters a name may not hold becomes one ``-``, and what may not
    start a name is dropped ("my model" -> "my-model", ".index" -> "index");
    "model" when nothing is left. --name is taken as given, or refused."""
    ascii_base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode()
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", ascii_base).lstrip("._-")[:_MAX_NAME].rstrip("-")
    return name if PACKAGE_NAME_RE.fullmatch(name) else "model"


def _remove_if_same(path: str, made: os.stat_result) -> None:
    """Remove ``path`` if it is still the file this seal made."""
    now = os.stat(path)
    if (now.st_dev, now.st_ino) == (made.st_dev, made.st_ino):
        os.unlink(path)


def seal(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    sign_keys: Sequence[SigningPrivateKey] = (),
    recipients: Sequence[tuple[str | None, x25519.X25519PublicKey]] = (),
    encrypt: bool = True,
    name: str | None = None,
    version: int = 1,
    expires: str | None = None,
    components: Sequence[tuple[str, str]] = (),
    segment_size: int | None = None,
    level: str = "balanced",
    threads: int = 0,
    overwrite: bool = False,
    model_signing: bool = False,
    require_model_signing: ec.EllipticCurvePublicKey | None = None,
    variants: Sequence[str] = (),
    variants_only: bool = False,
    follow_symlinks: bool = False,
    file_runs: bool = True,
    progress: Progress | None = None,
) -> SealReport:
    """Seal ``source`` (a model directory or one file) into the package ``output``.

    ``segment_size`` defaults to 4 MiB; with ``level="max"`` and no
    ``segment_size``, files that are not safetensors get segments of 16 MiB,
    whose longer reach lets zstd -19 find more (tokenizers, GGUF, ONNX).

    ``file_runs`` lets small neighbouring files that share content (one model
    exported to several formats, a tokenizer's vocabulary in two files) share one
    segment, of at most 16 MiB (``segment_size`` where given), coded as one
    stream: smaller, where reading one of them decodes the whole run.

    Raises ``input.*`` for unusable input or options, ``key.*`` for unusable keys,
    ``output.*`` when the package cannot be written. Nothing is left at ``output``
    unless the whole package was written.
    """
    source, output = os.fspath(source), os.fspath(output)
    started = time.perf_counter()
    # One signature per key, however often (or under however many paths) it is given.
    sign_keys = list({key_id(k.public_key()): k for k in sign_keys}.values())
    with audited("seal") as audit, contextlib.ExitStack() as cleanup:
        audit["package"] = {"path": output}
        if encrypt and not recipients:
            raise InputError("input.invalid", "no --recipient given (or use --no-encrypt)")
        if not encrypt and recipients:
            raise InputError("input.invalid", "--no-encrypt cannot be combined with --recipient")
        for comp_name, pattern in components:
            # A loader takes "<name>.int8" for the int8 variant of "<name>": such a
            # rule may only gather variant files laid out as seal writes them.
            variant = comp_name.rpartition(".")[2]
            if comp_name.endswith(VARIANT_SUFFIXES) and not pattern.startswith(
                f"variants/{variant}/"
            ):
                raise InputError(
                    "input.invalid",
                    f"component name {comp_name!r} ends as a precision variant's does; "
                    f"such a component holds variants/{variant}/ files only "
                    "(seal --variant makes them)",
                )
        if level not in LEVELS:
            raise InputError("input.invalid", f"--level must be one of {', '.join(LEVELS)}")
        if type(version) is not int or not 1 <= version < 2**63:
            # (A reader takes 64-bit versions; secpack writes them below 2^63, where
            # every CBOR library's signed 64-bit integers hold them.)
            raise InputError("input.invalid", f"--version must be an integer from 1 to {2**63 - 1}")
        progress = progress or NullProgress()
        tree = scan_input(source, DEFAULT_LIMITS, follow_symlinks, output)
        pkg_name = name if name is not None else default_package_name(tree.default_name)
        if not PACKAGE_NAME_RE.fullmatch(pkg_name):
            raise InputError(
                "input.invalid",
                f"package name {pkg_name!r} is not allowed; pass --name [A-Za-z0-9._-]",
            )
        source_tree: InputTree = tree
        if variants_only and not variants:
            raise InputError("input.invalid", "--variants-only needs at least one --variant")
        if variants and model_signing:
            raise InputError(
                "input.invalid",
                "--model-signing signs the exact files; it cannot be combined with --variant",
            )
        if model_signing or require_model_signing is not None:
            source_tree = _model_signing(
                tree, pkg_name, sign_keys if model_signing else (), require_model_signing, threads
            )
            if model_signing:
                components = [(MODEL_SIGNING, SIGNATURE_NAME), *components]
        metadata = {"generator": f"secpack {__version__}"}
        if _was_variants_only(tree):
            metadata[VARIANTS_ONLY] = "true"
        build = None
        if variants:
            # The variant files are written to a scratch directory beside the
            # output, removed whatever happens (an interrupt included).
            workdir = cleanup.enter_context(WorkDirectory(output)).tmp
            build = build_variants(tree, variants, components, workdir, threads)
            # --variants-only leaves out the exact form of each file that has a
            # variant; a file without one (a dtype secpack does not model) stays,
            # and so does every file of a component whose exact weights serve a
            # variant asked for (fp16 of fp16 weights: not stored, nothing lost).
            replaced = {
                rel.split("/", 2)[2]
                for comp, rel in build.overrides
                if comp.rpartition(".")[0] not in build.exact_serves
            }
            source_tree = WithExtraFiles(
                source_tree,
                scratch=build.files,
                drop=replaced.__contains__ if variants_only else None,
            )
            # The exact files keep the components the variants were named after:
            # without the files --variants-only leaves out, the grouping could
            # otherwise come out differently (plan._split_weights).
            kept = [
                (c, glob.escape(p))
                for c, p in build.split
                if not variants_only or p not in replaced
            ]
            components = [*build.overrides, *components, *kept]
            metadata.update(build.summary)
            if variants_only:
                metadata[VARIANTS_ONLY] = "true"
        if source_tree is not tree:
            # What seal adds (model.sig, variants/...) must not collide with the input
            # either: open writes it all into one tree (FORMAT.md §10).
            refuse_collisions(source_tree.files, " (with what seal adds)")
        plan = make_plan(
            source_tree,
            components,
            segment_size or DEFAULT_SEGMENT,
            DEFAULT_LIMITS,
            tree.default_name,
            # The fast profile codes no float layout (bgx), so it has nothing to probe for.
            probe_floats=LEVELS[level] > LEVELS["fast"],
            # max: zstd -19 over 16 MiB of a file secpack does not parse, not 4.
            # On real models' large opaque files that was 1.9-3.3 % smaller
            # (llama-cpp-python's vocabulary GGUFs, tokenlearn's 10 MB tokenizer),
            # where 4 MiB left them above zstd -19 of each whole file. Tensors
            # keep 4 MiB: bgx and ans gain nothing from longer segments, and a
            # random read of one decodes less; so do files the probe finds float
            # arrays in (make_plan).
            file_segment=MAX_SEGMENT if level == "max" and segment_size is None else 0,
            run_cap=(segment_size or RUN_FILES_MAX) if file_runs else 0,
            # The run trial holds its two streams whatever the count: no memory
            # budget to weigh, only whether there is a second CPU.
            threads=worker_threads(threads, 0),
            trial_level=RUN_TRIAL_DEEP if level == "max" else 1,
        )
        created = source_date_epoch()
        settings = SealSettings(
            name=pkg_name,
            version=version,
            created=created,
            expires=parse_expires(expires, created) if expires is not None else None,
            metadata=metadata,
            recipients=_recipient_map([c.name for c in plan.components], recipients)
            if encrypt
            else {},
            level=LEVELS[level],
            threads=threads,
        )
        room = assemble.header_room(placeholder_manifest(plan, settings))
        with AtomicFile(output, overwrite=overwrite) as out:
            position = room

            def sink(data: bytes | memoryview) -> None:
                nonlocal position
                out.pwrite(position, data)
                position += len(data)

            progress.start(sum(c.size for c in plan.components), "sealing")
            manifest = write_blobs(source_tree, plan, settings, sink, progress.advance)
            # Every read of the input is done: all of it must be of one version.
            tree.check_unchanged()
            manifest_bytes = cbor.encode(manifest.to_cbor())
            _check_readable(manifest_bytes)
            audit["package"].update(
                package_facts(
                    manifest.name, manifest.version, hashlib.sha256(manifest_bytes).digest()
                )
            )
            header = assemble.fit_header(manifest_bytes, manifest, room)
            shortest = assemble.fit_header(manifest_bytes, manifest, None)
            assert shortest is not None
            slack = room - len(shortest)
            if header is None or slack * _COMPACT_SHARE >= room + manifest.stored_size:
                # The room was sized for every codec record at its largest: where
                # what is left of it is a noticeable share of the package, the
                # blobs move up to the header instead of being padded after it.
                header = shortest
                out.move_range(room, len(header), manifest.stored_size)
            out.pwrite(0, header)
            entries = [
                SignatureEntry(SIG_TYPE_COSE_SIGN1, sign_manifest(k, manifest_bytes, created))
                for k in sign_keys
            ]
            tail = assemble.signature_tail(entries)
            out.pwrite(len(header) + manifest.stored_size, tail)
            package_size = len(header) + manifest.stored_size + len(tail)
            existed = os.path.lexists(output)
            out.commit()
            if not existed:
                # Under a required audit, a package no record covers is taken back
                # (one that replaced another cannot give that one back).
                audit["undo"] = [functools.partial(_remove_if_same, output, os.stat(output))]
        return SealReport(
            path=output,
            manifest=manifest,
            manifest_digest=hashlib.sha256(manifest_bytes).digest(),
            package_size=package_size,
            signers=tuple(key_id(k.public_key()) for k in sign_keys),
            seconds=time.perf_counter() - started,
            notes=plan.notes + tuple(build.notes if build else ()) + _outside_links(tree),
        )


def _check_readable(manifest_bytes: bytes) -> None:
    """Refuse to commit a package whose manifest a reader with the default limits
    would refuse (docs/FORMAT.md §11): better an error now, with nothing written,
    than a package no one can open. The input's file count is checked up front;
    what else can reach a limit (the CBOR items of tens of thousands of
    segments, say) is only known once every segment is coded."""
    try:
        decode_manifest(manifest_bytes, DEFAULT_LIMITS)
    except SecpackError as exc:
        raise InputError(
            "input.invalid",
            f"the package would break a reader's default limits ({exc}): "
            "seal fewer files, or larger segments (--segment-size)",
        ) from None
