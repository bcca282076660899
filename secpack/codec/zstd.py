"""Bounded zstd: one frame, exact size, capped window, nothing else in the input.

python-zstandard sizes its output from the frame header and ignores
``max_output_size`` when the header carries a content size, so the header is
checked against the size the signed manifest promises *before* decompressing:
a 100 KB frame that claims 4 GB is refused without allocating anything.
"""

from __future__ import annotations

import threading

import zstandard

from secpack.errors import CodecError, LimitError

__all__ = ["RunTrial", "compress", "compress_plane", "compress_wide", "decompress", "trial_size"]

# Little-endian zstd frame magic. Skippable frames (0x184D2A5?) and legacy formats
# are refused by requiring exactly this value at the start of the payload.
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_local = threading.local()
# A file run's window: all of its segment, at most the readers' cap (FORMAT §11).
_WIDE_WINDOW_LOG = 24


# From this level up, zstd's optimal parser reaches over its whole window by
# itself: a file run needs only a window over all of its segment, not
# long-distance matching.
_WIDE_LEVEL = 19


def _cctx(level: int) -> zstandard.ZstdCompressor:
    # Contexts are not thread-safe, and building one costs more than a small segment.
    cache: dict[int, zstandard.ZstdCompressor] = _local.__dict__.setdefault("cctx", {})
    ctx = cache.get(level)
    if ctx is None:
        ctx = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False)
        cache[level] = ctx
    return ctx


def _plane_cctx() -> zstandard.ZstdCompressor:
    ctx: zstandard.ZstdCompressor | None = _local.__dict__.get("plane")
    if ctx is None:
        # Byte planes of float weights are high-entropy symbols with few real repeats:
        # what pays is the per-block Huffman stage. A tiny hash table and a 7-byte
        # minimum match keep zstd from emitting costly short matches; measured on
        # all-MiniLM-L6-v2 fp32 planes: ratio 0.8226 at ~1 GB/s, against 0.8301 at
        # ~0.6 GB/s for plain level 1.
        params = zstandard.ZstdCompressionParameters(
            compression_level=1,
            strategy=1,
            min_match=7,
            search_log=1,
            hash_log=6,
            write_content_size=1,
            write_checksum=0,
        )
        ctx = zstandard.ZstdCompressor(compression_params=params)
        _local.__dict__["plane"] = ctx
    return ctx


def _trial_params(level: int = 1) -> zstandard.ZstdCompressionParameters:
    # Whether bytes repeat anywhere in a segment (or a run): level 1 finds matches
    # only within its small window and hash table; long-distance matching over a
    # 16 MiB window (the largest segment) finds a block that recurs a megabyte
    # later, at about the same speed.
    return zstandard.ZstdCompressionParameters.from_level(
        level, window_log=_WIDE_WINDOW_LOG, enable_ldm=1, write_content_size=1, write_checksum=0
    )


def _trial_cctx() -> zstandard.ZstdCompressor:
    ctx: zstandard.ZstdCompressor | None = _local.__dict__.get("trial")
    if ctx is None:
        ctx = zstandard.ZstdCompressor(compression_params=_trial_params())
        _local.__dict__["trial"] = ctx
    return ctx


def trial_size(data: bytes | memoryview) -> int:
    """Bytes zstd's fastest level with long-distance matching takes for ``data``: a
    cheap sign of whether slower levels could beat an entropy coder on it. The
    frame is only measured, never stored (its window may pass the readers' cap)."""
    try:
        return len(_trial_cctx().compress(data))
    except zstandard.ZstdError as exc:
        raise _compress_failed(exc) from None


class RunTrial:
    """zstd at ``level`` (its fastest by default) with long-distance matching and
    a 16 MiB window, fed file by file as one stream: what each file costs after
    the ones before it. Its own compressor: a stream holds its compressor for as
    long as it runs."""

    def __init__(self, level: int = 1) -> None:
        try:
            self._cctx = zstandard.ZstdCompressor(compression_params=_trial_params(level))
        except (zstandard.ZstdError, MemoryError) as exc:
            raise _out_of_memory_error(exc) from None
        self.restart()

    def restart(self) -> None:
        """Forget what was fed: the next file starts a new stream."""
        try:
            self._stream = self._cctx.compressobj()
        except (zstandard.ZstdError, MemoryError) as exc:
            raise _out_of_memory_error(exc) from None

    def add(self, data: bytes | memoryview) -> int:
        """Bytes of coded stream that ``data`` adds after what came before it."""
        try:
            out = self._stream.compress(data)
            return len(out) + len(self._stream.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
        except MemoryError as exc:
            raise _out_of_memory_error(exc) from None
        except zstandard.ZstdError as exc:
            raise _compress_failed(exc) from None


def compress_wide(data: bytes | memoryview, level: int) -> bytes:
    """``compress`` with a window over all of ``data`` (up to 16 MiB), and below
    level 19 long-distance matching: for a file run's segment, whose files repeat
    each other's content megabytes apart, beyond the levels' own windows (2 MiB
    at level 3, 8 MiB at 19). The frame's window is the content size, within the
    readers' cap."""
    deep = level >= _WIDE_LEVEL
    if deep:
        if len(data) <= 1 << zstandard.ZstdCompressionParameters.from_level(level).window_log:
            return compress(data, level)  # the level's own window covers it
        # The thread's context of this level goes first: at 16 MiB each takes
        # about 55 MiB, and holding both took a max seal of llama-cpp-python's
        # vocabularies from 331 to 558 MiB. The next segment builds it again.
        _local.__dict__.get("cctx", {}).pop(level, None)
    # Built for the run (one segment among many), not kept per thread. Below
    # level 19, long-distance matching finds what the level's small tables would
    # not; from 19 the optimal parser reaches over the window by itself.
    params = zstandard.ZstdCompressionParameters.from_level(
        level,
        window_log=_WIDE_WINDOW_LOG,
        enable_ldm=0 if deep else 1,
        write_content_size=1,
        write_checksum=0,
    )
    try:
        return zstandard.ZstdCompressor(compression_params=params).compress(data)
    except zstandard.ZstdError as exc:
        raise _compress_failed(exc) from None


def compress_plane(data: bytes | memoryview) -> bytes:
    """Compress one byte plane of grouped float elements (see codec.segment)."""
    try:
        return _plane_cctx().compress(data)
    except zstandard.ZstdError as exc:
        raise _compress_failed(exc) from None


# The largest window libzstd decodes (ZSTD_WINDOWLOG_MAX on 64-bit builds). A policy
# may set max_zstd_window higher; passed on as it is, libzstd refused every frame,
# those of valid packages too ("does not decode cleanly").
_WINDOW_MAX = 1 << 31


def _dctx(max_window: int) -> zstandard.ZstdDecompressor:
    max_window = min(max_window, _WINDOW_MAX)
    cache: dict[int, zstandard.ZstdDecompressor] = _local.__dict__.setdefault("dctx", {})
    ctx = cache.get(max_window)
    if ctx is None:
        ctx = zstandard.ZstdDecompressor(max_window_size=max_window)
        cache[max_window] = ctx
    return ctx


def context_bytes(level: int) -> int:
    """zstd's estimate of the compression context one thread keeps for ``level``
    (_cctx builds it with no size hint, so for any segment size): 81 MiB at 19,
    about 1 MiB at 1 and 3. What the seal's workers' count weighs."""
    return int(
        zstandard.ZstdCompressionParameters.from_level(level).estimated_compression_context_size()
    )


def compress(data: bytes | memoryview, level: int) -> bytes:
    try:
        return _cctx(level).compress(data)
    except zstandard.ZstdError as exc:
        raise _compress_failed(exc) from None


def _out_of_memory(exc: zstandard.ZstdError) -> bool:
    # zstd says "Allocation error : not enough memory" when malloc fails (ulimit -v,
    # a container's memory limit): the machine's limit, not the data's fault.
    # Only that one: "Frame requires too much memory" is a frame's own window,
    # which decompress() refuses before it gets here.
    text = str(exc).lower()
    return "allocation error" in text or "not enough memory" in text


def _out_of_memory_error(exc: BaseException) -> LimitError:
    return LimitError("limit.exceeded", f"out of memory for zstd: {exc}")


def _compress_failed(exc: zstandard.ZstdError) -> Exception:
    """``limit.exceeded`` where zstd ran out of memory, else ``exc`` itself."""
    if _out_of_memory(exc):
        return _out_of_memory_error(exc)
    return exc


def decompress(payload: bytes | memoryview, expected: int, max_window: int) -> bytes:
    """Decompress one frame that must produce exactly ``expected`` bytes."""
    if bytes(payload[:4]) != _ZSTD_MAGIC:
        raise CodecError("codec.invalid", "payload is not a single zstd frame")
    try:
        params = zstandard.get_frame_parameters(payload)
    except zstandard.ZstdError:
        raise CodecError("codec.invalid", "unreadable zstd frame header") from None
    if params.content_size != expected:
        raise CodecError("codec.invalid", "zstd frame size disagrees with the manifest")
    if params.window_size > max_window:
        raise CodecError("codec.invalid", f"zstd window {params.window_size} above the cap")
    if params.dict_id:
        raise CodecError("codec.invalid", "zstd frame needs a dictionary")
    try:
        out = _dctx(max_window).decompress(
            payload, max_output_size=expected, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        failed = _compress_failed(exc)
        if failed is not exc:  # a signed frame is not corrupt for want of memory
            raise failed from None
        raise CodecError("codec.invalid", "zstd frame does not decode cleanly") from None
    if len(out) != expected:
        raise CodecError("codec.invalid", "zstd frame produced the wrong length")
    return out
