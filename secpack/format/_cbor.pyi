# Type stub for the C scan secpack/format/_cbor.c.
def scan(
    data: bytes, max_depth: int, max_items: int, text_keys: bool, max_map_entries: int, /
) -> bool | tuple[str, str]: ...
