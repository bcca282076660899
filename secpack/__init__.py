"""secpack: secure packaging for ML models.

The public surface is small and imported lazily so that ``import secpack`` (and
the CLI) start fast: cryptography, numpy and zstandard load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from secpack.errors import SecpackError

__version__ = "0.1.0"

__all__ = [
    "Package",
    "SecpackError",
    "__version__",
    "add_signature",
    "extract",
    "inspect",
    "load",
    "open_package",
    "seal",
    "verify",
]

_LAZY = {
    "seal": "secpack.api.seal",
    "verify": "secpack.api.verify",
    "extract": "secpack.api.extract",
    "inspect": "secpack.api.inspect",
    "add_signature": "secpack.api.signing",
    "open_package": "secpack.api.loader",
    "load": "secpack.api.loader",
    "Package": "secpack.api.loader",
}

if TYPE_CHECKING:
    from secpack.api.extract import extract
    from secpack.api.inspect import inspect
    from secpack.api.loader import Package, load, open_package
    from secpack.api.seal import seal
    from secpack.api.signing import add_signature
    from secpack.api.verify import verify


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'secpack' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
