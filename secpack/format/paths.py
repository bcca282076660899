"""Rules for the relative file paths a package may carry (docs/FORMAT.md, "Paths").

The same rules apply when sealing (so that secpack never produces a package it
would refuse) and when opening (so that a hostile package cannot write outside
the output directory or collide on a case-insensitive or normalising file system).
"""

from __future__ import annotations

import unicodedata

__all__ = ["MAX_PATH_ELEMENTS", "collision_key", "path_problem"]

# One path element; POSIX NAME_MAX on the file systems we target.
_MAX_ELEMENT_BYTES = 255
# Elements in one path. Model trees are a few levels deep; a path of thousands of
# one-letter directories (4096 bytes allow 2048) breaks tools that recurse once
# per level, shutil.rmtree among them, and costs a directory per level to open.
MAX_PATH_ELEMENTS = 64
# Characters that are separators, stream markers or device syntax on some platform.
_FORBIDDEN_CHARS = frozenset('\\:*?"<>|')


def path_problem(path: str, max_bytes: int) -> str | None:
    """Return why ``path`` is unsafe, or None when it is acceptable."""
    if not path:
        return "empty path"
    if len(path.encode("utf-8", errors="surrogatepass")) > max_bytes:
        return "path too long"
    if unicodedata.normalize("NFC", path) != path:
        return "path is not in Unicode NFC form"
    if path.startswith("/"):
        return "absolute path"
    for ch in path:
        if ord(ch) < 0x20 or ord(ch) == 0x7F or 0xD800 <= ord(ch) <= 0xDFFF:
            return "control character or lone surrogate in path"
        if ch in _FORBIDDEN_CHARS:
            return f"character {ch!r} is not allowed in paths"
    elements = path.split("/")
    if len(elements) > MAX_PATH_ELEMENTS:
        return f"more than {MAX_PATH_ELEMENTS} path elements"
    for element in elements:
        if element in ("", ".", ".."):
            return "empty, '.' or '..' path element"
        if len(element.encode("utf-8")) > _MAX_ELEMENT_BYTES:
            return "path element too long"
        if element.endswith((" ", ".")):
            return "path element ends with a space or a dot"
    return None


def collision_key(path: str) -> str:
    """Two paths that map to the same key would collide on some file system."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFKD", path).casefold())
