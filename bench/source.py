"""The secpack source a run measures.

secpack is installed editable, so every child imports whatever secpack/ holds at
that moment, and other people edit it while a run takes minutes. A run therefore
measures a copy of secpack/ taken at its start (the working tree, or HEAD with
``--at-head``), put first on the children's PYTHONPATH. The report names that
copy: its commit, whether it had uncommitted changes, and a hash of its files.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from paths import REPO

__all__ = ["SourceState", "freeze_source", "source_state"]


@dataclass(frozen=True)
class SourceState:
    commit: str  # short HEAD, "unknown" outside git
    dirty: bool  # the files differ from HEAD's secpack/
    tree: str  # sha256 over every file of the package (path and bytes)

    def describe(self) -> str:
        if not self.dirty:
            return f"commit {self.commit}"
        return (
            f"commit {self.commit} + uncommitted changes under secpack/ "
            f"(tree sha256 {self.tree[:12]})"
        )


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def _tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()


def source_state(root: Path | None = None) -> SourceState:
    """The state of secpack/ in the repository (or of a copy of it at ``root``)."""
    commit, dirty = "unknown", False
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--", "secpack"))
    except (OSError, subprocess.CalledProcessError):
        pass
    return SourceState(commit, dirty, _tree_hash(root or REPO / "secpack"))


# The C helpers, as pyproject.toml's [[tool.setuptools.ext-modules]] build them.
_EXTENSIONS = (
    ("secpack.codec._planes", "secpack/codec/_planes.c", "-O3"),
    ("secpack.format._cbor", "secpack/format/_cbor.c", "-O2"),
)


def _build_native(dest: Path) -> None:
    """Compile the copy's C helpers in place, as an install would: without them
    the copy would measure the numpy codec and the Python CBOR scan and encoder."""
    modules = ", ".join(
        f"Extension({name!r}, [{source!r}], extra_compile_args=[{flag!r}])"
        for name, source, flag in _EXTENSIONS
    )
    script = (
        "from setuptools import Extension, setup\n"
        f"setup(name='secpack-bench-copy', ext_modules=[{modules}],"
        " script_args=['-q', 'build_ext', '--inplace'])\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=dest, check=True, capture_output=True)
    shutil.rmtree(dest / "build", ignore_errors=True)
    probe = (
        "import secpack.codec.planes as p, secpack.format.cbor as c, sys; "
        "sys.exit(0 if p.NATIVE and c.NATIVE else 1)"
    )
    if subprocess.run([sys.executable, "-c", probe], cwd=dest, check=False).returncode:
        raise RuntimeError(f"the C helpers did not build in {dest}")


def freeze_source(dest: Path, at_head: bool) -> SourceState:
    """Copy secpack/ to ``dest``/secpack, put ``dest`` first on PYTHONPATH for every
    child from now on, and return the state of the copy."""
    target = dest / "secpack"
    shutil.rmtree(target, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    if at_head:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", "HEAD", "secpack"],
            capture_output=True,
            check=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(dest, filter="data")
    else:
        shutil.copytree(REPO / "secpack", target, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.rmtree(target / "codec" / "build", ignore_errors=True)
    for name, _, _ in _EXTENSIONS:
        package, _, module = name.removeprefix("secpack.").rpartition(".")
        for built in (target / package).glob(f"{module}*.so"):
            built.unlink()  # a build of the working tree's C source, maybe not this one's
    state = source_state(target)
    if at_head:
        state = SourceState(state.commit, False, state.tree)
    _build_native(dest)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(dest) + (os.pathsep + old if old else "")
    return state
