"""Shared helpers for the end-to-end tests: building model directories (with
hand-written safetensors files), running the ``secpack`` CLI in a subprocess,
and comparing directory trees byte for byte.

Nothing here imports secpack at module level, so the helpers can also describe
what the CLI does from the outside.
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

# The console script installed next to the interpreter running the tests.
SECPACK = str(Path(sys.executable).with_name("secpack"))

ERROR_PREFIX = re.compile(r"^error\[([a-z0-9.\-]+)\]: ")

# Safetensors dtype name -> numpy dtype used to produce the raw little-endian bytes.
# BF16 has no numpy dtype without ml_dtypes; see bf16_bytes().
ITEMSIZE = {"F32": 4, "BF16": 2, "F16": 2, "I64": 8, "BOOL": 1}
_NP_DTYPES = {
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "BOOL": "?",
}


def bf16_bytes(values: np.ndarray) -> bytes:
    """bfloat16 bytes of ``values``: the top 16 bits of each float32 (truncation)."""
    bits = np.ascontiguousarray(values, dtype="<f4").view("<u4")
    return (bits >> 16).astype("<u2").tobytes()


def tensor_bytes(dtype: str, values: np.ndarray) -> bytes:
    if dtype == "BF16":
        return bf16_bytes(values)
    return np.ascontiguousarray(values, dtype=_NP_DTYPES[dtype]).tobytes()


@dataclass(frozen=True)
class Tensor:
    dtype: str
    shape: tuple[int, ...]
    data: bytes


def write_safetensors(
    path: Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write a safetensors file by hand: an 8-byte little-endian header length, a JSON
    header padded with spaces to a multiple of 8, then the tensors back to back in
    the order given."""
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, t in tensors.items():
        header[name] = {
            "dtype": t.dtype,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(t.data)],
        }
        offset += len(t.data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as fh:
        fh.write(len(text).to_bytes(8, "little"))
        fh.write(text)
        for t in tensors.values():
            fh.write(t.data)


def model_tensors(scale: int, seed: int = 0) -> dict[str, Tensor]:
    """One tensor of each interesting kind; ``scale`` sets the size of the big ones."""
    rng = np.random.default_rng(seed)

    def make(dtype: str, shape: tuple[int, ...], values: np.ndarray) -> Tensor:
        data = tensor_bytes(dtype, values)
        assert len(data) == int(np.prod(shape, dtype=np.int64)) * ITEMSIZE[dtype]
        return Tensor(dtype, shape, data)

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype("<f4")

    return {
        "encoder.weight.f32": make("F32", (scale, 16), normal(scale, 16)),
        "encoder.weight.bf16": make("BF16", (scale, 8), normal(scale, 8)),
        "encoder.weight.f16": make("F16", (scale, 4), normal(scale, 4).astype("<f2")),
        "position_ids.i64": make("I64", (1, 12), np.arange(12, dtype="<i8").reshape(1, 12)),
        "mask.bool": make("BOOL", (3, 5), rng.random((3, 5)) > 0.5),
        "empty.f32": make("F32", (0, 16), np.zeros((0, 16), dtype="<f4")),
        "empty.bool": make("BOOL", (4, 0), np.zeros((4, 0), dtype="?")),
        "scalar.f32": make("F32", (), np.array(1.5, dtype="<f4")),
        "scalar.i64": make("I64", (), np.array(-7, dtype="<i8")),
    }


CONFIG = {
    "architectures": ["BertModel"],
    "hidden_size": 16,
    "num_attention_heads": 2,
    "torch_dtype": "float32",
}
TOKENIZER = {
    "version": "1.0",
    "model": {"type": "WordPiece", "vocab": {"[PAD]": 0, "[UNK]": 1, "hello": 2}},
}
VOCAB = "[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\nworld\n"


def build_model(root: Path, scale: int = 64, seed: int = 0) -> Path:
    """A model directory with every kind of file secpack sorts into components:

    - ``model.safetensors`` with F32, BF16, F16, I64 and BOOL tensors, including
      zero-size and 0-d ones (weights);
    - ``config.json`` (config); ``tokenizer.json`` and ``vocab.txt`` (tokenizer);
    - an empty file and a nested ``sub/deep/x.bin`` (files).
    """
    root.mkdir(parents=True)
    write_safetensors(
        root / "model.safetensors", model_tensors(scale, seed), metadata={"format": "pt"}
    )
    (root / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    (root / "tokenizer.json").write_text(json.dumps(TOKENIZER) + "\n")
    (root / "vocab.txt").write_text(VOCAB)
    (root / "empty.txt").write_bytes(b"")
    (root / "sub" / "deep").mkdir(parents=True)
    rng = np.random.default_rng(seed + 1)
    (root / "sub" / "deep" / "x.bin").write_bytes(rng.bytes(97 * scale // 8 + 3))
    return root


# Which top-level files of build_model() land in which default component.
COMPONENT_FILES = {
    "config": {"config.json"},
    "tokenizer": {"tokenizer.json", "vocab.txt"},
    "weights": {"model.safetensors"},
    "files": {"empty.txt", "sub/deep/x.bin"},
}


EXAMPLE_KEYS = Path(__file__).resolve().parents[1] / "keys-example"


def seal_example(root: Path, pkg: Path, *, encrypt: bool = True, **kw: Any) -> int:
    """Seal ``root`` with keys-example's Ed25519 key (and X25519 recipient unless
    ``encrypt`` is false); return the package's size."""
    from secpack.api.keyfiles import load_recipient, load_signing_key
    from secpack.api.seal import seal

    seal(
        str(root),
        str(pkg),
        sign_keys=[load_signing_key(str(EXAMPLE_KEYS / "signing-ed25519.key"))],
        recipients=[(None, load_recipient(str(EXAMPLE_KEYS / "recipient-x25519.key.pub")))]
        if encrypt
        else [],
        encrypt=encrypt,
        **kw,
    )
    return pkg.stat().st_size


def tree_entries(root: Path) -> tuple[set[str], set[str]]:
    """(files, directories) under ``root`` as relative POSIX paths; symlinks fail."""
    files: set[str] = set()
    dirs: set[str] = set()
    for here, dirnames, filenames in os.walk(root):
        rel = Path(here).relative_to(root)
        for d in dirnames:
            assert not (Path(here) / d).is_symlink(), f"symlink {d} in {here}"
            dirs.add((rel / d).as_posix())
        for f in filenames:
            p = Path(here) / f
            assert p.is_file() and not p.is_symlink(), f"not a regular file: {p}"
            files.add((rel / f).as_posix())
    return files, dirs


def _assert_dircmp_clean(cmp: filecmp.dircmp[str]) -> None:
    assert not cmp.left_only and not cmp.right_only, (cmp.left_only, cmp.right_only)
    assert not cmp.funny_files and not cmp.common_funny, (cmp.funny_files, cmp.common_funny)
    # dircmp compares with shallow=True; a deep compare of every common file follows.
    _, mismatch, errors = filecmp.cmpfiles(cmp.left, cmp.right, cmp.common_files, shallow=False)
    assert not mismatch and not errors, (mismatch, errors)
    for sub in cmp.subdirs.values():
        _assert_dircmp_clean(sub)


def assert_same_tree(expected: Path, actual: Path, only: set[str] | None = None) -> None:
    """``actual`` holds exactly the files of ``expected`` (or the subset ``only``),
    each byte-identical."""
    want_files, want_dirs = tree_entries(expected)
    got_files, got_dirs = tree_entries(actual)
    if only is None:
        assert got_files == want_files
        assert got_dirs == want_dirs
        _assert_dircmp_clean(filecmp.dircmp(expected, actual))
    else:
        assert got_files == only
    for rel in got_files:
        a, b = expected / rel, actual / rel
        assert a.read_bytes() == b.read_bytes(), rel
        assert filecmp.cmp(a, b, shallow=False), rel


def file_sizes(root: Path) -> int:
    files, _ = tree_entries(root)
    return sum((root / f).stat().st_size for f in files)


@dataclass(frozen=True)
class CliResult:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def error_code(self) -> str | None:
        """The code of an ``error[<code>]: ...`` line at the start of stderr."""
        m = ERROR_PREFIX.match(self.stderr)
        return m.group(1) if m else None

    def json(self) -> dict[str, Any]:
        lines = self.stdout.strip().splitlines()
        assert len(lines) == 1, f"expected one JSON line on stdout, got {self.stdout!r}"
        doc = json.loads(lines[0])
        assert isinstance(doc, dict)
        return doc

    def __str__(self) -> str:
        return (
            f"secpack {' '.join(self.args)} -> {self.returncode}\n"
            f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}"
        )


_SCRUBBED = ("SECPACK_POLICY", "SECPACK_DEBUG", "SOURCE_DATE_EPOCH")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment without anything that changes secpack's trust or output."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env["CI"] = "1"  # no progress bars
    env.update(extra or {})
    return env


def run_cli(
    *args: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    subprocess_: bool = False,
    timeout: float = 120,
) -> CliResult:
    """Run ``secpack ARGS`` with a clean environment.

    By default the Typer app runs in this process (click's test runner), which
    exercises the same argument parsing, error rendering and exit codes in a
    fraction of a process start-up. ``subprocess_=True`` runs the installed
    console script instead, for what only a real process shows.
    """
    argv = tuple(os.fspath(a) for a in args)
    if subprocess_:
        proc = subprocess.run(
            [SECPACK, *argv],
            env=clean_env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return CliResult(argv, proc.returncode, proc.stdout, proc.stderr)

    from typer.testing import CliRunner

    from secpack.cli import app

    overrides: dict[str, str | None] = dict.fromkeys(_SCRUBBED)
    overrides["CI"] = "1"
    overrides.update(env or {})
    res = CliRunner().invoke(app, list(argv), env=overrides, catch_exceptions=True)
    stderr = res.stderr
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        # An exception that escaped the CLI: what a user would see as a traceback.
        import traceback

        stderr += "Traceback (escaped the CLI):\n" + "".join(
            traceback.format_exception(res.exception)
        )
    return CliResult(argv, res.exit_code, res.stdout, stderr)


def ok(*args: str | os.PathLike[str], **kwargs: Any) -> CliResult:
    """Run the CLI and require success."""
    res = run_cli(*args, **kwargs)
    assert res.returncode == 0, str(res)
    assert "Traceback" not in res.stderr, str(res)
    return res


def fails(code: str, *args: str | os.PathLike[str], **kwargs: Any) -> CliResult:
    """Run the CLI and require a clean failure with error code ``code``."""
    res = run_cli(*args, **kwargs)
    assert res.returncode != 0, str(res)
    assert "Traceback" not in res.stderr, str(res)
    assert res.stderr.startswith("error["), str(res)
    assert res.error_code == code, str(res)
    if "--json" in res.args:
        doc = res.json()
        assert doc["ok"] is False, str(res)
        assert doc["error"]["code"] == code, str(res)
    return res


def leftovers(parent: Path, name: str) -> list[str]:
    """Entries in ``parent`` that are ``name`` or one of its temporaries."""
    return sorted(
        e for e in os.listdir(parent) if e == name or e.startswith(f".{name}.secpack-tmp-")
    )


# --- keys ----------------------------------------------------------------------------------

PASSPHRASE_ENV = "SECPACK_TEST_PASSPHRASE"
PASSPHRASE = "correct horse battery staple"


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path


class KeyRing:
    """Key pairs made on first use with the real CLI, then reused for the session."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: dict[str, KeyPair] = {}

    def _make(self, name: str, *args: str, env: dict[str, str] | None = None) -> KeyPair:
        pair = self._made.get(name)
        if pair is None:
            path = self.root / f"{name}.key"
            ok("keygen", *args, "-o", path, "--quiet", env=env)
            pair = KeyPair(path, Path(f"{path}.pub"))
            assert pair.private.stat().st_mode & 0o777 == 0o600
            assert pair.public.is_file()
            self._made[name] = pair
        return pair

    def signing(self, name: str = "release", alg: str = "ed25519") -> KeyPair:
        return self._make(name, "signing", "--alg", alg)

    def recipient(self, name: str = "server") -> KeyPair:
        return self._make(name, "recipient")

    def protected(self, kind: str, name: str) -> KeyPair:
        """A ``kind`` ("signing" or "recipient") key whose PEM is encrypted with
        PASSPHRASE, read from the environment variable PASSPHRASE_ENV."""
        env = {PASSPHRASE_ENV: PASSPHRASE}
        return self._make(name, kind, "--passphrase-env", PASSPHRASE_ENV, env=env)


class Meddler:
    """A seal progress sink that does ``act`` once, at the first segment written:
    a way to change the input while the seal is reading it."""

    def __init__(self, act: object) -> None:
        self.act = act
        self.done = False

    def start(self, total: int, what: str) -> None:
        pass

    def advance(self, n: int) -> None:
        if not self.done:
            self.done = True
            self.act()  # type: ignore[operator]


T = TypeVar("T")


def just_short(run: Callable[[int], T | None], enough: int, short: int, within: int = 8) -> T:
    """What ``run(limit)`` gives just below the smallest limit (MiB of address space,
    say) it needs: ``run`` returns None when the limit was enough, else what the
    failure said. ``enough`` must be enough; the search halves the gap between it
    and ``short`` down to ``within``, and returns the failure nearest to enough
    (with ``within=1``, the one 1 below the smallest enough)."""
    assert run(enough) is None, f"{enough} is not enough"
    last: T | None = None
    while enough - short > within:
        mid = (enough + short) // 2
        said = run(mid)
        if said is None:
            enough = mid
        else:
            short, last = mid, said
    assert last is not None, f"nothing failed above {short}"
    return last
