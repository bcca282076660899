"""Where the benchmark's files live, and the two filesystem helpers every part uses."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

__all__ = [
    "ANCHORS_VENV",
    "CHILDREN",
    "CONVERT",
    "HERE",
    "OUT",
    "PEER_CODECS",
    "REPO",
    "SYNTH",
    "rm",
    "short",
]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out"
CHILDREN = HERE / "children.py"
SYNTH = HERE / "synth.py"
CONVERT = HERE / "convert.py"
PEER_CODECS = HERE / "peer_codecs.py"
ANCHORS_VENV = OUT / "anchors-venv"


def rm(path: Path) -> None:
    """Remove a file, a link or a whole directory, if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def short(path: Path) -> str:
    """``path`` relative to the repository, or with the venv prefix as ``$VENV``."""
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path).replace(str(Path(sys.prefix)), "$VENV")


def shown(path: str | Path) -> str:
    """A path as the report shows it: relative to the repository when inside it,
    so that no report carries a machine's own directories."""
    p = Path(path).absolute()
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return str(path)
