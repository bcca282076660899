# Type stub for the C helper secpack/codec/_planes.c.
from collections.abc import Sequence

def split(src: bytes | memoryview, dst: memoryview, width: int, rotate: bool, /) -> None: ...
def merge(
    planes: Sequence[bytes | memoryview], dst: memoryview, width: int, rotate: bool, /
) -> None: ...
