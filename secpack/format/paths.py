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
# Names Windows resolves to a device in every directory, with or without an
# extension ("NUL.txt" is NUL): such a file cannot be created there, and writing
# one would write to the device. Windows counts the Latin-1 superscripts 1, 2
# and 3 as digits here (Microsoft's "Naming Files, Paths, and Namespaces"), and
# Windows 8 and later reserve the console names CONIN$ and CONOUT$ alike; COM0
# and LPT0 are not devices. The same list as CPython's PureWindowsPath.is_reserved.
_DEVICE_NAMES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{port}{digit}" for port in ("COM", "LPT") for digit in "123456789\u00b9\u00b2\u00b3"}
)


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
        # C0, DEL and C1 (U+0080-U+009F): C1 controls are terminal codes too
        # (U+009B is CSI, U+0085 a line break), never part of a real file name.
        if ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F:
            return f"control character U+{ord(ch):04X} in path"
        if 0xD800 <= ord(ch) <= 0xDFFF:
            return "lone surrogate in path (the name is not valid UTF-8)"
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
        if _is_device_name(element):
            return f"path element {element!r} is a reserved device name on Windows"
    return None


def _is_device_name(element: str) -> bool:
    """Whether Windows takes the path element for a device (docs/FORMAT.md §10):
    its part before the first dot, less trailing spaces (which Windows drops),
    is a reserved name, ignoring letter case: "con", "Nul.txt", "aux .json", "COM1.tar.gz"."""
    return element.partition(".")[0].rstrip(" ").upper() in _DEVICE_NAMES


def collision_key(path: str) -> str:
    """Two paths that map to the same key would collide on some file system."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFKD", path).casefold())
