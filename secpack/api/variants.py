"""``seal --variant``: lossy precision variants next to (or instead of) the exact weights.

For every safetensors file of the model and every requested variant, a new
safetensors file ``variants/<variant>/<path>`` is written to a scratch directory
beside the output, one tensor at a time (memory stays bounded by a block of
rows), and sealed into its own component ``<component>.<variant>``. The file's
``__metadata__`` records the variant, its source, the measured error of every
transformed tensor (max abs, relative L2) and, for int8, the name of each
tensor's scale tensor.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from secpack.errors import InputError
from secpack.format.limits import DEFAULT_LIMITS
from secpack.package.plan import assign_components, tensor_names_reader, variant_reader
from secpack.tensors import safetensors
from secpack.tensors.dtypes import DTYPE_SIZES
from secpack.tensors.variants import (
    INT8_TRIALS,
    VARIANTS,
    VARIANTS_ASKED,
    ElementReader,
    ErrorStats,
    int8_column_scale,
    int8_values,
    to_values,
    transform_blocks,
    unrepresentable,
    variant_dtype,
    wants_transform,
)
from secpack.transport.inputs import InputDirectory
from secpack.workers import worker_threads

__all__ = ["SCALE_SUFFIX", "VariantBuild", "build_variants"]

# Names of an int8 tensor's per-row and per-column scales: "<tensor>@scale" and
# "<tensor>@colscale" (made unique if taken).
SCALE_SUFFIX = "@scale"
COLSCALE_SUFFIX = "@colscale"
# The header is written before the tensors are transformed, with room for every
# error, and rewritten in place afterwards: each error is at most _ERR_WIDTH
# characters ("1.234567e-05", "inf"; errors are never negative), and the
# rewritten header is padded with spaces after its JSON, as safetensors allows.
_ERR_FMT = "{:.6e}"
_ERR_WIDTH = len(_ERR_FMT.format(1e-100))
# Tensors a variant leaves as they are are copied in pieces of this size.
_COPY_BYTES = 8 << 20
# The __metadata__ keys a variant file's own facts go under (docs/FORMAT.md §15).
_OWN_PREFIX = "secpack."


@dataclass
class VariantBuild:
    workdir: str
    files: dict[str, str]  # package path -> file in workdir
    overrides: list[tuple[str, str]]  # --component rules for the variant components
    summary: dict[str, str]  # package metadata: worst error per variant
    errors: dict[str, dict[str, dict[str, tuple[float, float]]]]  # variant -> path -> tensor
    notes: list[str]  # tensors a variant keeps exact, and why
    # (component, path) of each weights file the default grouping moved out of
    # "weights" (plan._split_weights): the exact files keep these components even
    # when --variants-only leaves out the files that made them clash.
    split: list[tuple[str, str]]
    # component -> the variants its exact weights serve: asked for, and not stored
    # because they would change nothing (fp16 of fp16 weights). --variants-only
    # keeps such a component's exact files, and the loader serves them for it.
    exact_serves: dict[str, list[str]] = field(default_factory=dict)


def _error_text(value: float) -> str:
    text = _ERR_FMT.format(value)
    if len(text) > _ERR_WIDTH:  # not a float64 error: always within the width
        raise AssertionError(f"error {text} is wider than its room")
    return text


def build_variants(
    tree: InputDirectory,
    variants: Sequence[str],
    overrides: Sequence[tuple[str, str]],
    workdir: str,
    threads: int = 0,
) -> VariantBuild:
    """Write every variant file into ``workdir``, an empty scratch directory the
    caller made and removes (transport.atomic.WorkDirectory), with ``threads``
    workers (0: one per usable CPU) for int8's trials."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise InputError(
            "input.invalid", f"--variant {unknown[0]!r}: expected {', '.join(VARIANTS)}"
        )
    split: list[tuple[str, str]] = []
    variant_of = variant_reader(tree, DEFAULT_LIMITS)
    groups = assign_components(
        tree.files,
        overrides,
        tree.default_name,
        tensor_names_reader(tree, DEFAULT_LIMITS),
        split,
        variant_of,
    )
    component_of = {f.path: name for name, files in groups.items() for f in files}
    for variant in variants:
        held = next((f.path for f in tree.files if f.path.startswith(f"variants/{variant}/")), None)
        if held is not None:
            # An opened package that had this variant: seal would write it again,
            # over the same paths.
            raise InputError(
                "input.invalid",
                f"the input already holds the {variant} variant ({held}; an opened "
                f"package?): seal it without --variant {variant}, or remove variants/{variant}/",
            )
    # An opened package's variant files are variants already, not weights to make
    # another from.
    sources = [f for f in tree.files if f.path.endswith(".safetensors") and variant_of(f) is None]
    if not sources:
        raise InputError("input.invalid", "--variant needs safetensors weights in the input")
    build = VariantBuild(workdir, {}, [], {}, {}, [], split)
    # int8 tries each of a few column scalings on the whole tensor, and the trials
    # are independent: one worker each, at most. A worker holds one block of rows
    # and numpy's temporaries, about 80 MB.
    workers = min(INT8_TRIALS, worker_threads(threads, 0))
    pool = ThreadPoolExecutor(workers, thread_name_prefix="secpack-variant")
    try:
        for variant in dict.fromkeys(variants):
            worst = 0.0
            written_for: dict[str, list[str]] = {}  # component -> variant files
            converted: set[str] = set()  # components with at least one tensor changed
            for f in sources:
                rel = f"variants/{variant}/{f.path}"
                target = os.path.join(workdir, *rel.split("/"))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                written = _write_variant(tree, f.path, f.size, variant, target, pool)
                if written is None:
                    # Sealed as an opaque file (see make_plan's note): it has no
                    # tensor table in the exact weights either.
                    build.notes.append(
                        f"{variant} variant: {f.path} left out (a dtype secpack does not model)"
                    )
                    continue
                errs, kept = written
                build.notes += [
                    f"{variant} variant: {f.path}: {name} kept exact: {why}"
                    for name, why in kept.items()
                ]
                build.errors.setdefault(variant, {})[rel] = errs
                worst = max([worst, *(e[1] for e in errs.values())])
                build.files[rel] = target
                build.overrides.append((f"{component_of[f.path]}.{variant}", rel))
                written_for.setdefault(component_of[f.path], []).append(rel)
                if errs:
                    converted.add(component_of[f.path])
            unchanged = [c for c in written_for if c not in converted]
            for comp in unchanged:
                # Every tensor stayed as it was: the variant would only duplicate the
                # exact weights. (Within a component the variant must hold every
                # file's tensors, so a partly converted one keeps all its copies.)
                _drop_variant(build, variant, comp, written_for[comp])
                build.exact_serves.setdefault(comp, []).append(variant)
            if not any(rel.startswith(f"variants/{variant}/") for rel in build.files):
                if unchanged:
                    continue
                raise InputError(
                    "input.invalid",
                    f"--variant {variant}: no safetensors file holds only dtypes secpack models",
                )
            build.summary[f"variant.{variant}.max_rel_l2"] = f"{worst:.6g}"
        build.summary[VARIANTS_ASKED] = ",".join(dict.fromkeys(variants))
        return build
    finally:
        pool.shutdown(cancel_futures=True)


def _drop_variant(build: VariantBuild, variant: str, comp: str, rels: list[str]) -> None:
    for rel in rels:
        os.unlink(build.files.pop(rel))
        build.errors.get(variant, {}).pop(rel, None)
    build.overrides = [o for o in build.overrides if o[1] not in rels]
    why = (
        "its float tensors are of one dimension (biases and norms stay exact), fp8, "
        "too narrow for their scales to pay, or kept exact for the reasons above"
        if variant == "int8"
        else f"its float tensors are {variant} already, or kept exact for the reasons above"
    )
    build.notes.append(
        f"{variant} variant of {comp!r} not made: no tensor in it changes ({why}); "
        "the exact weights serve it"
    )


def _count(t: safetensors.TensorEntry) -> int:
    """Elements of a tensor (the parser checked its byte span against its shape)."""
    return (t.end - t.begin) // DTYPE_SIZES[t.dtype]


def _reader(tree: InputDirectory, path: str, offset: int, dtype: str) -> ElementReader:
    """Elements of the float tensor at ``offset`` of ``path``, read when asked."""
    size = DTYPE_SIZES[dtype]

    def read(first: int, count: int) -> np.ndarray:
        return to_values(_read_exactly(tree, path, offset + first * size, count * size), dtype)

    return read


def _read_exactly(tree: InputDirectory, path: str, offset: int, length: int) -> bytes:
    data = tree.read_at(path, offset, length)
    if len(data) != length:
        raise InputError("input.changed", f"{path} changed while it was being read")
    return data


def _write_variant(
    tree: InputDirectory, path: str, size: int, variant: str, target: str, pool: Executor
) -> tuple[dict[str, tuple[float, float]], dict[str, str]] | None:
    """Write one variant file; return the error of every transformed tensor, and
    the tensors kept exact because the variant cannot hold them (with why). None
    (nothing written) for a file with a dtype secpack does not model."""
    prefix = tree.read_at(path, 0, safetensors.PREFIX_LEN)
    try:
        n = safetensors.parse_prefix(prefix, size, DEFAULT_LIMITS.max_safetensors_header)
        layout = safetensors.parse_header(
            tree.read_at(path, safetensors.PREFIX_LEN, n), size, DEFAULT_LIMITS.max_tensor_ndim
        )
    except safetensors.UnsupportedDtype:
        return None
    except InputError as exc:
        raise InputError("input.safetensors", f"{path}: {exc.detail}") from None
    names = {t.name for t in layout.tensors}

    def fresh(base: str, suffix: str) -> str:
        name = base + suffix
        while name in names:
            name += suffix
        names.add(name)
        return name

    plan = []  # (entry, new dtype, transformed?, (row scale, column scale) names)
    kept: dict[str, str] = {}
    base = safetensors.PREFIX_LEN + n
    for t in layout.tensors:
        change = wants_transform(t.dtype, t.shape, variant)
        if change:
            # The header is written before any tensor, so this needs its own pass.
            why = unrepresentable(_reader(tree, path, base + t.begin, t.dtype), _count(t), variant)
            if why is not None:
                change = False
                kept[t.name] = why
        scale = None
        if change and variant == "int8":
            scale = (fresh(t.name, SCALE_SUFFIX), fresh(t.name, COLSCALE_SUFFIX))
        plan.append((t, variant_dtype(variant) if change else t.dtype, change, scale))
    header: dict[str, object] = {}
    offset = 0
    for t, dtype, _, scale in plan:
        count = 1
        for d in t.shape:
            count *= d
        nbytes = count * DTYPE_SIZES[dtype]
        header[t.name] = {
            "dtype": dtype,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
        if scale is not None:
            rows, cols = t.shape[0], count // t.shape[0]
            for name, length in ((scale[0], rows), (scale[1], cols)):
                header[name] = {
                    "dtype": "F32",
                    "shape": [length],
                    "data_offsets": [offset, offset + 4 * length],
                }
                offset += 4 * length
    placeholder = {t.name: ["0" * _ERR_WIDTH] * 2 for t, _, change, _ in plan if change}
    # The source's own metadata stays: loaders check it (transformers 4 refuses a
    # file without "format": "pt"), and it describes the model. Keys secpack
    # writes itself are not taken from the source, where they would be stale.
    meta = {k: v for k, v in layout.metadata.items() if not k.startswith(_OWN_PREFIX)}
    meta.update({"secpack.variant": variant, "secpack.source": path})
    if kept:
        meta["secpack.kept"] = json.dumps(kept, sort_keys=True)
    scales = {t.name: s for t, _, _, s in plan if s is not None}

    def encode(errors: dict[str, list[str]]) -> bytes:
        full = {
            "__metadata__": {
                **meta,
                "secpack.errors": json.dumps(errors, sort_keys=True),
                "secpack.scales": json.dumps(scales, sort_keys=True),
            },
            **header,
        }
        # UTF-8 as it is, not escaped: "\ud83d\ude00" takes 12 bytes for a 4-byte
        # character, and a source header of non-ASCII metadata well inside the
        # header limit came out past it.
        return json.dumps(full, separators=(",", ":"), ensure_ascii=False).encode()

    raw_header = encode(placeholder)
    pad = -len(raw_header) % 8
    errors: dict[str, tuple[float, float]] = {}
    with open(target, "wb") as out:
        out.write(struct.pack("<Q", len(raw_header) + pad) + raw_header + b" " * pad)
        for t, _, change, scale in plan:
            if not change:
                for first in range(t.begin, t.end, _COPY_BYTES):
                    length = min(_COPY_BYTES, t.end - first)
                    out.write(_read_exactly(tree, path, base + first, length))
                continue
            stats = ErrorStats()
            read = _reader(tree, path, base + t.begin, t.dtype)
            if scale is not None:
                rows = t.shape[0]
                cols = _count(t) // rows
                col_scale, stats = int8_column_scale(read, rows, cols, pool)
                row_scale = np.empty(rows, dtype=np.float32)
                for values in int8_values(read, rows, cols, col_scale, None, row_scale):
                    out.write(values)
                if col_scale is None:
                    col_scale = np.ones(cols, dtype=np.float32)
                out.write(row_scale.astype("<f4").tobytes())
                out.write(col_scale.astype("<f4").tobytes())
            else:
                for values in transform_blocks(read, _count(t), variant, stats):
                    out.write(values)
            errors[t.name] = (stats.max_abs, stats.rel_l2)
        final = encode({k: [_error_text(a), _error_text(r)] for k, (a, r) in errors.items()})
        if len(final) > len(raw_header):
            raise AssertionError("variant header changed size")
        out.seek(safetensors.PREFIX_LEN)
        out.write(final + b" " * (len(raw_header) - len(final)))
    return errors, kept
