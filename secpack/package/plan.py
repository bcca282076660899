"""Planning a seal: which file goes to which component, how each file is cut
into units (a safetensors header, one tensor, a whole plain file, a file run)
and segments, and which segments share a blob. Pure except for the reads it asks
of the input tree: safetensors headers, the samples of codec.probe, and the
small files whose neighbours may share a run with them (_trial_runs).
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from secpack.codec import probe, zstd
from secpack.errors import InputError, LimitError
from secpack.format.contents import (
    FORMAT_RAW,
    FORMAT_SAFETENSORS,
    Contents,
    FileEntry,
    TensorRecord,
    Unit,
)
from secpack.format.limits import Limits
from secpack.format.manifest import COMPONENT_NAME_RE
from secpack.tensors import safetensors
from secpack.tensors.dtypes import DTYPE_SIZES, FLOAT_DTYPES, coded_as
from secpack.tensors.variants import int8_scale_table, int8_table_problem, present_entries

__all__ = ["InputFile", "InputTree", "Plan", "PlannedComponent", "PlannedSegment", "make_plan"]

MiB = 1 << 20
DEFAULT_SEGMENT = 4 * MiB
MIN_SEGMENT = 1 * MiB
MAX_SEGMENT = 16 * MiB
# A blob closes at the first unit boundary after this many plaintext bytes, so small
# tensors share a blob while a changed tensor still dirties only its own neighbourhood.
BLOB_TARGET = 16 * MiB
# A single unit larger than this is spread over several blobs (at segment boundaries)
# so that transfers can be parallel and resumable.
BLOB_MAX = 64 * MiB

# Tensors smaller than this share a segment with their small neighbours (a run,
# FORMAT §5). Each segment costs 200-350 bytes of package (its record, digest,
# salt and GCM tag; most for the float codecs' records), more than coding saves
# on a bias or a norm's weights of a few hundred bytes, and too few values for
# an entropy coder's tables to pay.
RUN_TENSOR = 64 * 1024
# A run closes before it would pass this, so that reading one small tensor
# decodes at most this much. Not above MIN_SEGMENT: a run is one segment.
RUN_BYTES = 1 * MiB
# Runs of one coded type that hold less than this are joined with such runs of
# other types beside them, and the whole coded as bytes: a float coding saves
# 10-20 % of them, less than the 200-350 bytes of a segment of their own, while
# from about 2 KiB up it may save more. (Without it, small tensors whose dtypes
# alternate, as in quantized checkpoints of scales and codes, would each keep a
# segment, and a model of such tensors would come out larger than it went in.)
MIXED_BELOW = 1024

# At most this many files are probed for float arrays (codec.probe), the largest.
MAX_PROBED = 4096

# File runs (FORMAT §5): neighbouring raw files that share content, such as one
# model exported to ONNX, TorchScript and TFLite side by side, share one segment,
# so that zstd codes each against the ones before it. Alone, each file is coded
# on its own: silero-vad's seven exports of one network came to 10.3 MB so,
# where zstd -19 of the folder as one tar is 4.5 MB. A file joins the run before
# it when zstd's fastest level (long-distance matching on) codes it after the
# run in under RUN_GAIN of what it costs alone: zstd's fastest level, times the
# float layout's gain where the probe found one (a run member is coded as bytes,
# and gives that up). The margin is for the trial's own error: its level is not
# the profile's, and the gain comes from samples. A file that does not join
# ends the run (members are neighbours), and whatever follows loses the run's
# content: at 0.85, silero-vad's fp16 export (0.94 of its cost alone) split its
# seven files in three, 5.56 MB against 4.51 MB in one run.
RUN_GAIN = 0.95
# A run with a member that would code as floats alone must cost less than the
# members apart by at least this fraction of that member's cost: its float
# coding is estimated from the probe's samples (codec.probe), not measured, and
# the estimate is off by up to 2 % either way. pymorphy3-dicts-ru's 7.4 MB
# words.dawg (a DAWG the probe takes for floats) joined a 35-byte version.py
# that saved its segment and shared nothing (0.005 % by the estimate), and lost
# 140 KB of float coding at max. Runs that share content are kept: gensim's
# lee_fasttext pair at 0.31 % by the estimate won 32 KB at balanced (1 % cut it),
# and speechmos' two exports of one ONNX network at 3.05 % won 25 KB at max.
RUN_FLOAT_SHARE = 0.001
# The trial's zstd level where the run is coded at level 19 (--level max): 19's
# search finds short repeats anywhere in its window, which level 1 (hash tables
# of 16 K entries) and long-distance matching (64 bytes and up) do not. Two
# vocabularies of one tokenizer family in different orders, whisper's
# gpt2.tiktoken and multilingual.tiktoken, cost 0.994 of the second's cost alone
# after the first at level 1, 0.932 at 9 and 0.884 at 19: level 9 sees most of
# 19's gain, at a tenth of its time (0.17 s for the pair, against 1.9 s).
RUN_TRIAL_DEEP = 9
# A segment's record, digest, salt and GCM tag: about 200 bytes of package for a
# segment coded raw or by zstd.
RUN_SEGMENT_COST = 200
# A file run holds at most this much (one segment), unless a smaller segment
# size is asked for: runs of files of a few megabytes each need room for several.
# Its members are at most half of it each: a larger file is cut into segments
# of its own anyway.
RUN_FILES_MAX = MAX_SEGMENT
# Files that join a run only for the segment they save (RUN_SEGMENT_COST: tiny
# files, whatever their content) come to at most this much of it, as small
# tensors' runs do: reading one of a thousand small files that share nothing
# then decodes little more.
RUN_LOOSE_BYTES = RUN_BYTES

CONFIG_NAMES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
        "processor_config.json",
        "feature_extractor_config.json",
        "image_processor_config.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "modules.json",
        "params.json",
        # spaCy pipelines keep their whole configuration here.
        "config.cfg",
    }
)
TOKENIZER_NAMES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
        "tokenizer.model",
        "spiece.model",
        "sentencepiece.model",
        "sentencepiece.bpe.model",
        "chat_template.jinja",
        "chat_template.json",
        # CTranslate2 conversions (faster-whisper and others) keep the vocabulary here.
        "vocabulary.txt",
        "vocabulary.json",
        # spaCy pipelines serialize their tokenizer to a file of this name, with no
        # suffix.
        "tokenizer",
    }
)
ADAPTER_MARKER = "adapter_config.json"
ADAPTER_PREFIX = "adapter_"  # PEFT's file names: adapter_config.json, adapter_model.*
_ORDER = {"config": 0, "tokenizer": 1, "weights": 2, "adapter": 3}


@dataclass(frozen=True)
class InputFile:
    path: str  # relative POSIX path, already checked against the path rules
    size: int
    mode: int


class InputTree(Protocol):
    @property
    def files(self) -> Sequence[InputFile]: ...

    def read_at(self, path: str, offset: int, length: int) -> bytes: ...

    def read_into(self, path: str, offset: int, buf: memoryview) -> int: ...


@dataclass(frozen=True)
class PlannedSegment:
    path: str
    offset: int
    length: int
    width: int
    grouped: bool
    unit: Unit
    blob: int
    dtype: str = ""  # safetensors dtype of a tensor segment ("" otherwise)
    period: int = 0  # the tensor's row length (last dimension) when it has rows
    # The dtype is codec.probe's guess for a file secpack cannot parse, not a
    # declared tensor dtype: the writer also tries plain zstd on every segment.
    guessed: bool = False
    # A file run's segment: (path, size) of each member, whose bytes, back to
    # back, are the segment's plaintext (``path`` and ``offset`` name the first).
    members: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class PlannedComponent:
    name: str
    kind: str
    media_type: str
    contents: Contents
    segments: tuple[PlannedSegment, ...]

    @property
    def size(self) -> int:
        return sum(s.length for s in self.segments)


@dataclass(frozen=True)
class Plan:
    components: tuple[PlannedComponent, ...]
    blob_count: int
    notes: tuple[str, ...] = ()  # things the user should know (files sealed as opaque)


def kind_of(name: str, has_tensors: bool) -> str:
    if name in ("config", "tokenizer", "weights", "files"):
        return name
    if name.startswith("adapter:"):
        return "adapter"
    return "weights" if has_tensors else "files"


def _adapter_names(dirs: Sequence[str]) -> dict[str, str]:
    """Each adapter directory's component: ``adapter:<its name>``; where two share a
    name (``a/lora``, ``b/lora``), ``adapter:<its path>`` (``a-lora``), numbered if
    even that repeats. Two adapters never merge into one component."""
    names = {d: "adapter:" + _sanitize(posixpath.basename(d)) for d in dirs}
    counts = Counter(names.values())
    shared = {n for n, c in counts.items() if c > 1}
    for d in sorted(dirs):
        if names[d] in shared:
            names[d] = "adapter:" + _sanitize(d.replace("/", "-"))
    taken: set[str] = set()
    for d in sorted(dirs):
        name, k = names[d], 2
        while names[d] in taken:
            suffix = f"-{k}"
            names[d] = name[: len("adapter:") + _ADAPTER_NAME_MAX - len(suffix)] + suffix
            k += 1
        taken.add(names[d])
    return names


def _default_component(path: str, adapters: Mapping[str, str], root_adapter: str | None) -> str:
    # Deepest directory first: a file belongs to the innermost adapter around it.
    for d in adapters:
        if path.startswith(d + "/"):
            return adapters[d]
    base = posixpath.basename(path)
    # The input is itself an adapter (PEFT saves adapter_config.json beside
    # adapter_model.safetensors): its adapter_* files are the adapter; a config,
    # tokenizer or other file beside them keeps its usual component.
    if root_adapter is not None and path == base and base.startswith(ADAPTER_PREFIX):
        return root_adapter
    # Shards and their index (model.safetensors.index.json) travel together.
    if base.endswith((".safetensors", ".safetensors.index.json")):
        return "weights"
    if base in TOKENIZER_NAMES or base.endswith(".tiktoken"):
        return "tokenizer"
    if base in CONFIG_NAMES or (base.endswith("config.json") and base != "tokenizer_config.json"):
        return "config"
    return "files"


# An adapter's name keeps room for a variant's suffix (".int8") inside the 64
# characters a component name may have after its "adapter:".
_ADAPTER_NAME_MAX = 64 - len(".int8")


# What a precision variant's component name ends in (secpack.tensors.variants.
# VARIANTS, kept here so that planning does not import numpy): no other component
# may end so, or a loader would take it for a variant of another.
VARIANT_SUFFIXES = (".fp16", ".bf16", ".int8")
_VARIANT_NAMES = tuple(v.lstrip(".") for v in VARIANT_SUFFIXES)


def _sanitize(text: str) -> str:
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "-" for c in text)
    cleaned = cleaned.strip("-._")[:_ADAPTER_NAME_MAX].rstrip("-._") or "adapter"
    if cleaned.endswith(VARIANT_SUFFIXES):  # an adapter folder named "lora.fp16"
        cleaned = cleaned[:-5] + "-" + cleaned[-4:]
    return cleaned


def assign_components(
    files: Sequence[InputFile],
    overrides: Sequence[tuple[str, str]],
    root_name: str = "",
    tensor_names: Callable[[InputFile], frozenset[str]] | None = None,
    split: list[tuple[str, str]] | None = None,
    variant_of: Callable[[InputFile], tuple[str, str] | None] | None = None,
) -> dict[str, list[InputFile]]:
    """Group files into components: ``--component NAME=GLOB`` rules first, then
    defaults. ``root_name`` (the input directory's name) names the adapter when the
    input is itself one: ``adapter:<root_name>``, like an adapter's subdirectory.
    With ``tensor_names`` (the tensor names of a safetensors file), weights that
    would share a tensor name in ``weights`` are split (see _split_weights), and
    ``split``, when given, receives (component, path) of every file moved."""
    for name, _ in overrides:
        if not COMPONENT_NAME_RE.fullmatch(name):
            raise InputError("input.invalid", f"component name {name!r} is not allowed")
    adapter_dirs = sorted(
        {posixpath.dirname(f.path) for f in files if posixpath.basename(f.path) == ADAPTER_MARKER}
        - {""},
        key=len,
        reverse=True,
    )
    adapters = _adapter_names(adapter_dirs)  # keeps their order: deepest first
    root_adapter = None
    if any(f.path == ADAPTER_MARKER for f in files):
        root_adapter = "adapter:" + _sanitize(root_name)
        if root_adapter in adapters.values():
            # A subdirectory adapter already has that name: the root's files keep
            # their usual components rather than merge two adapters into one.
            root_adapter = None
    used = [False] * len(overrides)
    groups: dict[str, list[InputFile]] = {}
    defaulted: list[InputFile] = []  # in "weights" by default, not by a rule
    # (file, variant, the path of the file it is a variant of): an opened package's
    # variants/<v>/ files, which go back to the variant component they came from.
    variant_files: list[tuple[InputFile, str, str]] = []
    for f in files:
        target = None
        for i, (name, pattern) in enumerate(overrides):
            if fnmatch.fnmatchcase(f.path, pattern):
                target, used[i] = name, True
                break
        if target is None and variant_of is not None:
            found = variant_of(f)
            if found is not None:
                variant_files.append((f, *found))
                continue
        if target is None:
            target = _default_component(f.path, adapters, root_adapter)
            if target == "weights":
                defaulted.append(f)
        groups.setdefault(target, []).append(f)
    for i, (name, pattern) in enumerate(overrides):
        if not used[i]:
            raise InputError("input.invalid", f"--component {name}={pattern} matches no file")
    if tensor_names is not None and defaulted:
        moved = _split_weights(groups, defaulted, tensor_names)
        if split is not None:
            split.extend(moved)
    if variant_files:
        # The component of the exact file, where it is in the input too (after
        # any split); else where it would go (sealed --variants-only).
        where = {g.path: name for name, members in groups.items() for g in members}
        for f, variant, source in variant_files:
            base = where.get(source) or _default_component(source, adapters, root_adapter)
            groups.setdefault(f"{base}.{variant}", []).append(f)
    return groups


# The shard suffix of a sharded checkpoint's files (model-00001-of-00003).
_SHARD_RE = re.compile(r"-\d+-of-\d+$")


def _weight_set(path: str) -> tuple[str, str]:
    """(directory, checkpoint) of a weights file: shards of one checkpoint, and
    its index, share both (``model``); ``model.fp16.safetensors`` beside
    ``model.safetensors`` is another checkpoint (``model.fp16``)."""
    folder, base = posixpath.split(path)
    stem = base.removesuffix(".index.json").removesuffix(".safetensors")
    return folder, _SHARD_RE.sub("", stem)


def _split_weights(
    groups: dict[str, list[InputFile]],
    defaulted: list[InputFile],
    tensor_names: Callable[[InputFile], frozenset[str]],
) -> list[tuple[str, str]]:
    """Split the default ``weights`` component when two of its files share a
    tensor name: the loader addresses tensors by name, so they cannot share a
    component. That is a pipeline's parts in folders of their own (``unet/``,
    ``vae/``), or two precisions of one model side by side
    (``model.safetensors``, ``model.fp16.safetensors``).

    Each checkpoint (a directory's file, or its shards with their index) then
    gets a component of its own: the top directory's plainest checkpoint keeps
    ``weights``, the others are named ``weights-<directory>-<checkpoint>`` (each
    part only where it tells them apart). Nothing moves when no name is shared,
    and files a ``--component`` rule placed are never moved. Returns
    (component, path) of each file that left ``weights``."""
    seen: dict[str, str] = {}
    clash = False
    for f in defaulted:
        for name in tensor_names(f):
            if seen.setdefault(name, f.path) != f.path:
                clash = True
    if not clash:
        return []
    sets: dict[tuple[str, str], list[InputFile]] = {}
    for f in defaulted:
        sets.setdefault(_weight_set(f.path), []).append(f)
    per_folder = Counter(folder for folder, _ in sets)
    # The plainest checkpoint of the top directory: no dotted precision suffix,
    # then the shortest name.
    top = sorted((k for k in sets if k[0] == ""), key=lambda k: ("." in k[1], len(k[1]), k[1]))
    keep = top[0] if top else None
    moved = {f.path for f in defaulted}
    groups["weights"] = [f for f in groups["weights"] if f.path not in moved]
    taken = set(groups) - {"weights"}
    moved_out: list[tuple[str, str]] = []
    for key in sorted(sets, key=lambda k: (k != keep, k)):
        if key == keep:
            name = "weights"
        else:
            folder, checkpoint = key
            # The folder tells parts apart only where they are in more than one
            # (chess-cv's weights/arrows.safetensors, weights/pieces.safetensors:
            # weights-arrows, not weights-weights-arrows).
            parts = [folder.replace("/", "-")] if folder and len(per_folder) > 1 else []
            if per_folder[folder] > 1 or not folder:
                parts.append(checkpoint)
            name = _numbered("weights-" + _component_part("-".join(parts)), taken)
        taken.add(name)
        groups.setdefault(name, []).extend(sets[key])
        if name != "weights":
            moved_out += [(name, f.path) for f in sets[key]]
    if not groups["weights"]:
        del groups["weights"]
    return moved_out


def _component_part(text: str) -> str:
    """``text`` as the rest of a component name: lower case, and one ``-`` for
    every run of characters a name cannot hold, dots included (a name ending in
    ``.int8`` would read as a precision variant's); ``sub dir/ñested`` is
    ``sub-dir-ested``, not ``sub-dir--ested``."""
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c == "-") else "-" for c in text.lower())
    cleaned = re.sub("-{2,}", "-", cleaned)
    return cleaned.strip("-")[: _ADAPTER_NAME_MAX - len("weights-")].rstrip("-") or "part"


def _numbered(name: str, taken: set[str]) -> str:
    found, k = name, 2
    while found in taken:
        suffix = f"-{k}"
        found = name[: _ADAPTER_NAME_MAX - len(suffix)] + suffix
        k += 1
    return found


def _order_key(name: str) -> tuple[int, str]:
    if name == "files":
        return (9, name)
    return (_ORDER.get(name.split(":", maxsplit=1)[0], 5), name)


class _Builder:
    """Accumulates segments for one component and assigns them to blobs."""

    def __init__(self, first_blob: int, segment_size: int) -> None:
        self.segment_size = segment_size
        self.segments: list[PlannedSegment] = []
        self.blob = first_blob - 1
        self.blob_fill = BLOB_TARGET  # forces a new blob at the first unit

    def add_unit(
        self,
        label: tuple[str, str],
        path: str,
        offset: int,
        length: int,
        width: int,
        grouped: bool,
        dtype: str = "",
        period: int = 0,
        lead: int = 0,
        guessed: bool = False,
        segment_size: int = 0,
    ) -> tuple[int, int]:
        """Cut a unit into segments, of ``segment_size`` bytes where given and the
        builder's otherwise. ``lead`` > 0 puts its first ``lead`` bytes in a
        segment of their own, so that the segments after it start on the element
        boundaries of ``width``; bytes past the last whole element get one too.
        Those two are coded as opaque bytes. (A tensor has neither.)"""
        step = segment_size or self.segment_size
        first = len(self.segments)
        if length == 0:
            return first, 0
        if self.blob_fill >= BLOB_TARGET:
            self.blob += 1
            self.blob_fill = 0
        lead = min(lead, length)
        end = length - (length - lead) % width
        cuts = [(0, lead)] if lead else []
        cuts += [(start, min(step, end - start)) for start in range(lead, end, step)]
        whole = len(cuts)
        if end < length:
            cuts.append((end, length - end))
        for part, (start, size) in enumerate(cuts):
            if self.blob_fill and self.blob_fill + size > BLOB_MAX:
                self.blob += 1
                self.blob_fill = 0
            unit = Unit(label, part, part == len(cuts) - 1)
            elements = not (lead and part == 0) and part < whole
            self.segments.append(
                PlannedSegment(
                    path,
                    offset + start,
                    size,
                    width if elements else 1,
                    grouped and elements,
                    unit,
                    self.blob,
                    dtype if elements else "",
                    period,
                    guessed and elements,
                )
            )
            self.blob_fill += size
        return first, len(cuts)

    def add_run(self, files: Sequence[InputFile]) -> int:
        """One file run's segment (FORMAT §5): its index."""
        length = sum(f.size for f in files)
        if self.blob_fill >= BLOB_TARGET or self.blob_fill + length > BLOB_MAX:
            self.blob += 1
            self.blob_fill = 0
        self.segments.append(
            PlannedSegment(
                files[0].path,
                0,
                length,
                1,
                False,
                Unit(("file-run", files[0].path), 0, True),
                self.blob,
                members=tuple((f.path, f.size) for f in files),
            )
        )
        self.blob_fill += length
        return len(self.segments) - 1

    @property
    def next_blob(self) -> int:
        return self.blob + 1


def make_plan(
    tree: InputTree,
    overrides: Sequence[tuple[str, str]] = (),
    segment_size: int = DEFAULT_SEGMENT,
    limits: Limits | None = None,
    root_name: str = "",
    probe_floats: bool = False,
    file_segment: int = 0,
    run_cap: int = RUN_FILES_MAX,
    threads: int = 1,
    trial_level: int = 1,
) -> Plan:
    """Plan the components, units, segments and blobs for sealing ``tree``
    (``root_name``: see assign_components). ``probe_floats`` samples each file that
    is not safetensors for float arrays (codec.probe), and cuts and marks the
    segments of those where a float layout pays. ``file_segment``, when given,
    is the segment size for the files that are not safetensors. ``run_cap`` bounds
    a file run's segment (see RUN_GAIN); 0 makes none. With ``threads`` above 1
    the run trial codes each file alone and after its run at the same time, at
    zstd level ``trial_level`` (RUN_TRIAL_DEEP where runs are coded at 19)."""
    limits = limits or Limits()
    # Multiples of 64 keep every segment boundary on an element boundary for all dtypes.
    for size in {segment_size, file_segment or segment_size}:
        if not MIN_SEGMENT <= size <= MAX_SEGMENT or size % 64:
            raise InputError(
                "input.invalid",
                f"segment size must be a multiple of 64 in [{MIN_SEGMENT}, {MAX_SEGMENT}]",
            )
    if not tree.files:
        raise InputError("input.invalid", "nothing to seal: the input holds no files")
    if len(tree.files) > limits.max_files:
        # The input scan counts the input; what seal adds (variant files, model.sig)
        # counts too: open refuses a package of more files than this in all.
        raise InputError(
            "input.invalid",
            f"{len(tree.files)} files with what seal adds, more than {limits.max_files}",
        )
    notes: list[str] = []
    layouts = _Layouts(tree, limits, notes)
    probed: frozenset[str] = frozenset()
    if probe_floats:
        # The largest MAX_PROBED files that are not safetensors: a probed file's
        # segments carry float codec records (about 50 more CBOR items each), and
        # the bound keeps them far below the readers' item limit (§11) even for
        # inputs of tens of thousands of such files.
        eligible = [f for f in tree.files if f.size >= probe.MIN_FILE and layouts.get(f) is None]
        eligible.sort(key=lambda f: (-f.size, f.path))
        probed = frozenset(f.path for f in eligible[:MAX_PROBED])
    groups = assign_components(
        tree.files, overrides, root_name, layouts.tensor_names, variant_of=layouts.variant_of
    )
    components = []
    next_blob = 0
    for name in sorted(groups, key=_order_key):
        files = sorted(groups[name], key=lambda f: f.path.encode("utf-8"))
        builder = _Builder(next_blob, segment_size)
        entries: list[FileEntry] = []
        tensors: list[TensorRecord] = []
        # Probed first: a run member is coded as bytes, so a float layout is what
        # it gives up (its gain weighs in the run's trial).
        guesses = {f.path: _probe(tree, f) for f in files if f.path in probed}
        runs = _file_runs(
            tree,
            [f if layouts.get(f) is None else None for f in files],
            run_cap,
            {path: g[2] for path, g in guesses.items() if g is not None},
            threads,
            trial_level,
        )
        members: set[str] = set()
        for f in files:
            if f.path in members:
                continue
            file_run = runs.get(f.path)
            if file_run is not None:
                seg, skip = builder.add_run(file_run), 0
                for m in file_run:
                    entries.append(
                        FileEntry(m.path, m.size, m.mode, FORMAT_RAW, seg, 1, run=True, skip=skip)
                    )
                    members.add(m.path)
                    skip += m.size
                continue
            first = len(builder.segments)
            layout = layouts.get(f)
            if layout is not None:
                builder.add_unit(("header", f.path), f.path, 0, layout.header_len, 1, False)
                for run in _runs(layout.tensors):
                    t = run[0]
                    # A run of mixed types is coded as bytes (no dtype, width 1).
                    mixed = len({coded_as(m.dtype) for m in run}) > 1
                    coded = "" if mixed else coded_as(t.dtype)
                    width = DTYPE_SIZES.get(coded, 1)
                    # A row's length in the coded type's elements (two per C64); a
                    # run's tensors have rows of their own sizes, so it has none.
                    row = (
                        t.shape[-1] * (DTYPE_SIZES[t.dtype] // width)
                        if len(t.shape) >= 2 and len(run) == 1
                        else 0
                    )
                    start = layout.header_len + t.begin
                    t_first, t_count = builder.add_unit(
                        ("tensor", t.name) if len(run) == 1 else ("run", t.name),
                        f.path,
                        start,
                        run[-1].end - t.begin,
                        width,
                        coded in FLOAT_DTYPES and width > 1,
                        coded,
                        row,
                    )
                    for member in run:
                        tensors.append(
                            TensorRecord(
                                member.name,
                                member.dtype,
                                member.shape,
                                len(entries),
                                layout.header_len + member.begin,
                                member.end - member.begin,
                                t_first,
                                t_count,
                                run=len(run) > 1,
                                skip=member.begin - t.begin,
                            )
                        )
                fmt, header = FORMAT_SAFETENSORS, layout.header_len
            else:
                guess = guesses.get(f.path)
                dtype, phase = guess[:2] if guess else ("", 0)
                builder.add_unit(
                    ("file", f.path),
                    f.path,
                    0,
                    f.size,
                    DTYPE_SIZES.get(dtype, 1),
                    guess is not None,
                    dtype,
                    lead=phase,
                    guessed=guess is not None,
                    # The larger segments are for zstd's window (seal's max); a
                    # float layout gains nothing from them, and a segment that
                    # spans arrays of other layouts loses. Measured at max on 50
                    # real folders: 14 smaller (ddddocr's ONNX 38 KB, MiniLM's
                    # pytorch_model.bin 32-40 KB), 7 larger (spaCy's models 29
                    # KB, 0.24 %), 292 KB less in all; the highest peak RSS 510
                    # MiB -> 396 MiB, face_recognition_models 57 -> 32 s.
                    segment_size=file_segment if guess is None else 0,
                )
                fmt, header = FORMAT_RAW, 0
            entries.append(
                FileEntry(f.path, f.size, f.mode, fmt, first, len(builder.segments) - first, header)
            )
        _check_unique_tensor_names(name, tensors, entries)
        if name.endswith(".int8"):
            _check_int8_tables(
                tree, name, [f for f in files if layouts.get(f) is not None], layouts
            )
        kind = kind_of(name, bool(tensors))
        components.append(
            PlannedComponent(
                name=name,
                kind=kind,
                media_type=f"application/vnd.secpack.{kind}.v1",
                contents=Contents(tuple(entries), tuple(tensors)),
                segments=tuple(builder.segments),
            )
        )
        next_blob = builder.next_blob
    return Plan(tuple(components), next_blob, tuple(notes))


def _file_runs(
    tree: InputTree,
    files: Sequence[InputFile | None],
    cap: int,
    gains: Mapping[str, float],
    threads: int = 1,
    level: int = 1,
) -> dict[str, list[InputFile]]:
    """The file runs among ``files`` (None for a file that cannot be in one), by
    the path of each run's first file (see _trial_runs). ``gains``: what the float
    layout codes a probed file to, as a fraction of zstd."""
    try:
        if threads < 2 or sum(f is not None for f in files) < 2:
            return _trial_runs(tree, files, cap, gains, None, level)
        # One more thread: it codes each file alone while this one codes it after
        # its run (zstd lets go of the GIL). The seal's workers start only after
        # the plan, so the trial has the CPUs to itself; on mediapipe's 14 TFLite
        # files (28 MB, none joins) it was 0.16 s of a 0.6 s seal on one thread.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="secpack-trial") as pool:
            return _trial_runs(tree, files, cap, gains, pool, level)
    except LimitError:
        # The trial's compressor (a 16 MiB window) did not fit in the memory the
        # process may have: a package without runs is as valid, and the seal's
        # own work then reports what asks for less, where it runs out.
        return {}


def _trial_runs(
    tree: InputTree,
    files: Sequence[InputFile | None],
    cap: int,
    gains: Mapping[str, float],
    pool: ThreadPoolExecutor | None,
    level: int = 1,
) -> dict[str, list[InputFile]]:
    """Neighbours of at most ``cap`` // 2 bytes each and ``cap`` in all, trialled
    as one stream (zstd at ``level``, its fastest by default, with long-distance
    matching, as the run would be coded, file by file): a file joins the run
    before it where it costs there under RUN_GAIN of its cost alone (zstd's at
    the same level, or its float layout's where the probe found one and that is
    smaller), or of that plus a segment while such files come to at most
    RUN_LOOSE_BYTES of the run (a tiny file between two exports of one model
    joins them). A run is kept only where it costs less in all than its files
    apart, their float coding included (by RUN_FLOAT_SHARE of it, where a file
    has one). ``pool``, where given, codes
    each file alone beside its coding after the run; the outcome is the same."""
    out: dict[str, list[InputFile]] = {}
    run: list[InputFile] = []
    alone: list[float] = []  # each member's cost alone
    together = 0  # the run's trial stream so far
    total = 0
    loose = 0  # bytes of the members that joined only for the segment they save
    run_gains: list[float | None] = []  # each member's float gain (gains), if any
    # Two streams: the run's, and a fresh one that codes a file alone, which is
    # also the start of the next run where the file does not join (so that no
    # file is coded three times).
    trial, spare = zstd.RunTrial(level), zstd.RunTrial(level)

    def cost_alone(fresh: int, data: bytes, gain: float | None) -> float:
        # The smaller of zstd's and the float layout's (its gain is over zstd's
        # level 3, applied to the fastest level's cost, as the probe's samples
        # were measured): a deeper trial level alone may already beat it.
        if gain is None:
            return fresh
        return min(fresh, gain * (fresh if level == 1 else zstd.trial_size(data)))

    def close() -> None:
        # Apart, each member costs itself and a segment; together, the stream and
        # one segment. A member that would code as floats alone is costed from
        # the probe's samples: the run must beat that by RUN_FLOAT_SHARE of it.
        floaty = sum(a for a, g in zip(alone, run_gains, strict=True) if g is not None)
        apart = sum(alone) + RUN_SEGMENT_COST * (len(run) - 1)
        if len(run) > 1 and together + RUN_FLOAT_SHARE * floaty < apart:
            out[run[0].path] = list(run)

    fits = [f is not None and 0 < f.size <= cap // 2 for f in files] + [False]
    for k, f in enumerate([*files, None]):
        if f is None or not fits[k] or (not run and not fits[k + 1]):
            # (A file that fits, between two that do not, is never read.)
            close()
            run, alone, together, total, loose, run_gains = [], [], 0, 0, 0, []
            continue
        data = tree.read_at(f.path, 0, f.size)
        if len(data) != f.size:
            raise InputError("input.changed", f"{f.path} changed while it was being read")
        gain = gains.get(f.path)
        if run and total + f.size <= cap:
            spare.restart()
            pending = pool.submit(spare.add, data) if pool is not None else None
            cost = trial.add(data)
            # Alone (needed whether it joins or not: if not, the spare stream
            # holding it goes on as the next run's).
            fresh = pending.result() if pending is not None else spare.add(data)
            own = cost_alone(fresh, data, gain)
            shares = cost < RUN_GAIN * own
            small = loose + f.size <= RUN_LOOSE_BYTES
            # Alone, a file costs at most its size and a segment: one that does not
            # beat that after the run does not join it.
            if cost < RUN_GAIN * (f.size + RUN_SEGMENT_COST) and (
                shares or (small and cost < RUN_GAIN * (own + RUN_SEGMENT_COST))
            ):
                loose += 0 if shares else f.size
                run.append(f)
                alone.append(own)
                run_gains.append(gain)
                together += cost
                total += f.size
                continue
            close()
            trial, spare = spare, trial
            run, alone, together, total, loose = [f], [own], fresh, f.size, 0
            run_gains = [gain]
            continue
        close()
        trial.restart()
        together = trial.add(data)
        run, alone, total, loose = [f], [cost_alone(together, data, gain)], f.size, 0
        run_gains = [gain]
    return out


def _runs(tensors: Sequence[safetensors.TensorEntry]) -> list[list[safetensors.TensorEntry]]:
    """The file's tensors, in order, cut into units: each tensor of RUN_TENSOR bytes
    or more alone, and the small ones between them in runs of neighbours of one
    coded type that share a segment (FORMAT §5), up to RUN_BYTES each. Runs of
    one type that stay below MIXED_BELOW are joined with such neighbours of other
    types (coded as bytes). A run of one is an ordinary tensor unit."""
    out: list[list[safetensors.TensorEntry]] = []
    run: list[safetensors.TensorEntry] = []
    for t in tensors:
        size = t.end - t.begin
        small = 0 < size < RUN_TENSOR
        if run and (
            not small
            or coded_as(t.dtype) != coded_as(run[0].dtype)
            or t.end - run[0].begin > RUN_BYTES
        ):
            out.append(run)
            run = []
        if small:
            run.append(t)
        else:
            out.append([t])
    if run:
        out.append(run)
    return _mixed(out)


def _mixed(units: list[list[safetensors.TensorEntry]]) -> list[list[safetensors.TensorEntry]]:
    """``units`` with neighbouring runs of small tensors that each hold less than
    MIXED_BELOW bytes joined into one (while it stays within RUN_BYTES)."""

    def tiny(unit: list[safetensors.TensorEntry]) -> bool:
        total = unit[-1].end - unit[0].begin
        return 0 < total < MIXED_BELOW and all(t.end - t.begin < RUN_TENSOR for t in unit)

    out: list[list[safetensors.TensorEntry]] = []
    joinable = False  # whether out[-1] is made of tiny units only
    for unit in units:
        if joinable and tiny(unit) and unit[-1].end - out[-1][0].begin <= RUN_BYTES:
            out[-1] = out[-1] + unit
        else:
            out.append(unit)
            joinable = tiny(unit)
    return out


def _probe(tree: InputTree, f: InputFile) -> tuple[str, int, float] | None:
    """codec.probe's float layout for file ``f`` (of at least probe.MIN_FILE
    bytes), from samples of it, and its gain over zstd (probe.float_gain)."""
    samples = [tree.read_at(f.path, at, probe.CHUNK) for at in probe.sample_offsets(f.size)]
    if any(len(s) != probe.CHUNK for s in samples):
        raise InputError("input.changed", f"{f.path} changed while it was being sealed")
    return probe.float_gain(samples)


class _Layouts:
    """The tensor layout of each ``.safetensors`` file, read once."""

    def __init__(self, tree: InputTree, limits: Limits, notes: list[str]) -> None:
        self._tree, self._limits, self._notes = tree, limits, notes
        self._read: dict[str, safetensors.SafetensorsLayout | None] = {}

    def get(self, f: InputFile) -> safetensors.SafetensorsLayout | None:
        if not f.path.endswith(".safetensors"):
            return None
        if f.path not in self._read:
            self._read[f.path] = _read_layout(self._tree, f, self._limits, self._notes)
        return self._read[f.path]

    def tensor_names(self, f: InputFile) -> frozenset[str]:
        layout = self.get(f)
        return frozenset(t.name for t in layout.tensors) if layout is not None else frozenset()

    def variant_of(self, f: InputFile) -> tuple[str, str] | None:
        """(variant, source path) of a precision-variant file as seal writes them
        (``variants/<v>/<source>``, its metadata naming both), or None."""
        folder, variant, source = [*f.path.split("/", 2), "", ""][:3]
        if folder != "variants" or variant not in _VARIANT_NAMES or not source:
            return None
        layout = self.get(f)
        if layout is None:
            return None
        meta = layout.metadata
        if meta.get("secpack.variant") != variant or meta.get("secpack.source") != source:
            return None
        return variant, source


def variant_reader(
    tree: InputTree, limits: Limits
) -> Callable[[InputFile], tuple[str, str] | None]:
    """``assign_components``'s ``variant_of`` for ``tree``."""
    return _Layouts(tree, limits, []).variant_of


def tensor_names_reader(tree: InputTree, limits: Limits) -> Callable[[InputFile], frozenset[str]]:
    """``assign_components``'s ``tensor_names`` for ``tree`` (notes are dropped:
    the seal's own plan makes them)."""
    return _Layouts(tree, limits, []).tensor_names


def _read_layout(
    tree: InputTree, f: InputFile, limits: Limits, notes: list[str]
) -> safetensors.SafetensorsLayout | None:
    """The file's tensor layout; None (seal it as an opaque file) when it uses a dtype
    secpack does not model, which is noted; any other defect refuses the input."""
    prefix = tree.read_at(f.path, 0, safetensors.PREFIX_LEN)
    try:
        n = safetensors.parse_prefix(prefix, f.size, limits.max_safetensors_header)
        return safetensors.parse_header(
            tree.read_at(f.path, safetensors.PREFIX_LEN, n), f.size, limits.max_tensor_ndim
        )
    except safetensors.UnsupportedDtype as exc:
        notes.append(
            f"{f.path}: dtype {exc.dtype} is not modelled; sealed as an opaque file "
            "(byte-identical on open, no tensor table for the loader)"
        )
        return None
    except InputError as exc:
        raise InputError("input.safetensors", f"{f.path}: {exc.detail}") from None


def _check_int8_tables(
    tree: InputTree, name: str, files: Sequence[InputFile], layouts: _Layouts
) -> None:
    """Refuse what a loader would refuse of an int8 variant component (FORMAT §15):
    a file with no valid scale table, a table its tensors do not fit, or scales
    that are not all finite. Seal's own variants always pass; a folder may hold
    hand-made or edited ones, which are better refused here than by every
    inference server that loads them. (Products past float32's range need the
    codes too: the loader refuses those.)"""
    scales: dict[str, list[str]] = {}
    where: dict[str, tuple[InputFile, int, safetensors.TensorEntry]] = {}
    for f in files:
        layout = layouts.get(f)
        assert layout is not None  # (files with a layout only)
        table = int8_scale_table(layout.metadata)
        if table is None:
            raise InputError(
                "input.invalid",
                f"{f.path}: a file of int8 variant {name!r} without a valid secpack.scales "
                "table for every tensor in its secpack.errors (FORMAT §15)",
            )
        scales.update(table)
        where.update((t.name, (f, layout.header_len, t)) for t in layout.tensors)
    problem = int8_table_problem(scales, {n: (t.dtype, t.shape) for n, (_, _, t) in where.items()})
    if problem is not None:
        raise InputError("input.invalid", f"int8 variant {name!r}: {problem} (FORMAT §15)")
    for codes, pair in present_entries(scales, where).items():
        for scale in pair:
            f, data_at, t = where[scale]
            if not _finite_f32(tree, f, data_at + t.begin, t.end - t.begin):
                raise InputError(
                    "input.invalid",
                    f"{f.path}: {codes}: int8 scales that are not all finite (FORMAT §15)",
                )


# Scale tensors are read in blocks of this many bytes: one row's or one column's
# scale per value, so usually kilobytes, but a file may make them large.
_SCALE_BLOCK = 4 << 20


def _finite_f32(tree: InputTree, f: InputFile, offset: int, length: int) -> bool:
    """Whether the float32 values at ``offset`` of file ``f`` are all finite."""
    import numpy as np

    for at in range(offset, offset + length, _SCALE_BLOCK):
        n = min(_SCALE_BLOCK, offset + length - at)
        block = tree.read_at(f.path, at, n)
        if len(block) != n:
            raise InputError("input.changed", f"{f.path} changed while it was being sealed")
        if not np.isfinite(np.frombuffer(block, "<f4")).all():
            return False
    return True


def _check_unique_tensor_names(
    component: str, tensors: list[TensorRecord], files: list[FileEntry]
) -> None:
    """The loader addresses a component's tensors by name, so names must be unique
    within it. Pipelines (unet/, vae/, text_encoder/...) reuse names across their
    parts: the error names both files and how to split them."""
    import unicodedata

    seen: dict[str, int] = {}
    for t in tensors:
        key = unicodedata.normalize("NFC", t.name)
        if key in seen:
            first, second = files[seen[key]].path, files[t.file].path
            where = f"in {first} and {second}" if first != second else f"twice in {first}"
            raise InputError(
                "input.safetensors",
                f"tensor {t.name!r} appears {where}, both in component {component!r}; "
                "put the files in components of their own, e.g. "
                f"--component {component}-{first.split('/')[0].split('.')[0]}={first}",
            )
        seen[key] = t.file
