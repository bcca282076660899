"""The codecs of plain bytes, raw and zstd, decoded without numpy.

Split from codec.segment, whose float layouts need numpy (60 ms to import here):
the tables and files of a package sealed without encryption are zstd, and
``secpack verify`` checks them without decoding a single float.
"""

from __future__ import annotations

from secpack.codec import zstd
from secpack.errors import CodecError
from secpack.format.manifest import Codec

__all__ = ["decode_plain"]


def decode_plain(
    codec: Codec, payload: bytes | memoryview, out: memoryview, max_window: int
) -> bool:
    """Decode a raw or zstd ``payload`` into ``out`` (the segment's exact plaintext
    length) and return True; False, with nothing done, for any other codec."""
    if codec.id not in ("raw", "zstd"):
        return False
    if len(payload) != codec.payload_len(len(out)):
        raise CodecError("codec.invalid", "payload length disagrees with the codec record")
    if codec.id == "raw":
        out[:] = payload
    else:
        out[:] = zstd.decompress(payload, len(out), max_window)
    return True
